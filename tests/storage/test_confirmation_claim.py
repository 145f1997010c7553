"""The confirmation sender claims only requests still pending: one withdrawn between its SELECT and its
claim (the member unsubscribed from everything, was erased: the request ``expired``, committed by another
transaction) is not revived, sent nor made confirmable. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from activities.confirmations import ConfirmationActivities
from app.settings import Settings
from app.worker import channel_registry, signer
from consent.confirmations import Proof, request_confirmation
from storage.db import make_engine, session_scope
from storage.tables import Confirmation, Member
from templates.render import Renderer
from tests.factories import seed_members
from workflows.contracts import SendConfirmations


def _is_claim(parameters: Any) -> bool:
    """The statement that moves the selected requests to ``sending`` (its SET value comes first)."""
    if isinstance(parameters, dict):
        return parameters.get("status") == "sending"
    return bool(parameters) and parameters[0] == "sending"


@pytest.fixture
def setup(any_db_url: str, tmp_path: Path, smtp_server):
    engine = make_engine(any_db_url)
    program = seed_members(engine, 2, consent_every=10**9)
    with session_scope(engine) as s:
        ids = list(s.scalars(select(Member.id).order_by(Member.id)))
        for mid in ids:
            request_confirmation(session=s, program_id=program, member_id=mid, channel="email", topics=["news"],
                                 proof=Proof())
    settings = Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                        database_url=any_db_url, public_base_url="https://clarion.example")
    acts = ConfirmationActivities(engine=engine, registry=channel_registry(settings, engine), renderer=Renderer(),
                                  signer=signer(settings), base_url=settings.base_url,
                                  message_id_domain="clarion.example")
    yield engine, any_db_url, acts
    engine.dispose()


def test_a_request_expired_while_the_batch_was_claimed_is_not_sent(setup, smtp_server):
    engine, url, acts = setup
    with Session(engine) as s:
        first, second = s.scalars(select(Confirmation.id).order_by(Confirmation.id)).all()
    other = make_engine(url)

    def withdraw_meanwhile(conn, cursor, statement, parameters, context, executemany):
        if not (statement.lstrip().upper().startswith("UPDATE CONFIRMATION") and _is_claim(parameters)):
            return
        if engine.dialect.name == "sqlite":     # one writer at a time: the same transaction stands in for it
            cursor.connection.execute("UPDATE confirmation SET status = 'expired' WHERE id = ?", (first,))
        else:                                   # another transaction, committed before the claim runs
            with other.begin() as c:
                c.execute(update(Confirmation).where(Confirmation.id == first).values(status="expired"))

    event.listen(engine, "before_cursor_execute", withdraw_meanwhile)
    try:
        result = asyncio.run(ActivityEnvironment().run(acts.send_confirmations, SendConfirmations()))
    finally:
        event.remove(engine, "before_cursor_execute", withdraw_meanwhile)
        other.dispose()

    assert result.sent == 1
    assert smtp_server.recipients() == ["m2@test.example"]
    with Session(engine) as s:
        assert dict(s.execute(select(Confirmation.id, Confirmation.status)).all()) == {first: "expired",
                                                                                      second: "sent"}
