"""Campaigns over several channels, end to end on the time-skipping server: the real BroadcastCampaign and
activities, the real client libraries (twilio, pyfcm, aiosmtplib) over real sockets to fake providers on
127.0.0.1, the program's accounts read from the database as in production.

What a member gets is asserted where a provider would see it: the form Twilio received, the JSON FCM
received, the bytes the SMTP server received; and in the delivery, consent and sandbox rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from activities.delivery import DeliveryActivities
from app.settings import Settings
from app.worker import signer
from channels.account_store import set_account
from consent import ledger
from consent.tokens import TRACK_CLICK
from storage.db import session_scope
from storage.tables import (
    Card,
    ChannelName,
    ConsentAction,
    ConsentSource,
    ConsentState,
    Member,
    PushToken,
    SandboxMessage,
    StoredMessage,
    utcnow,
)
from tests.channels.fake_fcm import FakeFcm, running_fake_fcm
from tests.channels.fake_twilio import FakeTwilio, running_fake_twilio
from tests.factories import make_campaign
from tests.workflows.conftest import bulk_members, by_member, deliveries, set_program_settings, wait_for
from workflows.contracts import BatchResult, DeliverBatch, StepPlan

pytestmark = pytest.mark.asyncio(loop_scope="session")

SID, TOKEN = "AC" + "3" * 32, "tw-token"
NO_QUIET = {"quiet_hours": {c: None for c in ("sms", "whatsapp", "telegram", "push")}}


def tracked_target(url: str) -> str:
    """The URL a tracked link (the click redirect, analytics.links) sends to, unsealed as the redirect does."""
    base, token = url.split("/t/c/", 1)
    assert base == Settings().base_url.rstrip("/")
    return signer(Settings()).verify(TRACK_CLICK, token)["u"]


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    with running_fake_fcm() as fake:
        yield fake


@pytest.fixture(scope="module")
def service_account_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def use_twilio(engine: Engine, twilio: FakeTwilio, channel: str = "sms", **extra: Any) -> None:
    set_account(engine=engine, program="shop", channel=channel, provider="twilio",
                config={"account_sid": SID, "auth_token": TOKEN, "sender": "+15005550006",
                        "base_url": twilio.url, "timeout_s": 2.0}, **extra)


def use_fcm(engine: Engine, fcm: FakeFcm, key_pem: str) -> None:
    info = {"type": "service_account", "project_id": "shop-app", "private_key_id": "k1", "private_key": key_pem,
            "client_email": "push@shop-app.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": f"{fcm.url}/token"}
    set_account(engine=engine, program="shop", channel="push", provider="fcm",
                config={"project_id": "shop-app", "service_account_info": info, "base_url": fcm.url,
                        "timeout_s": 2.0})


def contacts(engine: Engine, member_id: int, *, phone: str | None = None, email: str | None | bool = True,
             push: list[str] = (), consent: tuple[str, ...] = (), card: str | None = None,
             postal: dict | None = None) -> None:
    with session_scope(engine) as s:
        m = s.get(Member, member_id)
        m.phone = phone
        if email is not True:
            m.email = email or None
        m.postal_address = postal
        s.add(m)
        for token in push:
            s.add(PushToken(member_id=member_id, token=token))
        if card:
            s.add(Card(member_id=member_id, number=card))
        ledger.record(session=s, program_id=m.program_id, acts=[
            ledger.ConsentAct(member_id=member_id, channel=c, topic="promotions", action=ConsentAction.granted,
                              source=ConsentSource.import_) for c in consent])


def form_to(twilio: FakeTwilio) -> list[str]:
    return [r.form["To"] for r in twilio.requests]


def tokens_to(fcm: FakeFcm) -> list[str]:
    return [r.json["message"]["token"] for r in fcm.requests if r.path.endswith("messages:send")]


async def run(workers: Any, engine: Engine, cid: int, **kw: Any) -> Any:
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=50)
        result = await rig.finish(handle)
    return result, rig


async def test_each_member_gets_the_first_channel_they_allow_and_can_be_reached_on(
        workers, engine: Engine, twilio: FakeTwilio, fcm: FakeFcm, smtp_server: Any, service_account_key: str) -> None:
    program, (a, b, c, d) = bulk_members(engine, 4, consent=lambda i: i == 3)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    use_fcm(engine, fcm, service_account_key)
    contacts(engine, a, push=["tok-a-" + "x" * 20], phone="+14155550101", consent=("push", "sms"))
    contacts(engine, b, phone="+14155550102", consent=("sms",))                # no device: SMS
    contacts(engine, c)                                                         # email consent only
    contacts(engine, d, phone="+14155550104")                                   # consents to nothing
    cid = make_campaign(engine, program, channels=["push", "sms", "email"], template="weekend_offer")
    result, _ = await run(workers, engine, cid)
    rows = by_member(deliveries(engine, cid))
    assert {m: (rows[m].channel, rows[m].status) for m in (a, b, c)} == {
        a: ("push", "sent"), b: ("sms", "sent"), c: ("email", "sent")}
    assert (rows[d].status, rows[d].reason) == ("suppressed", "no_consent")
    assert tokens_to(fcm) == ["tok-a-" + "x" * 20] and form_to(twilio) == ["+14155550102"]
    assert smtp_server.recipients() == ["m3@test.example"]
    [push] = [r.json["message"] for r in fcm.requests if r.path.endswith("messages:send")]
    assert push["notification"]["title"] == "500 bonus points this weekend"
    assert tracked_target(push["data"]["link"]) == "https://app.clarion.example/offers/weekend"
    assert twilio.requests[0].form["Body"].startswith("Shop & Co: 500 bonus points")
    assert result.counts.sent == 3 and result.counts.suppressed == 1


async def test_a_bad_number_falls_back_to_email_for_the_same_delivery(
        workers, engine: Engine, twilio: FakeTwilio, smtp_server: Any) -> None:
    program, (a, b) = bulk_members(engine, 2)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    contacts(engine, a, phone="+14155550101", consent=("sms",))
    contacts(engine, b, phone="+14155550102", consent=("sms",))
    twilio.then(status=400, code=21211)            # the first SMS: Twilio calls the number invalid
    cid = make_campaign(engine, program, channels=["sms", "email"], template="weekend_offer")
    await run(workers, engine, cid)
    rows = by_member(deliveries(engine, cid))
    failed_first = a if twilio.requests[0].form["To"] == "+14155550101" else b
    other = b if failed_first == a else a
    assert (rows[failed_first].channel, rows[failed_first].status) == ("email", "sent")
    assert rows[failed_first].attempts == [{"channel": "sms", "code": "21211"}]
    assert (rows[other].channel, rows[other].status, rows[other].attempts) == ("sms", "sent", None)
    from storage.tables import Delivery
    with Session(engine) as s:   # SQL NULL, not JSON null: "which deliveries fell back" is a plain query
        fell_back = s.scalars(select(Delivery.member_id).where(Delivery.attempts.is_not(None))).all()
    assert fell_back == [failed_first]
    assert len(twilio.requests) == 2                       # nobody got a second SMS
    assert smtp_server.recipients() == [f"m{1 if failed_first == a else 2}@test.example"]


async def test_a_number_that_replied_stop_at_twilio_is_suppressed_and_the_member_gets_email(
        workers, engine: Engine, twilio: FakeTwilio, smtp_server: Any) -> None:
    program, (a,) = bulk_members(engine, 1)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    contacts(engine, a, phone="+14155550101", consent=("sms",))
    twilio.then(status=400, code=21610)
    cid = make_campaign(engine, program, channels=["sms", "email"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.channel, row.status) == ("email", "sent")
    with Session(engine) as s:
        state = s.get(ConsentState, (a, "sms", "*"))
    assert state.status == "suppressed"
    # a later campaign does not even try the number
    cid2 = make_campaign(engine, program, key="autumn", channels=["sms", "email"], template="weekend_offer")
    await run(workers, engine, cid2)
    [row2] = deliveries(engine, cid2)
    assert row2.channel == "email" and len(twilio.requests) == 1


async def test_an_unregistered_device_token_is_deleted_and_the_member_gets_sms_instead(
        workers, engine: Engine, twilio: FakeTwilio, fcm: FakeFcm, service_account_key: str) -> None:
    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    use_fcm(engine, fcm, service_account_key)
    contacts(engine, a, push=["dead-token-" + "y" * 20], phone="+14155550101", consent=("push", "sms"))
    fcm.then(error="UNREGISTERED")
    cid = make_campaign(engine, program, channels=["push", "sms"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.channel, row.status, row.attempts) == ("sms", "sent", [{"channel": "push", "code": "UNREGISTERED"}])
    with Session(engine) as s:
        assert s.scalars(select(PushToken).where(PushToken.member_id == a)).all() == []
        assert s.get(ConsentState, (a, "push", "*")) is None    # the device is gone, not the consent


async def test_a_twilio_server_error_leaves_the_message_in_doubt_and_never_resends_it(
        workers, engine: Engine, twilio: FakeTwilio, smtp_server: Any) -> None:
    program, (a,) = bulk_members(engine, 1)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    contacts(engine, a, phone="+14155550101", consent=("sms",))
    twilio.then(status=500, code=20500)
    cid = make_campaign(engine, program, channels=["sms", "email"], template="weekend_offer")
    result, _ = await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.channel, row.status) == ("sms", "in_doubt")
    assert len(twilio.requests) == 1 and smtp_server.recipients() == []   # no blind resend, no fallback
    assert result.counts.in_doubt == 1


async def test_a_429_slows_the_campaign_down_and_the_message_still_goes_once(
        workers, engine: Engine, twilio: FakeTwilio) -> None:
    program, ids = bulk_members(engine, 3)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio, rate_per_s=2)   # slots 0.5 s apart: the 429 is back before the next one
    for i, mid in enumerate(ids):
        contacts(engine, mid, phone=f"+1415555010{i}", consent=("sms",))
    twilio.then(status=429, code=20429, headers={"Retry-After": "1"})
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    result, _ = await run(workers, engine, cid)
    assert {r.status for r in deliveries(engine, cid)} == {"sent"} and result.counts.sent == 3
    accepted = form_to(twilio)[1:]
    assert sorted(accepted) == sorted(f"+1415555010{i}" for i in range(3))   # the refused one went later, once
    gap = twilio.times[1] - twilio.times[0]
    assert gap >= 0.9, f"the account was not paused after the 429 (next request after {gap:.2f} s)"


async def test_sms_costs_its_segments_against_the_budget(workers, engine: Engine, twilio: FakeTwilio) -> None:
    program, (a,) = bulk_members(engine, 1)
    set_program_settings(engine, program, {**NO_QUIET, "unit_costs": {"sms": "0.05"}})
    use_twilio(engine, twilio)
    contacts(engine, a, phone="+14155550101", consent=("sms",))
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    from channels.sms_text import sms_segments

    segments = sms_segments(twilio.requests[0].form["Body"]).segments
    assert segments >= 1 and str(row.cost) in (f"{0.05 * segments:.4f}", f"{0.05 * segments:.2f}")


async def test_a_channel_without_an_account_records_the_exact_request_in_the_sandbox(
        workers, engine: Engine) -> None:
    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    contacts(engine, a, phone="+14155550101", consent=("whatsapp",))
    with session_scope(engine) as s:
        s.get(Member, a).whatsapp_inbound_at = None
    cid = make_campaign(engine, program, channels=["whatsapp"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.status, row.reason) == ("sent", "sandbox")
    with Session(engine) as s:
        [rec] = s.scalars(select(SandboxMessage)).all()
    assert (rec.channel, rec.provider, rec.delivery_id, rec.program_id) == ("whatsapp", "twilio", row.id, program)
    assert rec.url.endswith("/Messages.json") and rec.headers["Authorization"] == "[redacted]"
    assert "ContentSid=HX" in rec.body and "whatsapp%3A%2B14155550101" in rec.body   # outside the 24 h window
    variables = json.loads(dict(p.split("=", 1) for p in rec.body.split("&"))["ContentVariables"]
                           .replace("%7B", "{").replace("%7D", "}").replace("%22", '"').replace("%3A", ":")
                           .replace("%2C", ","))
    assert variables == {"1": "Name1", "2": "500"}


async def test_receipt_and_inbox_messages_wait_for_the_till_and_the_app(workers, engine: Engine) -> None:
    program, (a, b) = bulk_members(engine, 2, consent=lambda i: False)
    contacts(engine, a, card="CARD-0001")
    cid = make_campaign(engine, program, channels=["receipt", "inbox"], template="weekend_offer",
                        end_at="2027-01-10T00:00:00+00:00")
    await run(workers, engine, cid)
    rows = by_member(deliveries(engine, cid))
    assert (rows[a].channel, rows[a].status) == ("receipt", "sent")   # has a card: the till prints it
    assert (rows[b].channel, rows[b].status) == ("inbox", "sent")     # no card: the app's inbox
    with Session(engine) as s:
        stored = {m.member_id: m for m in s.scalars(select(StoredMessage))}
    assert stored[a].coupon == "WEEKEND500" and stored[a].state == "pending"
    assert stored[b].title == "500 bonus points this weekend"
    assert stored[a].expires_at is not None and stored[a].expires_at.year == 2027


async def test_a_member_who_revoked_the_topic_on_paper_channels_gets_nothing(workers, engine: Engine) -> None:
    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    contacts(engine, a, card="CARD-0002")
    with session_scope(engine) as s:
        ledger.record(session=s, program_id=program, acts=[ledger.ConsentAct(
            member_id=a, channel=ChannelName.receipt, topic="promotions", action=ConsentAction.revoked,
            source=ConsentSource.web)])
    cid = make_campaign(engine, program, channels=["receipt"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.status, row.reason) == ("suppressed", "revoked")


# --- a rate limit shared by workers -----------------------------------------------------------------

class CountingActivities(DeliveryActivities):
    """Counts the pages each worker delivered (to show both took part)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pages = 0

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        self.pages += 1
        return await super().deliver_batch(inp)


