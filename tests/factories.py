"""Small factories for tests: a program with members and consents, a campaign row."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from app.campaigns import spec_hash, workflow_id
from campaigns.spec import parse_spec
from members.profile import ConsentGrant, MemberIn
from members.service import ensure_program, upsert_members
from storage.db import session_scope
from storage.tables import Campaign


def seed_members(engine: Engine, n: int, *, program: str = "shop", consent_every: int = 1,
                 locales: tuple[str, ...] = ("en", "ru"), start: int = 1) -> int:
    """n members m{i}@test.example; member i has email/promotions consent when i % consent_every == 0."""
    prog = ensure_program(engine=engine, key=program, name="Shop & Co", default_locale="en")
    items = []
    for i in range(start, start + n):
        consents = [ConsentGrant(channel="email", topic="promotions")] if i % consent_every == 0 else []
        items.append((None, f"M{i:06d}", MemberIn(
            first_name=f"Name{i}", locale=locales[i % len(locales)], email=f"m{i}@test.example",
            attributes={"tier": "gold" if i % 10 == 0 else "basic"}, consents=consents)))
    upsert_members(engine=engine, program_id=prog.id or 0, items=items)
    return prog.id or 0


def campaign_spec(**over: Any) -> dict[str, Any]:
    spec = {"key": "spring", "name": "Spring sale", "program": "shop", "topic": "promotions",
            "channels": ["email"], "audience": {"all": True}, "template": "double_points"}
    spec.update(over)
    return spec


def make_campaign(engine: Engine, program_id: int, **over: Any) -> int:
    spec = parse_spec(campaign_spec(**over))
    with session_scope(engine) as s:
        row = Campaign(program_id=program_id, key=spec.key, name=spec.name, topic=spec.topic,
                       spec=spec.model_dump(mode="json"), spec_hash=spec_hash(spec),
                       status="scheduled", workflow_id=workflow_id(spec.program, spec.key))
        s.add(row)
        s.flush()
        return row.id or 0
