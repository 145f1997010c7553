"""Storage on a real SQLite file and, when CI provides it, a real PostgreSQL."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from consent import ledger
from members.service import ensure_program, import_csv
from storage.db import insert_ignore, make_engine, session_scope
from storage.migrate import downgrade, upgrade
from storage.tables import (
    Campaign,
    ConsentAction,
    ConsentRecord,
    ConsentSource,
    ConsentState,
    Delivery,
    Member,
)
from tests.factories import make_campaign, seed_members


@pytest.fixture
def eng(any_db_url):
    e = make_engine(any_db_url)
    yield e
    e.dispose()


def test_migrations_create_every_table_and_downgrade_cleanly(any_db_url):
    e = make_engine(any_db_url)
    names = set(inspect(e).get_table_names())
    assert {"program", "member", "push_token", "card", "event", "consent_record", "consent_state",
            "campaign", "delivery", "response", "api_key", "stored_message", "channel_account",
            "sandbox_message", "rate_limit"} <= names
    e.dispose()
    downgrade(any_db_url, "base")
    e = make_engine(any_db_url)
    assert set(inspect(e).get_table_names()) <= {"alembic_version"}
    e.dispose()
    upgrade(any_db_url)


def test_migrations_match_the_tables_of_the_code(any_db_url):
    """Alembic's autogenerate finds nothing to add, drop or alter: the migrations build what
    storage/tables.py declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import storage.tables  # noqa: F401 - the tables register on SQLModel.metadata

    e = make_engine(any_db_url)
    with e.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}),
                                SQLModel.metadata)
    e.dispose()
    assert diff == []


def test_delivery_key_allows_one_row_per_campaign_member_step_occurrence(eng):
    program_id = seed_members(eng, 2)
    campaign_id = make_campaign(eng, program_id)
    with Session(eng) as s:
        member_id = s.scalar(select(Member.id).order_by(Member.id))
    row = {"campaign_id": campaign_id, "member_id": member_id, "step": "main", "occurrence": "wave-1",
           "status": "planned"}
    with session_scope(eng) as s:
        s.execute(insert_ignore(s, Delivery.__table__, ["campaign_id", "member_id", "step", "occurrence"]),
                  [row, row])
    with pytest.raises(IntegrityError), session_scope(eng) as s:
        s.add(Delivery(**row))
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 1


def test_consent_ledger_appends_and_state_follows_the_latest_act(eng):
    program_id = seed_members(eng, 1, consent_every=1)
    with Session(eng) as s:
        member_id = s.scalar(select(Member.id))
    with session_scope(eng) as s:
        ledger.record(session=s, program_id=program_id, acts=[ledger.ConsentAct(
            member_id=member_id, channel="email", topic="promotions", action=ConsentAction.revoked,
            source=ConsentSource.web, ip="203.0.113.7", user_agent="Firefox")])
    with Session(eng) as s:
        records = ledger.history(session=s, member_id=member_id)
        assert [(r.action, r.source) for r in records] == [("granted", "api"), ("revoked", "web")]
        assert records[1].ip == "203.0.113.7"
        state = s.get(ConsentState, (member_id, "email", "promotions"))
        assert state.status == "revoked" and state.record_id == records[1].id
        assert ledger.states_for(session=s, member_ids=[member_id], channel="email") == {
            member_id: {"promotions": "revoked"}}
        assert s.scalar(select(func.count()).select_from(ConsentRecord)) == 2


def test_member_upsert_by_external_id_updates_in_place(eng):
    seed_members(eng, 3)
    seed_members(eng, 3)
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(Member)) == 3


def test_csv_import_keeps_good_rows_and_reports_bad_ones_by_line_and_field(eng):
    program = ensure_program(engine=eng, key="shop", name="Shop")
    csv_text = (
        "external_id,email,phone,locale,time_zone,attr.tier,consent.email.promotions\n"
        "A1,anna@example.com,+7 912 345-67-89,ru,Europe/Moscow,gold,yes\n"
        "A2,not-an-email,,en,,basic,no\n"
        "A3,bob@example.com,,en,Mars/Olympus,basic,yes\n"
        ",nobody@example.com,,en,,,\n"
        "A5,eve@example.com,,xx-QQ,,,\n"
        "A6,carl@example.com,+1 202 555 0142,en-us,America/New_York,silver,no\n"
    )
    result = import_csv(engine=eng, program_id=program.id, stream=io.StringIO(csv_text))
    assert result.created == 2
    assert [(e.line, e.field) for e in result.errors] == [
        (3, "email"), (4, "time_zone"), (5, "external_id"), (6, "locale")]
    assert "Mars/Olympus" in result.errors[1].message
    with Session(eng) as s:
        members = {m.external_id: m for m in s.scalars(select(Member))}
        assert set(members) == {"A1", "A6"}
        assert members["A1"].phone == "+79123456789" and members["A1"].attributes == {"tier": "gold"}
        assert members["A6"].locale == "en-US"
        states = {(st.member_id, st.topic): st.status for st in s.scalars(select(ConsentState))}
        assert states == {(members["A1"].id, "promotions"): "granted",
                          (members["A6"].id, "promotions"): "revoked"}
        assert {r.source for r in s.scalars(select(ConsentRecord))} == {"import"}


def test_campaign_key_is_unique_per_program(eng):
    program_id = seed_members(eng, 1)
    make_campaign(eng, program_id)
    with pytest.raises(IntegrityError):
        make_campaign(eng, program_id)
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(Campaign)) == 1
