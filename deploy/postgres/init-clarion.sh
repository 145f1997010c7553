#!/bin/sh
# First start of the PostgreSQL container only (docker-entrypoint-initdb.d): a role and a database for
# Clarion's own data, apart from Temporal's (`temporal` and `temporal_visibility`, made by Temporal's setup).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v pw="$DATABASE_PASSWORD" <<'SQL'
CREATE ROLE clarion LOGIN PASSWORD :'pw';
CREATE DATABASE clarion OWNER clarion;
SQL
