"""API keys: ``clk_<prefix>_<secret>``; only the SHA-256 of the whole key is stored, compared in constant time.

The prefix (12 hex digits, not secret) finds the row; the secret part (32 random bytes) is never stored, so
a plain SHA-256 is enough (nothing to brute-force: there is no low-entropy password behind it). Every
verification of a well-formed key makes exactly one ``hmac.compare_digest`` of the presented key's hash,
against the row's hash for a known prefix and against a dummy for an unknown or revoked one, so the time
taken does not tell how much of a guessed key was right.
"""

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

_NO_HASH = "0" * 64     # compared against when no row matches: the same work as for a known prefix


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, engine: Engine, role: Role, name: str | None = None) -> str:
    prefix = secrets.token_hex(6)
    key = f"clk_{prefix}_{secrets.token_urlsafe(32)}"
    with session_scope(engine) as s:
        s.add(ApiKey(prefix=prefix, key_hash=_hash(key), role=role, name=name))
    return key


# rows looked up recently, by prefix, for a few seconds: the loyalty core posts events one request at a time,
# and a database lookup per request was a third of its cost. The cache holds the stored hash (never a key)
# and is compared like the row itself. A revoked key stops working within VERIFIED_TTL_S.
VERIFIED_TTL_S = 5.0
_verified: dict[tuple[str, str], tuple[str, Role | None, float]] = {}


def _stored(engine: Engine, prefix: str) -> tuple[str, Role | None]:
    """The stored hash and role of the key with this prefix; a dummy hash and no role when there is none."""
    slot = (str(engine.url), prefix)
    cached = _verified.get(slot)
    if cached is not None and cached[2] > time.monotonic():
        return cached[0], cached[1]
    with Session(engine) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    found = (_NO_HASH, None) if row is None or row.revoked_at is not None else (row.key_hash, Role(row.role))
    if row is not None:                      # unknown prefixes are not cached: guessing cannot fill memory
        if len(_verified) > 10_000:
            _verified.clear()
        _verified[slot] = (*found, time.monotonic() + VERIFIED_TTL_S)
    return found


def role_for(*, engine: Engine, key: str) -> Role | None:
    """The key's role, or None for a missing, malformed, unknown or revoked key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "clk" or not 0 < len(parts[1]) <= 16:
        return None
    stored, role = _stored(engine, parts[1])
    if not hmac.compare_digest(_hash(key), stored) or role is None:
        return None
    return role