async def test_a_provider_rate_limit_holds_within_10_percent_over_10_s_with_two_workers(
        workers, engine: Engine, db_url: str, twilio: FakeTwilio) -> None:
    rate, n = 20.0, 260
    program, ids = bulk_members(engine, n, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio, rate_per_s=rate)
    with session_scope(engine) as s:
        for i, mid in enumerate(ids):
            s.get(Member, mid).phone = f"+1415556{i:04d}"
        ledger.record(session=s, program_id=program, acts=[ledger.ConsentAct(
            member_id=mid, channel="sms", topic="promotions", action=ConsentAction.granted,
            source=ConsentSource.import_) for mid in ids])
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    async with workers(engine=engine, url=db_url, n=2, cls=CountingActivities, max_concurrent_activities=2) as rig:
        handle = await rig.start(cid, page_size=20, concurrency=4)
        await rig.finish(handle)
    times = sorted(twilio.times)
    assert len(times) == n and len(set(form_to(twilio))) == n          # everyone once
    first = times[0]
    in_10s = sum(1 for t in times if t < first + 10.0)
    assert 0.9 * rate * 10 <= in_10s <= 1.1 * rate * 10, f"{in_10s} messages in the first 10 s at {rate}/s"
    # every 10 s window, wherever it starts (the requests reach the fake with the sender's jitter: a second
    # may see a few more when a late one catches up, ten seconds may not)
    busiest = max(sum(1 for t in times if s <= t < s + 10.0) for s in times)
    assert busiest <= 1.1 * rate * 10, f"{busiest} messages within 10 s at {rate}/s"
    assert all(a.pages > 0 for a in rig.acts), [a.pages for a in rig.acts]


