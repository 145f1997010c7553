"""Providers that throttle, fail, time out or refuse one member, in the middle of a campaign.

The real BroadcastCampaign and activities on the time-skipping server, the real client libraries (twilio,
python-telegram-bot, pyfcm) over real sockets to the fake providers of tests/channels on 127.0.0.1, each
scripted per recipient (so concurrent sends cannot swap whose fault is whose). Each fault has the outcome
the README's channel table documents, and no member's fault fails the campaign:

| provider answer                         | outcome                                                    |
| --------------------------------------- | ---------------------------------------------------------- |
| Twilio 429 / 20429 (Retry-After)        | slowed down: the account waits, the message goes once      |
| Twilio 5xx, a read timeout              | in doubt: never resent, not moved to another channel       |
| Telegram RetryAfter (flood control)     | honoured: sent once after the wait                         |
| Telegram 403 (bot blocked)              | Telegram cut off for the member, next channel              |
| FCM UNAVAILABLE / QUOTA_EXCEEDED + Retry-After | retried after Retry-After, sent once                |
| FCM INTERNAL without Retry-After        | retried (the page, later), sent once                       |
| FCM UNREGISTERED                        | the token deleted, next channel                            |

One fault at a time, with the adapter's mapping alone, is tested in tests/channels/test_*.py; single-fault
campaigns in tests/workflows/test_channels.py (a 429 that slows the campaign down, a Twilio 500 left in
doubt, an unregistered token, a blocked bot).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.account_store import set_account
from storage.db import session_scope
from storage.tables import ConsentState, Member, PushToken
from tests.channels.fake_fcm import FakeFcm
from tests.channels.fake_telegram import FakeTelegram, running_fake_telegram
from tests.channels.fake_twilio import FakeTwilio
from tests.factories import make_campaign
from tests.workflows.conftest import (
    bulk_members,
    by_member,
    campaign_row,
    deliveries,
    set_program_settings,
)
from tests.workflows.test_channels import NO_QUIET, SID, TOKEN, contacts
from workflows.contracts import Progress, RunState

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOT_TOKEN = "123456789:AAF" + "f" * 32


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with running_fake_telegram() as fake:
        yield fake


async def run(workers: Any, engine: Engine, cid: int) -> Progress:
    async with workers(engine=engine) as rig:
        result = await rig.finish(await rig.start(cid, page_size=50))
    assert result.state == RunState.completed and campaign_row(engine, cid).status == "completed"
    c = result.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience, c
    return result


async def test_twilio_429_slows_down_while_5xx_and_timeouts_stay_in_doubt_and_the_campaign_completes(
        workers: Any, engine: Engine, twilio: FakeTwilio, smtp_server: Any) -> None:
    program, ids = bulk_members(engine, 5)                  # all have email too: in doubt must not fall back
    set_program_settings(engine, program, NO_QUIET)
    set_account(engine=engine, program="shop", channel="sms", provider="twilio", rate_per_s=20,
                config={"account_sid": SID, "auth_token": TOKEN, "sender": "+15005550006",
                        "base_url": twilio.url, "timeout_s": 1.0})
    phones = [f"+1415555080{i}" for i in range(5)]
    for mid, phone in zip(ids, phones, strict=True):
        contacts(engine, mid, phone=phone, consent=("sms",))
    twilio.then_to(phones[0], status=429, code=20429, headers={"Retry-After": "1"})
    twilio.then_to(phones[1], status=500, code=20500)
    twilio.then_to(phones[2], status=503, code=20503)
    twilio.then_to(phones[3], delay=2.5)                     # answers after the client's 1 s read timeout
    cid = make_campaign(engine, program, channels=["sms", "email"], template="weekend_offer")
    result = await run(workers, engine, cid)

    asked = Counter(r.form["To"] for r in twilio.requests)
    assert asked == {phones[0]: 2, phones[1]: 1, phones[2]: 1, phones[3]: 1, phones[4]: 1}
    first, second = [t for r, t in zip(twilio.requests, twilio.times, strict=True) if r.form["To"] == phones[0]]
    assert second - first >= 0.9                             # Retry-After honoured
    rows = by_member(deliveries(engine, cid))
    outcome = {phones[ids.index(m)]: (r.channel, r.status) for m, r in rows.items()}
    assert outcome == {phones[0]: ("sms", "sent"), phones[1]: ("sms", "in_doubt"), phones[2]: ("sms", "in_doubt"),
                       phones[3]: ("sms", "in_doubt"), phones[4]: ("sms", "sent")}
    assert smtp_server.recipients() == []                    # no fallback for a message that may have gone
    assert (result.counts.sent, result.counts.in_doubt) == (2, 3)


# PTB 22.2+ warns inside RetryAfter.__init__ that retry_after will become a timedelta (the adapter reads both)
@pytest.mark.filterwarnings("ignore:.*`retry_after` will be of type:telegram.warnings.PTBDeprecationWarning")
async def test_telegram_flood_control_is_waited_out_and_a_blocked_bot_moves_the_member_to_email(
        workers: Any, engine: Engine, telegram: FakeTelegram, smtp_server: Any) -> None:
    program, ids = bulk_members(engine, 3)
    set_program_settings(engine, program, NO_QUIET)
    set_account(engine=engine, program="shop", channel="telegram", provider="telegram",
                config={"bot_token": BOT_TOKEN, "bot_username": "clarion_test_bot", "webhook_secret": "s" * 32,
                        "base_url": telegram.base_url, "timeout_s": 2.0})
    chats = ["6660001", "6660002", "6660003"]
    with session_scope(engine) as s:
        for mid, chat in zip(ids, chats, strict=True):
            s.get(Member, mid).telegram_chat_id = chat
    for mid in ids:
        contacts(engine, mid, consent=("telegram",))
    telegram.then_for(chats[0], status=429, description="Too Many Requests: retry after 1",
                      parameters={"retry_after": 1})
    telegram.then_for(chats[1], status=403, description="Forbidden: bot was blocked by the user")
    cid = make_campaign(engine, program, channels=["telegram", "email"], template="weekend_offer")
    result = await run(workers, engine, cid)

    asked = Counter(str(r.params["chat_id"]) for r in telegram.calls("sendMessage"))
    assert asked == {chats[0]: 2, chats[1]: 1, chats[2]: 1}
    rows = by_member(deliveries(engine, cid))
    assert (rows[ids[0]].channel, rows[ids[0]].status, rows[ids[0]].attempts) == ("telegram", "sent", None)
    assert (rows[ids[1]].channel, rows[ids[1]].status) == ("email", "sent")
    assert rows[ids[1]].attempts == [{"channel": "telegram", "code": "forbidden"}]
    assert (rows[ids[2]].channel, rows[ids[2]].status) == ("telegram", "sent")
    with Session(engine) as s:
        assert s.get(ConsentState, (ids[1], "telegram", "*")).status == "suppressed"
    assert smtp_server.recipients() == ["m2@test.example"]
    assert result.counts.sent == 3


async def test_fcm_unavailable_and_quota_are_retried_after_retry_after_and_a_dead_token_is_dropped(
        workers: Any, engine: Engine, fcm: FakeFcm, smtp_server: Any, service_account_key: str) -> None:
    program, ids = bulk_members(engine, 5)
    set_program_settings(engine, program, NO_QUIET)
    info = {"type": "service_account", "project_id": "shop-app", "private_key_id": "k1",
            "private_key": service_account_key, "client_email": "push@shop-app.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"{fcm.url}/token"}
    set_account(engine=engine, program="shop", channel="push", provider="fcm",
                config={"project_id": "shop-app", "service_account_info": info, "base_url": fcm.url,
                        "timeout_s": 2.0})
    tokens = [f"device-{i}-" + "z" * 24 for i in range(5)]
    for mid, token in zip(ids, tokens, strict=True):
        contacts(engine, mid, push=[token], consent=("push",))
    fcm.then_for(tokens[0], error="UNAVAILABLE", headers={"Retry-After": "1"})
    fcm.then_for(tokens[1], error="UNREGISTERED")
    fcm.then_for(tokens[2], error="INTERNAL")                 # no Retry-After: the page is retried later
    fcm.then_for(tokens[3], error="QUOTA_EXCEEDED", headers={"Retry-After": "1"})
    cid = make_campaign(engine, program, channels=["push", "email"], template="weekend_offer")
    result = await run(workers, engine, cid)

    sends = [r.json["message"]["token"] for r in fcm.requests if r.path.endswith("messages:send")]
    assert Counter(sends) == {tokens[0]: 2, tokens[1]: 1, tokens[2]: 2, tokens[3]: 2, tokens[4]: 1}
    rows = by_member(deliveries(engine, cid))
    for i in (0, 2, 3, 4):
        assert (rows[ids[i]].channel, rows[ids[i]].status) == ("push", "sent"), i
    assert (rows[ids[1]].channel, rows[ids[1]].status) == ("email", "sent")
    assert rows[ids[1]].attempts == [{"channel": "push", "code": "UNREGISTERED"}]
    with Session(engine) as s:
        left = set(s.scalars(select(PushToken.token)))
    assert left == set(tokens) - {tokens[1]}                  # the dead token is gone, the others stay
    assert smtp_server.recipients() == ["m2@test.example"]
    assert result.counts.sent + result.counts.already_done == 5 and result.counts.in_doubt == 0
