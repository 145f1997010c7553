"""A suppression reported by email address finds the member whatever the case of either: members keep
their address as given (``Anna.Smirnova@example.com``), bounce reports and feedback loops often lower it."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlmodel import Session

from consent.suppressions import SuppressionIn, suppress
from members.profile import MemberIn
from members.service import ensure_program, upsert_members
from storage.db import make_engine, session_scope
from storage.tables import ConsentState, Member


@pytest.mark.parametrize("reported", ["anna.smirnova@example.com", "Anna.Smirnova@example.com",
                                      "ANNA.SMIRNOVA@EXAMPLE.COM", "  anna.SMIRNOVA@Example.com "])
def test_a_mixed_case_address_is_suppressed_whatever_case_the_report_uses(any_db_url, reported):
    engine = make_engine(any_db_url)
    program = ensure_program(engine=engine, key="shop", name="Shop").id or 0
    upsert_members(engine=engine, program_id=program, items=[
        (None, "A1", MemberIn(email="Anna.Smirnova@example.com")), (None, "B2", MemberIn(email="boris@example.com"))])
    with Session(engine) as s:
        assert s.scalar(select(Member.email).where(Member.external_id == "A1")) == "Anna.Smirnova@example.com"

    with session_scope(engine) as s:
        result = suppress(session=s, program_id=program, items=[SuppressionIn(channel="email", reason="bounce",
                                                                               address=reported)])

    assert (result.suppressed, result.unknown) == (1, [])
    with Session(engine) as s:
        suppressed = s.scalars(select(Member.external_id).join(ConsentState, ConsentState.member_id == Member.id)
                               .where(ConsentState.channel == "email", ConsentState.topic == "*",
                                      ConsentState.status == "suppressed")).all()
    assert suppressed == ["A1"]
    engine.dispose()