# --- Telegram ---------------------------------------------------------------------------------------

@pytest.fixture
def telegram() -> Iterator[Any]:
    from tests.channels.fake_telegram import running_fake_telegram

    with running_fake_telegram() as fake:
        yield fake


BOT_TOKEN = "123456789:AAE" + "x" * 32


def use_telegram(engine: Engine, fake: Any) -> None:
    set_account(engine=engine, program="shop", channel="telegram", provider="telegram",
                config={"bot_token": BOT_TOKEN, "bot_username": "clarion_test_bot",
                        "webhook_secret": "s" * 32, "base_url": fake.base_url, "timeout_s": 2.0})


async def test_telegram_gets_the_html_message_with_its_link_button(workers, engine: Engine, telegram: Any) -> None:
    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    use_telegram(engine, telegram)
    with session_scope(engine) as s:
        s.get(Member, a).telegram_chat_id = "5550001"
    contacts(engine, a, consent=("telegram",))
    cid = make_campaign(engine, program, channels=["telegram", "email"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.channel, row.status, row.provider_message_id) == ("telegram", "sent", "5550001:101")
    [req] = telegram.calls("sendMessage")
    assert req.token == BOT_TOKEN and str(req.params["chat_id"]) == "5550001"
    assert req.params["parse_mode"] == "HTML" and req.params["text"].startswith("<b>Name1, 500 bonus points")
    [[button]] = req.json_param("reply_markup")["inline_keyboard"]
    assert button["text"] == "See the offer"
    assert tracked_target(button["url"]) == "https://shop.clarion.example/weekend"


async def test_a_member_who_blocked_the_bot_is_cut_off_on_telegram_and_gets_email(
        workers, engine: Engine, telegram: Any, smtp_server: Any) -> None:
    program, (a,) = bulk_members(engine, 1)
    set_program_settings(engine, program, NO_QUIET)
    use_telegram(engine, telegram)
    with session_scope(engine) as s:
        s.get(Member, a).telegram_chat_id = "5550002"
    contacts(engine, a, consent=("telegram",))
    telegram.fail(403, "Forbidden: bot was blocked by the user")
    cid = make_campaign(engine, program, channels=["telegram", "email"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.channel, row.status, row.attempts) == ("email", "sent", [{"channel": "telegram", "code": "forbidden"}])
    with Session(engine) as s:
        state = s.get(ConsentState, (a, "telegram", "*"))
        from storage.tables import ConsentRecord
        [rec] = s.scalars(select(ConsentRecord).where(ConsentRecord.channel == "telegram",
                                                      ConsentRecord.topic == "*")).all()
    assert state.status == "suppressed" and rec.source == "telegram"
    assert smtp_server.recipients() == ["m1@test.example"] and len(telegram.calls("sendMessage")) == 1


async def test_without_a_bot_telegram_goes_to_the_sandbox(workers, engine: Engine) -> None:
    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    with session_scope(engine) as s:
        s.get(Member, a).telegram_chat_id = "5550003"
    contacts(engine, a, consent=("telegram",))
    cid = make_campaign(engine, program, channels=["telegram"], template="weekend_offer")
    await run(workers, engine, cid)
    [row] = deliveries(engine, cid)
    assert (row.status, row.reason) == ("sent", "sandbox")
    with Session(engine) as s:
        [rec] = s.scalars(select(SandboxMessage)).all()
    from urllib.parse import parse_qs

    assert rec.channel == "telegram" and rec.url == "https://api.telegram.org/bot<token>/sendMessage"
    form = {k: v[0] for k, v in parse_qs(rec.body).items()}
    assert form["chat_id"] == "5550003" and form["parse_mode"] == "HTML"
    assert form["text"].startswith("<b>Name1, 500 bonus points this weekend</b>")


async def test_no_delivery_report_within_the_wait_sends_the_follow_up_on_the_next_channel(
        workers, engine: Engine, twilio: FakeTwilio, smtp_server: Any) -> None:
    """Optional fallback by time: WhatsApp first; members whose message got no delivery report within 2 h
    get the email step; those Twilio reported delivered get nothing more."""
    from analytics.tracking import apply_status
    from channels.base import StatusEvent

    program, (a, b) = bulk_members(engine, 2)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio, channel="whatsapp")
    for i, mid in enumerate((a, b)):
        contacts(engine, mid, phone=f"+1415555020{i}", consent=("whatsapp",))
    with session_scope(engine) as s:
        for mid in (a, b):
            s.get(Member, mid).whatsapp_inbound_at = utcnow()
    cid = make_campaign(engine, program, channels=["whatsapp"], template="weekend_offer", follow_ups=[
        {"step": "by-email", "after": "2h", "to": "not_delivered", "channels": ["email"]}])
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=50, steps=[StepPlan("main"), StepPlan("by-email", 7200.0)])
        await wait_for(lambda: len(twilio.requests) == 2, what="two WhatsApp messages")
        # Twilio's message ids are on the rows once the chunk's outcomes are recorded, a moment after the
        # requests: a report sent with no id (read too early) matched nothing and the member got the follow-up
        await wait_for(lambda: all(r.provider_message_id for r in deliveries(engine, cid, step="main")),
                       what="the WhatsApp messages' ids recorded")
        first = next(r for r in deliveries(engine, cid, step="main") if r.member_id == a)
        with session_scope(engine) as s:
            apply_status(session=s, event=StatusEvent(first.provider_message_id, "delivered", event_id="e1"),
                         channels={"whatsapp"}, program_ids={program})
        await handle.result()   # the server skips the 2 h wait
    follow = by_member(deliveries(engine, cid, step="by-email"))
    assert set(follow) == {b} and (follow[b].channel, follow[b].status) == ("email", "sent")
    assert smtp_server.recipients() == ["m2@test.example"]


