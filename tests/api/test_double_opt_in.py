"""Double opt-in: a consent asked for on email is not consent until the member uses the confirmation link;
the link (sealed, 7 days) is sent by the confirmation sender; GET never confirms (scanners open links);
POST confirms with its proof. SMS: reply YES."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlmodel import Session
from twilio.request_validator import RequestValidator

from activities.confirmations import ConfirmationActivities
from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from app.worker import channel_registry
from channels.account_store import set_account
from consent import ledger
from consent.policy import SuppressReason, decide
from storage.db import session_scope
from storage.tables import Confirmation, ConsentRecord, ConsentState, Member, Role, utcnow
from templates.render import Renderer
from tests.conftest import free_port
from tests.factories import seed_members
from workflows.contracts import SendConfirmations

BASE = "https://clarion.example"


@pytest.fixture
def api(engine, tmp_path, smtp_server):
    seed_members(engine, 1, consent_every=10**9)     # no consent at all
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE,
                        smtp_host=smtp_server.host, smtp_port=smtp_server.port, database_url=str(engine.url))
    app = create_app(settings, engine=engine)
    core = {"Authorization": f"Bearer {create_key(engine=engine, role=Role.core)}"}
    with TestClient(app) as client:
        yield client, core, settings


def ask(client, core, channel: str = "email", topics=("promotions",)) -> Any:
    r = client.put("/api/v1/members/M000001", params={"program": "shop"}, headers=core, json={
        "first_name": "Анна", "locale": "ru", "email": "anna@example.com", "phone": "+79161234567",
        "consents": [{"channel": channel, "topic": t, "action": "requested", "wording_version": "v7"}
                     for t in topics]})
    assert r.status_code == 200, r.text
    return r


def states(engine, channel: str = "email") -> dict[str, str]:
    with Session(engine) as s:
        mid = s.scalar(select(Member.id))
        return ledger.states_for(session=s, member_ids=[mid], channel=channel).get(mid, {})


def sender(engine, settings) -> ConfirmationActivities:
    return ConfirmationActivities(engine=engine, registry=channel_registry(settings, engine), renderer=Renderer(),
                                  signer=__import__("app.worker").worker.signer(settings), base_url=BASE,
                                  message_id_domain="clarion.example")


def run_sender(acts: ConfirmationActivities) -> Any:
    from temporalio.testing import ActivityEnvironment

    return asyncio.run(ActivityEnvironment().run(acts.send_confirmations, SendConfirmations()))


def link_path(smtp_server) -> str:
    [msg] = smtp_server.messages
    text = msg.message.get_body(("plain",)).get_content()
    url = re.search(rf"{re.escape(BASE)}(/c/[A-Za-z0-9_\-]+)", text).group(1)
    return url


def test_asked_for_is_not_consent_until_confirmed(api, engine):
    client, core, _ = api
    ask(client, core)
    assert states(engine) == {"promotions": "requested"}
    assert decide(states(engine), topic="promotions", channel="email").reason == SuppressReason.unconfirmed
    with Session(engine) as s:
        [req] = s.scalars(select(Confirmation)).all()
    assert (req.status, req.address, req.topics) == ("pending", "anna@example.com", ["promotions"])


def test_the_confirmation_email_goes_once_in_the_members_language(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core)
    acts = sender(engine, settings)
    first = run_sender(acts)
    again = run_sender(acts)
    assert (first.sent, again.sent) == (1, 0) and len(smtp_server.messages) == 1
    msg = smtp_server.messages[0].message
    assert smtp_server.messages[0].rcpt_tos == ["anna@example.com"]
    assert "Подтвердите подписку" in msg["Subject"]
    with Session(engine) as s:
        assert s.scalar(select(Confirmation.status)) == "sent"


def test_opening_the_link_does_not_confirm_pressing_the_button_does_with_proof(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core)
    run_sender(sender(engine, settings))
    path = link_path(smtp_server)
    page = client.get(path)
    assert page.status_code == 200 and "Подтвердить" in page.text
    assert states(engine) == {"promotions": "requested"}          # a scanner opening the link confirms nothing
    r = client.post(path, headers={"User-Agent": "Phone/1.0"})
    assert r.status_code == 200 and "подтверждена" in r.text
    assert states(engine) == {"*": "confirmed", "promotions": "confirmed"}
    assert decide(states(engine), topic="promotions", channel="email").allowed
    with Session(engine) as s:
        rec = s.scalars(select(ConsentRecord).where(ConsentRecord.topic == "promotions")
                        .order_by(ConsentRecord.id.desc())).first()
    assert (rec.action, rec.source, rec.user_agent, rec.ip) == ("confirmed", "web", "Phone/1.0", "testclient")
    assert rec.wording_version == "clarion-default-1" and len(rec.text_hash) == 64
    # a second press changes nothing
    before = len(list(ledger.history(session=Session(engine), member_id=rec.member_id)))
    client.post(path)
    assert len(list(ledger.history(session=Session(engine), member_id=rec.member_id))) == before


@pytest.mark.parametrize("how", ["tampered", "expired request", "address changed"])
def test_a_bad_expired_or_stale_link_confirms_nothing(api, engine, smtp_server, how):
    client, core, settings = api
    ask(client, core)
    run_sender(sender(engine, settings))
    path = link_path(smtp_server)
    if how == "tampered":
        path = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    elif how == "expired request":
        with session_scope(engine) as s:
            s.execute(update(Confirmation).values(requested_at=utcnow() - timedelta(days=8)))
    else:
        with session_scope(engine) as s:
            s.execute(update(Member).values(email="someone.else@example.com"))
    assert client.post(path).status_code == 404
    assert states(engine) == {"promotions": "requested"}


def test_a_revoked_topic_is_not_confirmed_by_an_old_link(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core, topics=("promotions", "news"))
    run_sender(sender(engine, settings))
    client.put("/api/v1/members/M000001", params={"program": "shop"}, headers=core,
               json={"email": "anna@example.com", "consents": [{"channel": "email", "topic": "news",
                                                                "action": "revoked"}]})
    client.post(link_path(smtp_server))
    assert states(engine) == {"*": "confirmed", "promotions": "confirmed", "news": "revoked"}


def test_a_blocked_channel_gets_no_confirmation(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core)
    with session_scope(engine) as s:
        mid = s.scalar(select(Member.id))
        ledger.record(session=s, program_id=1, acts=[ledger.ConsentAct(
            member_id=mid, channel="email", topic="*", action="suppressed", source="bounce")])
    result = run_sender(sender(engine, settings))
    assert (result.sent, result.failed) == (0, 1) and smtp_server.messages == []


def test_sms_double_opt_in_is_confirmed_by_replying_yes(api, engine):
    client, core, settings = api
    sid, token = "AC" + "7" * 32, "tw-secret-token"
    set_account(engine=engine, program="shop", channel="sms", provider="twilio",
                config={"account_sid": sid, "auth_token": token, "sender": "+15005550006"})
    ask(client, core, channel="sms")
    form = {"AccountSid": sid, "MessageSid": "SM" + "1" * 32, "From": "+79161234567", "Body": "YES"}
    sig = RequestValidator(token).compute_signature(BASE + "/webhooks/twilio/inbound", form)
    r = client.post("/webhooks/twilio/inbound", data=form, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200
    assert states(engine, "sms") == {"*": "confirmed", "promotions": "confirmed"}
    with Session(engine) as s:
        assert s.scalar(select(ConsentState.status).where(ConsentState.channel == "sms",
                                                          ConsentState.topic == "*")) == "confirmed"
