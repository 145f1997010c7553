"""The Telegram channel: the real python-telegram-bot over real sockets to a fake Bot API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
from telegram.error import NetworkError, TimedOut

from channels.base import (
    Button,
    InboundEvent,
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    RecordedRequest,
    SendReceipt,
    TransientChannelError,
    current_delivery,
)
from channels.telegram import (
    RATE_PER_BOT,
    TelegramChannel,
    TelegramConfig,
    deep_link,
    map_telegram_error,
    parse_update,
    set_webhook,
    verify_secret,
)
from tests.channels.fake_telegram import FakeTelegram, refusing_base_url, running_fake_telegram

TOKEN = "123456789:AAF-test_token-0123456789abcdefghij"
BOT = "clarion_test_bot"
CHAT = "381234567"


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with running_fake_telegram(token=TOKEN) as fake:
        yield fake


def config(base_url: str, **kw: object) -> TelegramConfig:
    values: dict[str, object] = dict(bot_token=TOKEN, bot_username=BOT, base_url=base_url, timeout=2.0)
    values.update(kw)
    return TelegramConfig(**values)  # type: ignore[arg-type]


def channel(base_url: str, **kw: object) -> TelegramChannel:
    return TelegramChannel(config(base_url, **kw))


def message(text: str = "<b>500 points</b> are waiting for you", to: str = CHAT, delivery_id: int = 1,
            buttons: tuple[Button, ...] = ()) -> OutboundMessage:
    return OutboundMessage(delivery_id=delivery_id, to=to, text=text, buttons=buttons)


async def send_expecting(fake_url: str, exc_type: type[Exception], **kw: object) -> Exception:
    ch = channel(fake_url, **kw)
    try:
        with pytest.raises(exc_type) as info:
            await ch.send(message())
    finally:
        await ch.aclose()
    return info.value


# --- sending --------------------------------------------------------------------------------------


async def test_telegram_gets_the_html_text_and_a_url_button_per_row(telegram):
    ch = channel(telegram.base_url)
    receipt = await ch.send(message("<b>500 points</b> &amp; a gift", buttons=(
        Button("Open the app", "https://t.clarion.example/c/abc"),
        Button("Stores", "https://t.clarion.example/c/def"))))
    await ch.aclose()
    [req] = telegram.requests
    assert (req.api_method, req.token, req.http_method) == ("sendMessage", TOKEN, "POST")
    assert req.params["chat_id"] == CHAT and req.params["text"] == "<b>500 points</b> &amp; a gift"
    assert req.params["parse_mode"] == "HTML"
    assert req.json_param("reply_markup") == {"inline_keyboard": [
        [{"text": "Open the app", "url": "https://t.clarion.example/c/abc"}],
        [{"text": "Stores", "url": "https://t.clarion.example/c/def"}]]}
    assert req.json_param("link_preview_options") == {"is_disabled": True}  # a preview fetch is not a click
    assert receipt == SendReceipt(provider_message_id=f"{CHAT}:101")


async def test_message_without_buttons_has_no_keyboard(telegram):
    ch = channel(telegram.base_url)
    await ch.send(message("plain"))
    await ch.aclose()
    assert "reply_markup" not in telegram.requests[0].params


async def test_group_chat_id_is_negative_and_goes_as_is(telegram):
    ch = channel(telegram.base_url)
    receipt = await ch.send(message(to="-1001234567890"))
    await ch.aclose()
    assert telegram.requests[0].params["chat_id"] == "-1001234567890"
    assert receipt.provider_message_id == "-1001234567890:101"


async def test_sends_never_call_get_me(telegram):
    ch = channel(telegram.base_url)
    first = await ch.send(message("one"))
    second = await ch.send(message("two"))
    await ch.aclose()
    assert [r.api_method for r in telegram.requests] == ["sendMessage", "sendMessage"]
    assert (first.provider_message_id, second.provider_message_id) == (f"{CHAT}:101", f"{CHAT}:102")


async def test_channel_sends_again_after_aclose(telegram):
    ch = channel(telegram.base_url)
    await ch.send(message("before"))
    await ch.aclose()
    await ch.send(message("after"))
    await ch.aclose()
    assert [r.params["text"] for r in telegram.requests] == ["before", "after"]


@pytest.mark.parametrize("to", ["@clarion_news", "12ab", "", "+79161234567", "1.5"])
async def test_chat_id_that_is_not_an_integer_is_permanent_and_nothing_is_sent(telegram, to):
    ch = channel(telegram.base_url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(message(to=to))
    await ch.aclose()
    assert info.value.code == "invalid_chat_id" and not info.value.revoke_address
    assert telegram.requests == []


async def test_concurrent_sends_each_get_their_own_receipt(telegram):
    ch = channel(telegram.base_url)
    receipts = await asyncio.gather(*(ch.send(message(f"hello {i}", delivery_id=i)) for i in range(8)))
    await ch.aclose()
    assert len({r.provider_message_id for r in receipts}) == 8
    assert sorted(r.params["text"] for r in telegram.requests) == sorted(f"hello {i}" for i in range(8))


async def test_the_bot_token_never_reaches_the_logs(telegram, caplog):
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="telegram")
    ch = channel(telegram.base_url)
    await ch.send(message())
    await ch.aclose()
    assert "/bot<token>/sendMessage" in caplog.text  # httpx's INFO line, redacted
    assert TOKEN not in caplog.text


# --- Telegram's error answers: each sent exactly once ----------------------------------------------


@pytest.mark.parametrize("description", [
    "Forbidden: bot was blocked by the user", "Forbidden: user is deactivated",
    "Forbidden: bot was kicked from the group chat", "Forbidden: bot can't initiate conversation with a user"])
async def test_forbidden_is_permanent_and_revokes_the_chat(telegram, description):
    telegram.fail(403, description)
    error = await send_expecting(telegram.base_url, PermanentChannelError)
    assert error.code == "forbidden" and error.revoke_address
    assert type(error.__cause__).__name__ == "Forbidden"
    assert len(telegram.requests) == 1


async def test_chat_not_found_is_permanent_and_revokes_the_chat(telegram):
    telegram.fail(400, "Bad Request: chat not found")
    error = await send_expecting(telegram.base_url, PermanentChannelError)
    assert error.code == "chat_not_found" and error.revoke_address
    assert len(telegram.requests) == 1


@pytest.mark.parametrize("description", [
    "Bad Request: can't parse entities: Unsupported start tag \"blink\" at byte offset 0",
    "Bad Request: message is too long", "Bad Request: BUTTON_URL_INVALID"])
async def test_other_bad_requests_are_permanent_without_revoking(telegram, description):
    telegram.fail(400, description)
    error = await send_expecting(telegram.base_url, PermanentChannelError)
    assert error.code == "bad_request" and not error.revoke_address
    assert len(telegram.requests) == 1


async def test_migrated_group_is_permanent_and_revokes_the_old_chat_id(telegram):
    telegram.fail(400, "Bad Request: group chat was upgraded to a supergroup chat",
                  migrate_to_chat_id=-1009876543210)
    error = await send_expecting(telegram.base_url, PermanentChannelError)
    assert error.code == "chat_migrated" and error.revoke_address


# PTB 22.2+ warns inside RetryAfter.__init__ that retry_after will become a timedelta; we read both forms
ptb_retry_after_deprecation = pytest.mark.filterwarnings(
    "ignore:.*`retry_after` will be of type:telegram.warnings.PTBDeprecationWarning")


@ptb_retry_after_deprecation
async def test_flood_control_is_rate_limited_with_its_seconds(telegram):
    telegram.fail(429, "Too Many Requests: retry after 7", retry_after=7)
    error = await send_expecting(telegram.base_url, RateLimited)
    assert error.retry_after == 7.0 and isinstance(error.retry_after, float) and error.code == "retry_after"
    assert len(telegram.requests) == 1


async def test_flood_control_seconds_when_ptb_gives_a_timedelta(telegram, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    telegram.fail(429, "Too Many Requests: retry after 35", retry_after=35)
    error = await send_expecting(telegram.base_url, RateLimited)
    assert error.retry_after == 35.0


async def test_rejected_token_is_the_accounts_problem_not_the_members(telegram):
    error = await send_expecting(telegram.base_url, ProviderAccountError, bot_token="999:not-our-bot")
    assert telegram.requests[0].token == "999:not-our-bot"  # the fake answered 401 Unauthorized
    assert error.code == "invalid_token" and isinstance(error, TransientChannelError)
    assert "999:not-our-bot" not in str(error)


@pytest.mark.parametrize(("status", "description"), [(500, "Internal Server Error"), (502, "Bad Gateway"),
                                                     (503, "Service Unavailable")])
async def test_server_error_is_in_doubt_and_not_resent(telegram, status, description):
    telegram.fail(status, description)
    error = await send_expecting(telegram.base_url, InDoubtChannelError)
    assert error.code == "server_error"
    assert len(telegram.requests) == 1


async def test_proxy_502_page_that_is_not_json_is_in_doubt(telegram):
    telegram.then(status=502, raw=b"<html><body>502 Bad Gateway</body></html>")
    await send_expecting(telegram.base_url, InDoubtChannelError)
    assert len(telegram.requests) == 1


@pytest.mark.parametrize("answer", [dict(body={"ok": False}), dict(result={"message_id": 5}),
                                    dict(raw=b"not json")])
async def test_a_success_we_cannot_read_is_in_doubt(telegram, answer):
    telegram.then(**answer)
    error = await send_expecting(telegram.base_url, InDoubtChannelError)
    assert error.code == "bad_answer"
    assert len(telegram.requests) == 1


# --- no answer ------------------------------------------------------------------------------------


async def test_hang_up_after_the_request_is_in_doubt_and_not_resent(telegram):
    telegram.then(hang_up=True)
    error = await send_expecting(telegram.base_url, InDoubtChannelError)
    assert error.code == "no_answer" and isinstance(error.__cause__.__cause__, httpx.RemoteProtocolError)
    assert len(telegram.requests) == 1 and telegram.requests[0].params["chat_id"] == CHAT


async def test_read_timeout_is_in_doubt_and_not_resent(telegram):
    telegram.then(delay=1.0)
    error = await send_expecting(telegram.base_url, InDoubtChannelError, timeout=0.3)
    assert error.code == "timed_out" and isinstance(error.__cause__, TimedOut)
    assert len(telegram.requests) == 1


async def test_refused_connection_is_transient():
    error = await send_expecting(refusing_base_url(), TransientChannelError)
    assert not isinstance(error, RateLimited) and error.code == "unreachable"
    assert isinstance(error.__cause__.__cause__, httpx.ConnectError)


def _ptb_error_from(cause: Exception, ptb_error: NetworkError) -> NetworkError:
    """A PTB error raised ``from`` an httpx error, as HTTPXRequest.do_request raises it."""
    try:
        try:
            raise cause
        except httpx.HTTPError as exc:
            raise ptb_error from exc
    except NetworkError as exc:
        return exc


@pytest.mark.parametrize(("cause", "ptb_error", "expected"), [
    (httpx.ConnectTimeout("connect"), TimedOut(), TransientChannelError),
    (httpx.PoolTimeout("pool"), TimedOut("Pool timeout"), TransientChannelError),
    (httpx.ConnectError("refused"), NetworkError("httpx.ConnectError"), TransientChannelError),
    (httpx.ReadTimeout("read"), TimedOut(), InDoubtChannelError),
    (httpx.WriteTimeout("write"), TimedOut(), InDoubtChannelError),
    (httpx.ReadError("reset"), NetworkError("httpx.ReadError"), InDoubtChannelError),
    (httpx.RemoteProtocolError("closed"), NetworkError("httpx.RemoteProtocolError"), InDoubtChannelError),
])
def test_transport_failures_before_sending_are_transient_and_after_are_in_doubt(cause, ptb_error, expected):
    mapped = map_telegram_error(_ptb_error_from(cause, ptb_error))
    assert type(mapped) is expected


# --- sandbox --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[int | None, RecordedRequest]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def record(self, request: RecordedRequest) -> str:
        with self.lock:
            self.requests.append((current_delivery.get(), request))
            self.threads.add(threading.current_thread().name)
            return str(4000 + len(self.requests))


async def test_sandbox_records_the_exact_request_without_the_token_and_sends_nothing(telegram):
    recorder = Recorder()
    ch = TelegramChannel(config(telegram.base_url), sandbox_recorder=recorder)
    receipt = await ch.send(message("<i>Hi</i>", delivery_id=77, buttons=(Button("Open", "https://t.example/x"),)))
    await ch.aclose()
    assert telegram.requests == []
    assert receipt.provider_message_id == f"{CHAT}:4001"
    [(delivery, req)] = recorder.requests
    assert delivery == 77
    assert (req.channel, req.provider, req.method) == ("telegram", "telegram", "POST")
    assert req.url == f"{telegram.base_url}<token>/sendMessage"
    assert TOKEN not in req.url + req.body + json.dumps(dict(req.headers))
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.headers["user-agent"].startswith("python-telegram-bot v22")
    assert int(req.headers["content-length"]) == len(req.body.encode())
    form = {k: v[0] for k, v in parse_qs(req.body).items()}
    assert form == {"chat_id": CHAT, "text": "<i>Hi</i>", "parse_mode": "HTML",
                    "link_preview_options": '{"is_disabled": true}',
                    "reply_markup": '{"inline_keyboard": [[{"text": "Open", "url": "https://t.example/x"}]]}'}


async def test_sandbox_uses_the_production_url_by_default():
    recorder = Recorder()
    ch = TelegramChannel(TelegramConfig(bot_token=TOKEN, bot_username=BOT), sandbox_recorder=recorder)
    await ch.send(message(to="-100200300"))
    await ch.aclose()
    [(_, req)] = recorder.requests
    assert req.url == "https://api.telegram.org/bot<token>/sendMessage"


async def test_sandbox_files_concurrent_sends_under_their_deliveries_off_the_event_loop():
    recorder = Recorder()
    ch = TelegramChannel(TelegramConfig(bot_token=TOKEN, bot_username=BOT), sandbox_recorder=recorder)
    receipts = await asyncio.gather(*(ch.send(message(f"m{i}", delivery_id=i)) for i in range(1, 6)))
    await ch.aclose()
    by_delivery = {d: parse_qs(r.body)["text"][0] for d, r in recorder.requests}
    assert by_delivery == {i: f"m{i}" for i in range(1, 6)}
    assert len({r.provider_message_id for r in receipts}) == 5
    assert threading.main_thread().name not in recorder.threads
    assert current_delivery.get() is None


async def test_sandbox_with_a_recorder_id_that_is_not_a_number_still_gives_a_receipt():
    class UuidRecorder:
        def record(self, request: RecordedRequest) -> str:
            return "3f2c9e1a-sandbox"

    ch = TelegramChannel(TelegramConfig(bot_token=TOKEN, bot_username=BOT), sandbox_recorder=UuidRecorder())
    receipt = await ch.send(message())
    await ch.aclose()
    chat, _, message_id = receipt.provider_message_id.partition(":")
    assert chat == CHAT and message_id.isdigit() and int(message_id) > 0


# --- webhook --------------------------------------------------------------------------------------


async def test_set_webhook_reaches_telegram_with_the_secret_and_our_update_types(telegram):
    await set_webhook(config(telegram.base_url), "https://clarion.example/hooks/telegram", "s3cret_-Token")
    [req] = telegram.requests
    assert (req.api_method, req.token) == ("setWebhook", TOKEN)
    assert req.params["url"] == "https://clarion.example/hooks/telegram"
    assert req.params["secret_token"] == "s3cret_-Token"
    assert req.json_param("allowed_updates") == ["message", "my_chat_member"]


async def test_set_webhook_takes_the_configured_secret_and_refuses_none(telegram):
    await set_webhook(config(telegram.base_url, webhook_secret="from-config"), "https://clarion.example/h")
    assert telegram.requests[0].params["secret_token"] == "from-config"
    for bad in ("", "has space", "x" * 257):
        with pytest.raises(ValueError):
            await set_webhook(config(telegram.base_url), "https://clarion.example/h", bad)
    assert len(telegram.requests) == 1


def test_secret_header_must_match():
    assert verify_secret("s3cret_-Token", "s3cret_-Token")
    assert not verify_secret("s3cret_-token", "s3cret_-Token")
    assert not verify_secret("s3cret_-Token ", "s3cret_-Token")
    assert not verify_secret(None, "s3cret_-Token")
    assert not verify_secret("", "s3cret_-Token")
    assert not verify_secret("", "")


# --- deep links -----------------------------------------------------------------------------------


def test_deep_link_opens_the_bot_with_the_start_token():
    assert deep_link(BOT, "m42_Xy-z") == f"https://t.me/{BOT}?start=m42_Xy-z"
    assert deep_link("@" + BOT, "a" * 64) == f"https://t.me/{BOT}?start={'a' * 64}"


@pytest.mark.parametrize("token", ["", "a" * 65, "has space", "a.b", "a=b", "тест", "a+b/c"])
def test_deep_link_refuses_tokens_telegram_would_not_accept(token):
    with pytest.raises(ValueError):
        deep_link(BOT, token)


# --- inbound updates ------------------------------------------------------------------------------

USER = {"id": int(CHAT), "is_bot": False, "first_name": "Анна", "last_name": "Смирнова", "language_code": "ru"}


def text_update(text: str, update_id: int = 9001, chat: dict | None = None, kind: str = "message") -> dict:
    return {"update_id": update_id, kind: {
        "message_id": 55, "date": 1767225600, "from": USER,
        "chat": chat or {"id": int(CHAT), "type": "private", "first_name": "Анна"}, "text": text}}


def member_update(old: str, new: str) -> dict:
    bot = {"id": 777000111, "is_bot": True, "first_name": "Clarion", "username": BOT}
    update: dict = {"update_id": 9002, "my_chat_member": {
        "chat": {"id": int(CHAT), "type": "private", "first_name": "Анна"}, "from": USER, "date": 1767225600,
        "old_chat_member": {"status": old, "user": bot},
        "new_chat_member": {"status": new, "user": bot, **({"until_date": 0} if new == "kicked" else {})}}}
    if old == "kicked":
        update["my_chat_member"]["old_chat_member"]["until_date"] = 0
    return update


@pytest.mark.parametrize(("text", "kind", "token"), [
    ("/start m42_Xy-z", "start", "m42_Xy-z"),
    (f"/start@{BOT} m42_Xy-z", "start", "m42_Xy-z"),
    ("/start", "start", None),
    ("/start not a token!", "start", None),
    ("/stop", "stop", None),
    (f"/stop@{BOT}", "stop", None),
    ("/STOP", "stop", None),
    ("/help", "help", None),
    ("/balance", "reply", None),
    ("thanks, see you at the store", "reply", None),
    ("stop", "reply", None),
])
def test_message_updates_are_commands_or_replies(text, kind, token):
    assert parse_update(text_update(text)) == InboundEvent(
        address=CHAT, text=text, kind=kind, event_id="telegram:9001", token=token, profile_name="Анна Смирнова")


def test_command_for_another_bot_is_ignored_when_we_know_our_name():
    assert parse_update(text_update("/stop@other_bot"), bot_username=BOT) is None
    assert parse_update(text_update(f"/stop@{BOT.upper()}"), bot_username="@" + BOT).kind == "stop"


def test_group_message_is_addressed_to_the_group():
    event = parse_update(text_update("/stop", chat={"id": -100200300, "type": "supergroup", "title": "Club"}))
    assert event is not None and event.address == "-100200300" and event.kind == "stop"


def test_user_blocking_the_bot_is_a_stop():
    assert parse_update(member_update("member", "kicked")) == InboundEvent(
        address=CHAT, text="", kind="stop", event_id="telegram:9002", profile_name="Анна Смирнова")


def test_user_unblocking_the_bot_grants_nothing():
    assert parse_update(member_update("kicked", "member")) is None


def test_photo_with_a_caption_is_a_reply_and_a_sticker_is_a_reply_without_text():
    photo = text_update("")
    del photo["message"]["text"]
    photo["message"].update(photo=[{"file_id": "p", "file_unique_id": "u", "width": 90, "height": 90}],
                            caption="my receipt")
    assert parse_update(photo) == InboundEvent(CHAT, "my receipt", "reply", "telegram:9001",
                                               profile_name="Анна Смирнова")
    sticker = text_update("")
    del sticker["message"]["text"]
    sticker["message"]["sticker"] = {"file_id": "s", "file_unique_id": "u", "width": 512, "height": 512,
                                     "is_animated": False, "is_video": False, "type": "regular"}
    assert parse_update(sticker).kind == "reply" and parse_update(sticker).text == ""


def test_service_messages_edits_and_channel_posts_are_ignored():
    service = text_update("")
    del service["message"]["text"]
    service["message"]["new_chat_members"] = [USER]
    assert parse_update(service) is None
    assert parse_update(text_update("/stop", kind="edited_message")) is None
    assert parse_update(text_update("/stop", kind="channel_post")) is None
    assert parse_update({"update_id": 9003, "callback_query": {
        "id": "1", "from": USER, "chat_instance": "c", "data": "x"}}) is None


@pytest.mark.parametrize("data", [{}, {"message": {}}, {"update_id": "1"}, {"update_id": 1, "message": {"chat": 5}}])
def test_something_that_is_not_an_update_is_an_error(data):
    with pytest.raises(ValueError):
        parse_update(data)


def test_rate_constant_is_telegrams_per_bot_limit():
    assert RATE_PER_BOT == 30.0