async def test_a_page_that_runs_out_of_time_at_a_slow_rate_leaves_the_rest_to_the_next_round(
        workers, engine: Engine, twilio: FakeTwilio) -> None:
    """At 5 messages/s a page of 12 does not fit a 1 s time budget: the page stops claiming, the rest stays
    planned (paced) and the workflow sends it afterwards; nobody twice, nothing in doubt."""
    program, ids = bulk_members(engine, 12, consent=lambda i: False)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio, rate_per_s=5)
    for i, mid in enumerate(ids):
        contacts(engine, mid, phone=f"+141555503{i:02d}", consent=("sms",))
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    async with workers(engine=engine, chunk=3, cls=CountingActivities) as rig:
        rig.acts[0]._time_budget_s = 1.0
        handle = await rig.start(cid, page_size=12, concurrency=1)
        result = await rig.finish(handle)
    assert rig.acts[0].pages >= 2        # the one page of 12 did not fit: the rest went in later rounds
    rows = deliveries(engine, cid)
    assert {r.status for r in rows} == {"sent"} and result.counts.sent == 12 and result.counts.in_doubt == 0
    assert sorted(form_to(twilio)) == sorted({r.form["To"] for r in twilio.requests})   # each number once
    assert len(twilio.requests) == 12


async def test_claimed_messages_never_wait_for_a_rate_slot_past_the_pages_deadline(
        workers, engine: Engine, twilio: FakeTwilio) -> None:
    """A chunk of 8 claimed at 2 messages/s needs 4 s; with a 1 s time budget (deadline 1.5 s) the ones whose
    slot comes later go back to planned (paced) unsent, and the next rounds send them: all once, none in
    doubt, the budget charged once per message."""
    program, ids = bulk_members(engine, 8, consent=lambda i: False)
    set_program_settings(engine, program, {**NO_QUIET, "unit_costs": {"sms": "0.05"}})
    use_twilio(engine, twilio, rate_per_s=2)
    for i, mid in enumerate(ids):
        contacts(engine, mid, phone=f"+141555504{i:02d}", consent=("sms",))
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    async with workers(engine=engine, chunk=8, cls=CountingActivities) as rig:
        rig.acts[0]._time_budget_s = 1.0
        handle = await rig.start(cid, page_size=8, concurrency=1)
        result = await rig.finish(handle)
    rows = deliveries(engine, cid)
    assert {r.status for r in rows} == {"sent"} and result.counts.in_doubt == 0 and result.counts.sent == 8
    assert len(twilio.requests) == 8 and len({r.form["To"] for r in twilio.requests}) == 8
    assert rig.acts[0].pages >= 2
    from tests.workflows.conftest import campaign_row
    assert campaign_row(engine, cid).budget_spent == sum(r.cost for r in rows)


