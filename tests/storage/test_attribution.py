"""Attribution: a purchase counts for the member's last delivery within its campaign's window (control rows
too), once, through the events ingest (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlmodel import Session

from analytics.responses import CONVERTED, CONVERTED_LATER
from members.events import ingest_events
from storage.db import make_engine, session_scope
from storage.tables import Delivery, Member, Response
from tests.factories import make_campaign, seed_members

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def _setup(url, **spec):
    eng = make_engine(url)
    program_id = seed_members(eng, 3)
    campaign_id = make_campaign(eng, program_id, **spec)
    with Session(eng) as s:
        members = list(s.scalars(select(Member.id).order_by(Member.id)))
    return eng, program_id, campaign_id, members


def _row(eng, campaign_id, member_id, *, status="sent", sent_at=T0, step="main", reason=None, created_at=None):
    with session_scope(eng) as s:
        d = Delivery(campaign_id=campaign_id, member_id=member_id, status=status, step=step, reason=reason,
                     channel="email", sent_at=sent_at if status != "held_out" else None,
                     created_at=created_at or sent_at or T0)
        s.add(d)
        s.flush()
        return d.id


def _buy(eng, program_id, external, at, amount=10, eid=None, **payload):
    eid = eid or f"p-{external}-{at.isoformat()}"
    return ingest_events(engine=eng, program_id=program_id, now=at + timedelta(minutes=1), items=[{
        "id": eid, "type": "purchase", "member": external, "occurred_at": at.isoformat(),
        "payload": {"amount": amount, **payload}}])


def _conversions(eng):
    with Session(eng) as s:
        return [(r.delivery_id, r.value) for r in s.scalars(
            select(Response).where(Response.kind == "converted").order_by(Response.id))]


def test_window_edges_are_inclusive_of_the_last_instant_and_exclude_before_sending(any_db_url):
    eng, program_id, cid, (m1, m2, m3) = _setup(any_db_url)   # default window: 7 days
    d1 = _row(eng, cid, m1)
    d2 = _row(eng, cid, m2)
    d3 = _row(eng, cid, m3)
    assert _buy(eng, program_id, "M000001", T0 + timedelta(days=7)).attributed == 1         # the last instant
    assert _buy(eng, program_id, "M000002", T0 + timedelta(days=7, seconds=1)).attributed == 0   # one second late
    assert _buy(eng, program_id, "M000003", T0 - timedelta(seconds=1)).attributed == 0     # before it was sent
    assert _conversions(eng) == [(d1, Decimal(10))]
    with Session(eng) as s:
        assert s.get(Delivery, d1).response_flags & CONVERTED and s.get(Delivery, d1).revenue == Decimal(10)
        assert not s.get(Delivery, d2).response_flags and not s.get(Delivery, d3).response_flags
    eng.dispose()


def test_the_window_comes_from_the_spec_and_the_control_group_counts_the_same_way(any_db_url):
    eng, program_id, cid, (m1, m2, _m3) = _setup(any_db_url, attribution_window="2d", holdout=0.5)
    treated = _row(eng, cid, m1)
    control = _row(eng, cid, m2, status="held_out", reason="control", sent_at=None, created_at=T0)
    assert _buy(eng, program_id, "M000001", T0 + timedelta(days=2, hours=1)).attributed == 0
    assert _buy(eng, program_id, "M000001", T0 + timedelta(days=1), amount=20).attributed == 1
    assert _buy(eng, program_id, "M000002", T0 + timedelta(hours=5), amount=30).attributed == 1
    assert _conversions(eng) == [(treated, Decimal(20)), (control, Decimal(30))]
    eng.dispose()


def test_a_purchase_is_attributed_once_to_the_last_delivery_of_any_campaign(any_db_url):
    eng, program_id, first, (m1, m2, m3) = _setup(any_db_url)
    second = make_campaign(eng, program_id, key="autumn")
    _row(eng, first, m1, sent_at=T0)
    later = _row(eng, second, m1, sent_at=T0 + timedelta(hours=2))
    _row(eng, first, m2, status="failed", sent_at=T0)                  # reached nobody
    _row(eng, first, m3, status="held_out", reason="control_unreachable", sent_at=None)
    at = T0 + timedelta(days=1)
    assert _buy(eng, program_id, "M000001", at, eid="receipt-1").attributed == 1
    assert _buy(eng, program_id, "M000001", at, eid="receipt-1").attributed == 0   # the same event again
    assert _buy(eng, program_id, "M000002", at).attributed == 0
    assert _buy(eng, program_id, "M000003", at).attributed == 0
    assert _conversions(eng) == [(later, Decimal(10))]
    eng.dispose()


def test_a_conversion_on_a_follow_up_marks_the_main_row_and_other_currencies_bring_no_revenue(any_db_url):
    eng, program_id, cid, (m1, m2, _m3) = _setup(any_db_url)
    main = _row(eng, cid, m1, sent_at=T0)
    follow = _row(eng, cid, m1, step="reminder", sent_at=T0 + timedelta(days=1))
    other = _row(eng, cid, m2, sent_at=T0)
    assert _buy(eng, program_id, "M000001", T0 + timedelta(days=2), amount=12.5).attributed == 1
    assert _buy(eng, program_id, "M000002", T0 + timedelta(days=2), amount=99, currency="USD").attributed == 1
    with Session(eng) as s:
        assert s.get(Delivery, follow).response_flags == CONVERTED and s.get(Delivery, follow).revenue == Decimal("12.5")
        assert s.get(Delivery, main).response_flags == CONVERTED_LATER and s.get(Delivery, main).revenue is None
        assert s.get(Delivery, other).response_flags == CONVERTED and s.get(Delivery, other).revenue is None
    eng.dispose()
