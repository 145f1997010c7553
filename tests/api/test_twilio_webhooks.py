"""Twilio's callbacks into Clarion: delivery reports and members' messages, signed with
X-Twilio-Signature over the exact public URL and form fields (computed here by twilio's own validator)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session
from twilio.request_validator import RequestValidator

from app.api.main import create_app
from app.settings import Settings
from channels.account_store import set_account
from consent import ledger
from members.profile import ConsentGrant, MemberIn
from members.service import upsert_members
from storage.db import session_scope
from storage.tables import ConsentRecord, ConsentState, Delivery, Member, Response, utcnow
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members

BASE = "https://clarion.example"
SID, TOKEN = "AC" + "1" * 32, "twilio-auth-token"
PHONE = "+79123456789"


def sign(path: str, form: dict[str, str], token: str = TOKEN, base: str = BASE) -> str:
    return RequestValidator(token).compute_signature(base + path, form)


@pytest.fixture
def hooks(engine, tmp_path):
    program_id = seed_members(engine, 1)
    upsert_members(engine=engine, program_id=program_id, items=[(None, "P1", MemberIn(
        first_name="Анна", locale="ru", phone=PHONE,
        consents=[ConsentGrant(channel="sms", topic="promotions"),
                  ConsentGrant(channel="whatsapp", topic="promotions")]))])
    for channel in ("sms", "whatsapp"):
        set_account(engine=engine, program="shop", channel=channel, provider="twilio",
                    config={"account_sid": SID, "auth_token": TOKEN, "sender": "+15005550006"})
    cid = make_campaign(engine, program_id, channels=["sms"])
    with session_scope(engine) as s:
        member_id = s.scalar(select(Member.id).where(Member.external_id == "P1"))
        d = Delivery(campaign_id=cid, member_id=member_id, status="sent", channel="sms", locale="ru",
                     provider_message_id="SM" + "a" * 32, sent_at=utcnow() - timedelta(minutes=5))
        s.add(d)
        s.flush()
        delivery_id = d.id
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE),
                     engine=engine)
    with TestClient(app) as client:
        yield client, delivery_id, member_id


def post(client, path: str, form: dict[str, str], **sign_kw) -> object:
    return client.post(path, data=form, headers={"X-Twilio-Signature": sign(path, form, **sign_kw)})


def status_form(status: str, **extra: str) -> dict[str, str]:
    return {"AccountSid": SID, "MessageSid": "SM" + "a" * 32, "MessageStatus": status, **extra}


def delivery(engine, delivery_id):
    with Session(engine) as s:
        return s.get(Delivery, delivery_id)


def responses(engine, delivery_id) -> list[str]:
    with Session(engine) as s:
        return [r.kind for r in s.scalars(select(Response).where(Response.delivery_id == delivery_id))]


def test_delivered_report_marks_the_delivery_and_is_counted_once(hooks, engine):
    client, did, _ = hooks
    for _ in range(2):  # Twilio retries a callback: the second changes nothing
        r = post(client, "/webhooks/twilio/status", status_form("delivered"))
        assert r.status_code == 200, r.text
    assert r.json() == {"found": True, "duplicate": True, "status": "delivered"}
    assert delivery(engine, did).status == "delivered"
    assert responses(engine, did) == ["delivered"]


def test_a_late_sent_or_failed_report_never_moves_a_delivered_message_back(hooks, engine):
    client, did, _ = hooks
    post(client, "/webhooks/twilio/status", status_form("delivered"))
    post(client, "/webhooks/twilio/status", status_form("sent"))
    post(client, "/webhooks/twilio/status", status_form("undelivered", ErrorCode="30003"))
    assert delivery(engine, did).status == "delivered"


def test_undelivered_with_unsubscribed_code_fails_the_delivery_and_suppresses_the_number(hooks, engine):
    client, did, member_id = hooks
    r = post(client, "/webhooks/twilio/status", status_form("undelivered", ErrorCode="21610"))
    assert r.json()["status"] == "failed"
    row = delivery(engine, did)
    assert (row.status, row.error_code, row.reason) == ("failed", "21610", "provider_undelivered")
    with Session(engine) as s:
        state = s.get(ConsentState, (member_id, "sms", "*"))
    assert state is not None and state.status == "suppressed"


@pytest.mark.parametrize("tamper", ["no signature", "wrong token", "tampered field", "other url", "extra field",
                                    "unknown account"])
def test_unsigned_or_tampered_callbacks_are_refused_and_change_nothing(hooks, engine, tamper):
    client, did, _ = hooks
    form = status_form("delivered")
    path = "/webhooks/twilio/status"
    if tamper == "no signature":
        r = client.post(path, data=form)
    elif tamper == "wrong token":
        r = post(client, path, form, token="not-the-token")
    elif tamper == "tampered field":
        r = client.post(path, data={**form, "MessageStatus": "failed"},
                        headers={"X-Twilio-Signature": sign(path, form)})
    elif tamper == "other url":
        r = client.post(path, data=form, headers={"X-Twilio-Signature": sign("/webhooks/twilio/inbound", form)})
    elif tamper == "extra field":
        r = client.post(path, data={**form, "Injected": "1"}, headers={"X-Twilio-Signature": sign(path, form)})
    else:
        other = {**form, "AccountSid": "AC" + "9" * 32}
        r = post(client, path, other, token=TOKEN)
    assert r.status_code == 403
    assert delivery(engine, did).status == "sent" and responses(engine, did) == []


def test_signature_for_the_internal_url_is_refused_behind_a_public_base_url(hooks):
    client, _, _ = hooks
    form = status_form("delivered")
    r = client.post("/webhooks/twilio/status", data=form,
                    headers={"X-Twilio-Signature": sign("/webhooks/twilio/status", form, base="http://testserver")})
    assert r.status_code == 403


def inbound(body: str, *, sender: str = PHONE, sid: str = "SM" + "b" * 32) -> dict[str, str]:
    return {"AccountSid": SID, "MessageSid": sid, "From": sender, "To": "+15005550006", "Body": body}


def sms_state(engine, member_id) -> str | None:
    with Session(engine) as s:
        row = s.get(ConsentState, (member_id, "sms", "*"))
    return row.status if row else None


@pytest.mark.parametrize("word", ["STOP", "stop", "Unsubscribe", "СТОП", "отписаться"])
def test_stop_words_revoke_sms_and_are_confirmed_in_the_members_language(hooks, engine, word):
    client, _, member_id = hooks
    r = post(client, "/webhooks/twilio/inbound", inbound(word))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert "вы отписаны" in r.text
    assert sms_state(engine, member_id) == "revoked"
    with Session(engine) as s:
        [rec] = s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == member_id,
                                                      ConsentRecord.topic == "*"))
    assert (rec.channel, rec.action, rec.source) == ("sms", "revoked", "sms_keyword")


def test_a_stop_twilio_delivers_twice_is_one_act_in_the_ledger(hooks, engine):
    client, _, member_id = hooks
    for _ in range(2):
        post(client, "/webhooks/twilio/inbound", inbound("STOP"))
    with Session(engine) as s:
        records = s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == member_id,
                                                        ConsentRecord.channel == "sms", ConsentRecord.topic == "*"))
        assert len(records.all()) == 1


def test_a_member_who_replied_stop_gets_no_more_sms_and_start_brings_them_back(hooks, engine):
    client, _, member_id = hooks
    post(client, "/webhooks/twilio/inbound", inbound("STOP"))
    with Session(engine) as s:
        states = ledger.states_for(session=s, member_ids=[member_id], channel="sms")[member_id]
    from consent.policy import decide
    assert not decide(states, topic="promotions", channel="sms").allowed
    post(client, "/webhooks/twilio/inbound", inbound("START", sid="SM" + "c" * 32))
    assert sms_state(engine, member_id) == "granted"
    with Session(engine) as s:
        states = ledger.states_for(session=s, member_ids=[member_id], channel="sms")[member_id]
    assert decide(states, topic="promotions", channel="sms").allowed


def test_help_is_answered_and_changes_no_consent(hooks, engine):
    client, _, member_id = hooks
    r = post(client, "/webhooks/twilio/inbound", inbound("HELP"))
    assert "<Message>Shop &amp; Co: рекламные сообщения." in r.text
    assert sms_state(engine, member_id) is None


def test_any_other_text_is_recorded_once_as_a_reply_to_the_latest_sms(hooks, engine):
    client, did, member_id = hooks
    for _ in range(2):
        r = post(client, "/webhooks/twilio/inbound", inbound("А можно подробнее?"))
        assert r.status_code == 200 and "<Message>" not in r.text
    assert responses(engine, did) == ["replied"]
    assert sms_state(engine, member_id) is None


def test_a_whatsapp_message_opens_the_24h_window(hooks, engine):
    client, _, member_id = hooks
    post(client, "/webhooks/twilio/inbound", inbound("Привет", sender=f"whatsapp:{PHONE}"))
    with Session(engine) as s:
        m = s.get(Member, member_id)
    assert m.whatsapp_inbound_at is not None
    with Session(engine) as s:
        assert s.get(ConsentState, (member_id, "whatsapp", "*")) is None


def test_inbound_from_an_unsigned_request_changes_no_consent(hooks, engine):
    client, _, member_id = hooks
    r = client.post("/webhooks/twilio/inbound", data=inbound("STOP"), headers={"X-Twilio-Signature": "forged"})
    assert r.status_code == 403 and sms_state(engine, member_id) is None


def test_a_report_that_beats_the_recorded_message_id_is_applied_when_the_id_is_recorded(hooks, engine, tmp_path):
    from activities.delivery import _Outcome
    from app.worker import delivery_activities

    client, did, _ = hooks
    early_sid = "SM" + "e" * 32
    with session_scope(engine) as s:   # the message is out, its id not recorded yet (status sending)
        row = s.get(Delivery, did)
        cid, member_id = row.campaign_id, row.member_id
        d2 = Delivery(campaign_id=cid, member_id=member_id, step="again", status="sending", channel="sms",
                      sent_at=utcnow())
        s.add(d2)
        s.flush()
        d2_id = d2.id
    form = {"AccountSid": SID, "MessageSid": early_sid, "MessageStatus": "delivered"}
    for _ in range(2):
        assert post(client, "/webhooks/twilio/status", form).json()["found"] is False
    acts = delivery_activities(Settings(var_dir=tmp_path, database_url=str(engine.url)), engine=engine)
    from decimal import Decimal
    from storage.tables import DeliveryStatus
    acts._record(acts.campaign(cid), [_Outcome(d2_id, member_id, DeliveryStatus.sent, provider_message_id=early_sid,
                                              cost=Decimal("0.05"), channel="sms", locale="ru")])
    assert delivery(engine, d2_id).status == "delivered" and responses(engine, d2_id) == ["delivered"]
    from storage.tables import EarlyStatus
    with Session(engine) as s:
        assert s.scalars(select(EarlyStatus)).all() == []