async def test_a_bot_token_telegram_refuses_makes_messages_wait_instead_of_falling_back(
        workers, engine: Engine, telegram: Any, smtp_server: Any) -> None:
    """A dead bot token is the program's configuration, not the member's: the message is not moved to
    email nor failed; it waits, and goes out once the token is fixed."""
    program, (a,) = bulk_members(engine, 1)
    set_program_settings(engine, program, NO_QUIET)
    use_telegram(engine, telegram)
    with session_scope(engine) as s:
        s.get(Member, a).telegram_chat_id = "5550009"
    contacts(engine, a, consent=("telegram",))
    telegram.fail(401, "Unauthorized")
    cid = make_campaign(engine, program, channels=["telegram", "email"], template="weekend_offer")
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=50)
        await wait_for(lambda: len(telegram.calls("sendMessage")) >= 1, what="the refused send")
        await asyncio.sleep(0.3)
        [row] = deliveries(engine, cid)
        assert (row.status, row.channel, row.reason) == ("planned", "telegram", "provider_account")
        result = await handle.result()   # the page's retry (after 60 s of server time) goes through
    [row] = deliveries(engine, cid)
    assert (row.status, row.channel, row.attempts) == ("sent", "telegram", None)
    assert smtp_server.recipients() == [] and result.counts.sent == 1


