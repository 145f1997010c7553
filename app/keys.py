"""API keys: ``clk_<prefix>_<secret>``; only the SHA-256 of the whole key is stored, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.db import session_scope
from storage.tables import ApiKey, Role


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, engine: Engine, role: Role, name: str | None = None) -> str:
    prefix = secrets.token_hex(6)
    key = f"clk_{prefix}_{secrets.token_urlsafe(32)}"
    with session_scope(engine) as s:
        s.add(ApiKey(prefix=prefix, key_hash=_hash(key), role=role, name=name))
    return key


# verified keys, by hash, for a few seconds: the loyalty core posts events one request at a time, and a
# database lookup per request was a third of its cost. A revoked key stops working within VERIFIED_TTL_S.
VERIFIED_TTL_S = 5.0
_verified: dict[tuple[str, str], tuple[Role, float]] = {}


def role_for(*, engine: Engine, key: str) -> Role | None:
    """The key's role, or None for a missing, malformed, unknown or revoked key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "clk":
        return None
    digest = _hash(key)
    cached = _verified.get((str(engine.url), digest))
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    with Session(engine) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or row.revoked_at is not None:
        hmac.compare_digest(_hash(key), "0" * 64)  # same work either way
        return None
    if not hmac.compare_digest(digest, row.key_hash):
        return None
    if len(_verified) > 10_000:
        _verified.clear()
    _verified[(str(engine.url), digest)] = (Role(row.role), time.monotonic() + VERIFIED_TTL_S)
    return Role(row.role)
