"""API keys are stored as a hash only, and every verification compares hashes in constant time."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from app import keys
from app.keys import create_key, role_for
from storage.db import session_scope
from storage.tables import ApiKey, Role


@pytest.fixture
def compares(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every hmac.compare_digest that app.keys makes (the real one still answers); the cache emptied."""
    seen: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    monkeypatch.setattr(keys, "_verified", {})
    return seen


def test_the_stored_row_holds_no_part_of_the_secret_only_its_hash(engine: Engine) -> None:
    key = create_key(engine=engine, role=Role.core, name="till 7")
    _, prefix, secret = key.split("_", 2)
    with engine.connect() as c:
        row = c.execute(text("SELECT * FROM api_key")).mappings().one()
    stored = " ".join(str(v) for v in row.values())
    assert row["prefix"] == prefix and row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    # no 8 characters of the secret in a row anywhere (the prefix is an identifier, printed in lists)
    assert not [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8] in stored]
    assert key not in stored and len(secret) >= 43       # 32 random bytes, URL-safe base64


def test_a_right_key_is_verified_with_compare_digest_also_when_cached(engine: Engine, compares) -> None:
    key = create_key(engine=engine, role=Role.marketer)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert role_for(engine=engine, key=key) is Role.marketer            # from the database
    assert role_for(engine=engine, key=key) is Role.marketer            # from the cache
    assert compares == [(digest, digest), (digest, digest)]


def test_a_wrong_secret_an_unknown_prefix_and_a_revoked_key_are_each_one_compare_digest(
        engine: Engine, compares) -> None:
    key = create_key(engine=engine, role=Role.core)
    prefix = key.split("_")[1]
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown_prefix = "clk_" + "f" * 12 + key[len("clk_") + 12:]
    assert role_for(engine=engine, key=wrong_secret) is None
    assert role_for(engine=engine, key=wrong_secret) is None            # the row is cached now: the same
    assert role_for(engine=engine, key=unknown_prefix) is None
    assert len(compares) == 3 and all(len(a) == len(b) == 64 and a != b for a, b in compares)

    with session_scope(engine) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one()
        row.revoked_at = datetime.now(UTC)
    keys._verified.clear()
    compares.clear()
    assert role_for(engine=engine, key=key) is None
    assert len(compares) == 1 and compares[0][1] == "0" * 64           # against the dummy, not the row's hash


@pytest.mark.parametrize("malformed", ["", "clk", "clk_", "Bearer clk_a_b", "clk__secret",
                                       "clk_" + "a" * 17 + "_secret", "key_abcdef123456_secret"])
def test_a_malformed_key_is_refused_without_a_lookup(engine: Engine, compares, malformed: str) -> None:
    assert role_for(engine=engine, key=malformed) is None
    assert compares == []        # its shape is public: nothing secret to compare