async def test_without_the_sandbox_a_channel_with_no_account_is_not_available(workers, engine: Engine,
                                                                              smtp_server: Any) -> None:
    """Against an external Temporal (production) the sandbox is off: nothing is 'sent' into it; members go
    to their next channel, or are suppressed with reason no_account."""
    program, (a, b) = bulk_members(engine, 2, consent=lambda i: i == 1)
    set_program_settings(engine, program, NO_QUIET)
    contacts(engine, a, phone="+14155550601", consent=("whatsapp",))
    contacts(engine, b, phone="+14155550602", consent=("whatsapp",))
    cid = make_campaign(engine, program, channels=["whatsapp", "email"], template="weekend_offer")
    async with workers(engine=engine) as rig:
        rig.acts[0]._registry._sandbox = False
        result = await rig.finish(await rig.start(cid, page_size=50))
    rows = by_member(deliveries(engine, cid))
    assert (rows[a].channel, rows[a].status) == ("email", "sent")
    assert (rows[b].status, rows[b].reason) == ("suppressed", "no_account")
    with Session(engine) as s:
        assert s.scalars(select(SandboxMessage)).all() == []
    assert result.counts.sent == 1


async def test_the_confirmation_sender_sends_a_requested_double_opt_in_when_woken(workers, engine: Engine,
                                                                                  smtp_server: Any) -> None:
    from members.profile import ConsentGrant, MemberIn
    from members.service import upsert_members
    from workflows.confirmations import ConfirmationSender
    from workflows.contracts import ConfirmationSenderInput

    program, (a,) = bulk_members(engine, 1, consent=lambda i: False)
    upsert_members(engine=engine, program_id=program, items=[(None, "M000001", MemberIn(
        email="m1@test.example", locale="en", consents=[ConsentGrant(channel="email", topic="news",
                                                                     action="requested")]))])
    async with workers(engine=engine) as rig:
        handle = await rig.client.start_workflow(
            ConfirmationSender.run, ConfirmationSenderInput(poll_seconds=3600), id=f"confirm-{program}-test",
            task_queue=rig.task_queue, start_signal="wake")
        await wait_for(lambda: smtp_server.recipients() == ["m1@test.example"], what="the confirmation email")
        assert "Please confirm your subscription" in smtp_server.messages[0].message["Subject"]
        await handle.signal(ConfirmationSender.wake)        # woken again: nothing pending, nothing resent
        await asyncio.sleep(0.5)
        assert len(smtp_server.messages) == 1
        await handle.terminate()


