"""Recording responses: once per event id, the delivery's bits and revenue kept in step (SQLite and PostgreSQL);
the 0006 migration fills both in for responses recorded before it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select, text
from sqlmodel import Session

from analytics import responses
from analytics.responses import CLICKED, CONVERTED, OPENED, OPENED_MACHINE
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.tables import Delivery, Member, Response, ResponseKind, utcnow
from tests.factories import make_campaign, seed_members


def _delivery(eng, status="sent") -> tuple[int, int]:
    program_id = seed_members(eng, 1)
    campaign_id = make_campaign(eng, program_id)
    with session_scope(eng) as s:
        member_id = s.scalar(select(Member.id))
        d = Delivery(campaign_id=campaign_id, member_id=member_id, status=status, channel="email", sent_at=utcnow())
        s.add(d)
        s.flush()
        return campaign_id, d.id or 0


def test_a_response_is_written_once_and_sets_its_bits(any_db_url):
    eng = make_engine(any_db_url)
    campaign_id, did = _delivery(eng)
    now = utcnow()
    with session_scope(eng) as s:
        assert responses.record(s, delivery_id=did, kind=ResponseKind.opened_machine, at=now, event_id="o:m")
        assert responses.record(s, delivery_id=did, kind=ResponseKind.clicked, at=now, event_id="c:1", detail="cta")
        assert not responses.record(s, delivery_id=did, kind=ResponseKind.clicked, at=now, event_id="c:1")
        assert responses.record(s, delivery_id=did, kind="converted", at=now + timedelta(days=1), event_id="p:1",
                                value=Decimal("12.50"))
        assert responses.record(s, delivery_id=did, kind="converted", at=now + timedelta(days=2), event_id="p:2",
                                value=Decimal("7.25"))
        assert not responses.record(s, delivery_id=did, kind="converted", at=now, event_id="p:2",
                                    value=Decimal("7.25"))
    with Session(eng) as s:
        d = s.get(Delivery, did)
        assert d.response_flags == OPENED_MACHINE | CLICKED | OPENED | CONVERTED
        assert d.revenue == Decimal("19.75")
        rows = s.execute(select(Response.kind, Response.campaign_id, Response.detail).order_by(Response.id)).all()
        assert [r.kind for r in rows] == ["opened_machine", "clicked", "converted", "converted"]
        assert {r.campaign_id for r in rows} == {campaign_id}
        assert rows[1].detail == "cta"
    eng.dispose()


def test_many_responses_at_once_count_each_event_id_once(any_db_url):
    """record_many (a batch of attributed purchases): an id recorded before, or twice in the batch, adds nothing."""
    eng = make_engine(any_db_url)
    campaign_id, did = _delivery(eng)
    now = utcnow()
    with session_scope(eng) as s:
        assert responses.record(s, delivery_id=did, kind="converted", at=now, event_id="p:0", value=Decimal("1"))

    def bought(eid: str, value: str | None) -> responses.NewResponse:
        return responses.NewResponse(delivery_id=did, campaign_id=campaign_id, kind=ResponseKind.converted,
                                     at=now, event_id=eid, value=Decimal(value) if value else None)

    with session_scope(eng) as s:
        new = responses.record_many(s, [bought("p:0", "100"), bought("p:1", "2.50"), bought("p:1", "2.50"),
                                        bought("p:2", None), bought("p:3", "4")])
    assert new == {"p:1", "p:2", "p:3"}
    with Session(eng) as s:
        d = s.get(Delivery, did)
        assert d.response_flags == CONVERTED and d.revenue == Decimal("7.50")   # 1 + 2.50 + 4
        assert s.scalar(select(func.count()).select_from(Response)) == 4
    with session_scope(eng) as s:
        assert responses.record_many(s, [bought("p:3", "4")]) == set() and responses.record_many(s, []) == set()
    eng.dispose()


def test_the_migration_fills_in_responses_recorded_before_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision="0005")
    eng = make_engine(url)
    program_id = seed_members(eng, 1)
    with session_scope(eng) as s:
        s.execute(text("INSERT INTO campaign (program_id, key, name, kind, status, topic, spec, spec_hash, "
                       "budget_spent, version, created_at) VALUES (:p, 'old', 'Old', 'broadcast', "
                       "'completed', 'promotions', '{}', 'x', 0, 1, :now)"), {"p": program_id, "now": utcnow()})
        cid = s.scalar(text("SELECT id FROM campaign"))
        mid = s.scalar(text("SELECT id FROM member"))
        s.execute(text("INSERT INTO delivery (campaign_id, member_id, step, occurrence, status, created_at, "
                       "updated_at) VALUES (:c, :m, 'main', 'wave-1', 'delivered', :now, :now)"),
                  {"c": cid, "m": mid, "now": utcnow()})
        did = s.scalar(text("SELECT id FROM delivery"))
        for kind, value, eid in [("opened", None, "a"), ("clicked", None, "b"), ("converted", 10, "c"),
                                 ("converted", 5, "d")]:
            s.execute(text("INSERT INTO response (delivery_id, kind, at, value, provider_event_id) "
                           "VALUES (:d, :k, :now, :v, :e)"), {"d": did, "k": kind, "now": utcnow(), "v": value, "e": eid})
    eng.dispose()
    upgrade(url)
    eng = make_engine(url)
    with Session(eng) as s:
        d = s.get(Delivery, did)
        assert d.response_flags == OPENED | CLICKED | CONVERTED
        assert d.revenue == Decimal(15)
        assert s.scalar(select(func.count()).where(Response.campaign_id == cid)) == 4
    eng.dispose()
