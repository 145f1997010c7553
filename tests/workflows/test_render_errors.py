"""A template that fails at run time for some members (arithmetic on an attribute that is text for them)
fails those members' messages, named ``render_error``; the rest of the campaign is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from storage.db import session_scope
from storage.tables import Campaign
from templates.store import TemplateStore
from tests.factories import make_campaign
from tests.workflows.conftest import (
    bulk_members,
    by_member,
    campaign_row,
    deliveries,
    email,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def campaign_with_text(engine: Engine, program: int, text: str) -> int:
    """A campaign of double_points in a new version whose English email text is ``text``."""
    store = TemplateStore(engine=engine)
    v = store.add("double_points", {**store.get("double_points").files, "email.en.txt": text})
    cid = make_campaign(engine, program)
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(template_versions={"double_points": v.version}))
    return cid


async def test_a_member_whose_data_breaks_the_template_fails_alone(workers, engine: Engine, smtp_server: Any) -> None:
    program, ids = bulk_members(engine, 6, attributes=lambda i: {"points": "lots" if i == 3 else 100 * i,
                                                                 "visits": 0 if i == 5 else i})
    cid = campaign_with_text(engine, program,
                             "You will have {{ member.points - 10 }} points, {{ 100 // member.visits }} per visit\n")

    async with workers(engine=engine) as rig:   # before: the page failed every attempt, the campaign with it
        await asyncio.wait_for(rig.finish(await rig.start(cid, page_size=50)), timeout=60)

    rows = by_member(deliveries(engine, cid))
    assert {i: (rows[mid].status, rows[mid].reason) for i, mid in enumerate(ids, start=1)} == {
        1: ("sent", None), 2: ("sent", None), 3: ("failed", "render_error"), 4: ("sent", None),
        5: ("failed", "render_error"), 6: ("sent", None)}
    assert sorted(smtp_server.recipients()) == sorted(email(i) for i in (1, 2, 4, 6))
    bodies = {m.rcpt_tos[0]: m.message.get_body(("plain",)).get_content() for m in smtp_server.messages}
    assert "You will have 390 points, 25 per visit" in bodies[email(4)]
    assert campaign_row(engine, cid).status == "completed"


async def test_a_member_whose_data_makes_the_render_run_for_hours_fails_alone_at_the_time_limit(
        workers, engine: Engine, smtp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("templates.sandbox.MAX_RENDER_S", 0.3)
    program, ids = bulk_members(engine, 4, attributes=lambda i: {"stars": 100_000 if i == 2 else i})
    cid = campaign_with_text(engine, program, "{% for i in range(member.stars) %}{% for j in range(member.stars) %}"
                                              "{% endfor %}*{% endfor %} stars for you\n")

    async with workers(engine=engine) as rig:   # before: member 2's render held the worker's event loop for hours
        await asyncio.wait_for(rig.finish(await rig.start(cid, page_size=50)), timeout=60)

    rows = by_member(deliveries(engine, cid))
    assert {i: (rows[mid].status, rows[mid].reason) for i, mid in enumerate(ids, start=1)} == {
        1: ("sent", None), 2: ("failed", "render_error"), 3: ("sent", None), 4: ("sent", None)}
    assert sorted(smtp_server.recipients()) == sorted(email(i) for i in (1, 3, 4))
    bodies = {m.rcpt_tos[0]: m.message.get_body(("plain",)).get_content() for m in smtp_server.messages}
    assert "*** stars for you" in bodies[email(3)]
    assert campaign_row(engine, cid).status == "completed"