class RevokeAfterClaim(DeliveryActivities):
    """The last member of the first chunk unsubscribes right after the chunk was claimed (while its messages
    wait for their rate slots)."""

    revoke_member: int = 0

    def _claim(self, ctx, items, now, tally):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
        claimed = super()._claim(ctx, items, now, tally)
        if any(t.member_id == self.revoke_member for t, _, _ in claimed):
            with session_scope(self._engine) as s:
                ledger.record(session=s, program_id=ctx.program_id, acts=[ledger.ConsentAct(
                    member_id=self.revoke_member, channel="sms", topic="*", action=ConsentAction.revoked,
                    source=ConsentSource.sms_keyword)])
        return claimed


async def test_a_member_who_unsubscribes_while_a_paced_chunk_waits_gets_nothing_after(
        workers, engine: Engine, twilio: FakeTwilio) -> None:
    program, ids = bulk_members(engine, 4, consent=lambda i: False)
    set_program_settings(engine, program, {**NO_QUIET, "unit_costs": {"sms": "0.05"}})
    use_twilio(engine, twilio, rate_per_s=2)
    for i, mid in enumerate(ids):
        contacts(engine, mid, phone=f"+141555507{i:02d}", consent=("sms",))
    RevokeAfterClaim.revoke_member = ids[-1]
    cid = make_campaign(engine, program, channels=["sms"], template="weekend_offer")
    async with workers(engine=engine, chunk=4, cls=RevokeAfterClaim) as rig:
        result = await rig.finish(await rig.start(cid, page_size=4, concurrency=1))
    rows = by_member(deliveries(engine, cid))
    assert (rows[ids[-1]].status, rows[ids[-1]].reason, rows[ids[-1]].cost) == ("suppressed", "revoked", None)
    assert sorted(form_to(twilio)) == [f"+141555507{i:02d}" for i in range(3)]
    from tests.workflows.conftest import campaign_row
    assert campaign_row(engine, cid).budget_spent == sum(r.cost for r in rows.values() if r.cost)
    assert result.counts.sent == 3 and result.counts.suppressed == 1
