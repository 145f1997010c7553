"""The claim and the record of a chunk, on SQLite and PostgreSQL: a row another attempt of the page already
claimed is never claimed (nor sent, nor charged) twice, and a reservation is given back only by the attempt
that holds it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlmodel import Session

from activities.delivery import _Outcome, _Tally
from activities.messages import Target
from app.settings import Settings
from app.worker import delivery_activities
from channels.base import OutboundMessage
from storage.db import make_engine, session_scope
from storage.tables import Campaign, Delivery, DeliveryStatus, utcnow
from tests.factories import make_campaign, seed_members


@pytest.fixture
def setup(any_db_url: str, tmp_path: Path):
    engine = make_engine(any_db_url)
    program = seed_members(engine, 3)
    cid = make_campaign(engine, program, budget="10")
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(budget_limit=Decimal("10")))
        rows = [Delivery(campaign_id=cid, member_id=m, status="planned", channel="email") for m in (1, 2, 3)]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    acts = delivery_activities(Settings(var_dir=tmp_path, database_url=any_db_url), engine=engine)
    yield engine, acts, cid, ids
    engine.dispose()


def item(delivery_id: int, member_id: int) -> tuple[Target, OutboundMessage, Decimal]:
    t = Target(delivery_id=delivery_id, member_id=member_id, channel="email", locale="en", context={})
    return t, OutboundMessage(delivery_id=delivery_id, to=f"m{member_id}@test.example", text="x"), Decimal("1")


def spent(engine, cid) -> Decimal:
    with Session(engine) as s:
        return Decimal(s.scalar(select(Campaign.budget_spent).where(Campaign.id == cid)))


def test_a_row_another_attempt_claimed_is_not_claimed_again_nor_charged(setup):
    engine, acts, cid, (d1, d2, d3) = setup
    ctx = acts.campaign(cid)
    first = acts._claim(ctx, [item(d1, 1), item(d2, 2)], utcnow(), _Tally())   # attempt 1 claims two rows
    again = acts._claim(ctx, [item(d1, 1), item(d2, 2), item(d3, 3)], utcnow(), _Tally())   # attempt 2 (stale)
    assert [t.delivery_id for t, _, _ in first] == [d1, d2]
    assert [t.delivery_id for t, _, _ in again] == [d3]
    assert spent(engine, cid) == Decimal("3")


def test_only_the_attempt_holding_a_row_records_it_and_gets_its_reservation_back(setup):
    engine, acts, cid, (d1, d2, _) = setup
    ctx = acts.campaign(cid)
    acts._claim(ctx, [item(d1, 1), item(d2, 2)], utcnow(), _Tally())
    with session_scope(engine) as s:   # a retry of the page found d1 left `sending`: in doubt, charged
        s.execute(update(Delivery).where(Delivery.id == d1).values(status=DeliveryStatus.in_doubt))
    acts._record(ctx, [_Outcome(d1, 1, DeliveryStatus.failed, "permanent", cost=Decimal("1"), channel="email"),
                       _Outcome(d2, 2, DeliveryStatus.failed, "permanent", cost=Decimal("1"), channel="email")])
    with Session(engine) as s:
        status = dict(s.execute(select(Delivery.id, Delivery.status).where(Delivery.campaign_id == cid)).all())
    assert status[d1] == "in_doubt" and status[d2] == "failed"
    assert spent(engine, cid) == Decimal("1")      # d2's reservation back; d1 stays charged (in doubt)
