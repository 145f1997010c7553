"""Telegram through the Bot API, with python-telegram-bot (PTB 22).

Sending: check the chat id → ``Bot.send_message(chat_id, text, parse_mode=HTML)`` with the buttons as an
inline keyboard of URL buttons (one per row) → ``SendReceipt("<chat id>:<message id>")``.

- Link previews are off: Telegram's servers fetch a previewed URL themselves, and every link we send is a
  tracked redirect, so a preview would be counted as a click nobody made.
- No ``Bot.initialize()``: in PTB 22 it only calls ``getMe`` (to fill ``Bot.username`` and friends, which
  we do not read) and opens the request object. ``HTTPXRequest`` builds its httpx client in ``__init__``,
  so ``send_message`` works without it; we open the request object ourselves, once, lazily. For the same
  reason ``Bot.shutdown()`` is a no-op here (it returns early when ``initialize`` never ran), so ``aclose``
  shuts the request object down directly.
- Nothing is retried by the library: a plain ``telegram.Bot`` has no retry or rate limiter (those live in
  ``telegram.ext``), httpx's transport retries nothing by default, and PTB's ``HTTPXRequest.do_request``
  makes exactly one ``client.request``. A resend is the caller's decision, made from the error type.
- The shared limiter lives elsewhere; :data:`RATE_PER_BOT` is Telegram's documented ~30 messages/s per bot.

Errors, mapped once here by :func:`map_telegram_error`. PTB turns Telegram's answers into typed errors in
``BaseRequest._request_wrapper`` (403 → Forbidden, 401/404 → InvalidToken, 400 → BadRequest, a
``parameters.retry_after`` → RetryAfter whatever the status, any other non-2xx → NetworkError with no
``__cause__``) and httpx's failures in ``HTTPXRequest.do_request`` (``httpx.TimeoutException`` → TimedOut,
any other ``httpx.HTTPError`` → NetworkError, both ``from`` the httpx error)::

    TelegramError
    ├── RetryAfter (any answer with parameters.retry_after)   → RateLimited(retry_after=seconds, "retry_after")
    ├── ChatMigrated (group became a supergroup)              → PermanentChannelError("chat_migrated", revoke)
    ├── Forbidden 403 (bot blocked by the user, user deactivated, bot kicked from the group,
    │                  bot can't initiate a conversation)     → PermanentChannelError("forbidden", revoke)
    ├── InvalidToken 401/404 (the bot token is dead)          → ProviderAccountError("invalid_token")
    │                                                            (config: every send waits until it is fixed)
    ├── NetworkError
    │   ├── BadRequest 400  "chat not found" (*)              → PermanentChannelError("chat_not_found", revoke)
    │   │                   anything else (can't parse entities, text too long, bad button URL)
    │   │                                                     → PermanentChannelError("bad_request")
    │   ├── from httpx.ConnectError / ConnectTimeout / PoolTimeout
    │   │   (refused, unreachable, DNS, TLS handshake, no free connection: nothing was sent)
    │   │                                                     → TransientChannelError("unreachable")
    │   ├── TimedOut from httpx.ReadTimeout / WriteTimeout    → InDoubtChannelError("timed_out")
    │   ├── from any other httpx error (RemoteProtocolError: the connection dropped before the answer,
    │   │   ReadError, WriteError...)                         → InDoubtChannelError("no_answer")
    │   └── no httpx cause: Telegram answered 5xx or another unexpected status (PTB keeps no status
    │       code, only the description)                       → InDoubtChannelError("server_error")
    └── anything else (Conflict, an answer that is not JSON) → InDoubtChannelError("bad_answer")
    any other exception out of send_message (a 200 without "result", a Message PTB cannot read)
                                                              → InDoubtChannelError("bad_answer")
    before any request: a chat id that is not an integer    → PermanentChannelError("invalid_chat_id")

(*) Telegram gives no code for "chat not found" beyond 400, so this one case matches the description PTB
exposes (``BadRequest.message``, "Chat not found" once PTB strips "Bad Request: "). Nothing else reads a
message string.

Inbound helpers (pure, no network Bot): :func:`verify_secret` (the ``X-Telegram-Bot-Api-Secret-Token``
header), :func:`parse_update` (``/start <token>``, ``/stop``, ``/help``, replies, the user blocking the bot),
:func:`deep_link` (``https://t.me/<bot>?start=<token>``) and :func:`set_webhook`.

Sandbox: with a ``SandboxRecorder`` the Bot is built on :class:`SandboxRequest`, a PTB request class that
builds the exact httpx request ``HTTPXRequest`` would send (URL with the token replaced by ``<token>``,
headers, the urlencoded form body), records it and answers like Telegram. Nothing leaves the machine.

Logs: httpx logs every request URL at INFO, and PTB logs its API URL at DEBUG; both contain the bot token.
A filter on those two loggers replaces the token of every channel built here with ``<token>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import httpx
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import BaseRequest, HTTPXRequest, RequestData
from telegram.warnings import PTBDeprecationWarning

from channels.base import (
    Button,
    ChannelError,
    InboundEvent,
    InboundKind,
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    RecordedRequest,
    SandboxRecorder,
    SendReceipt,
    TransientChannelError,
    current_delivery,
    redacted,
)
from storage.tables import ChannelName

#: Telegram's limit for one bot (messages per second); the shared limiter reads it
RATE_PER_BOT = 30.0

#: what Telegram accepts as a /start payload (and as a webhook secret, up to 256)
DEEP_LINK_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
CHAT_ID = re.compile(r"-?[0-9]{1,20}")
ALLOWED_UPDATES = ("message", "my_chat_member")
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

#: httpx errors that happen before a byte of the request left: nothing was sent
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class TelegramConfig:
    bot_token: str
    bot_username: str
    base_url: str | None = None          # PTB's base_url (the token is appended); tests: the fake; prod None
    timeout: float = 10.0
    webhook_secret: str | None = None


# --- logs without the token ---------------------------------------------------------------------


class _RedactTokens(logging.Filter):
    """Replaces known bot tokens in a log record's message with ``<token>``."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.tokens:
            return True
        message = record.getMessage()
        clean = message
        for token in self.tokens:
            clean = clean.replace(token, "<token>")
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_REDACT = _RedactTokens()
_REDACTED_LOGGERS = ("httpx", "telegram.Bot")


def _hide_token_in_logs(token: str) -> None:
    _REDACT.tokens.add(token)
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


# --- errors ---------------------------------------------------------------------------------------


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _retry_after(exc: RetryAfter) -> float:
    # PTB 22 gives an int (with a PTBDeprecationWarning) or, with PTB_TIMEDELTA=1, a timedelta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        return _seconds(exc.retry_after)


def map_telegram_error(exc: TelegramError, *, label: str = "telegram") -> ChannelError:
    """The one mapping from PTB's errors to ours (the tree is in the module docstring)."""
    if isinstance(exc, RetryAfter):
        seconds = _retry_after(exc)
        return RateLimited(f"{label}: flood control, retry in {seconds:g} s", retry_after=seconds,
                           code="retry_after")
    if isinstance(exc, ChatMigrated):
        return PermanentChannelError(f"{label}: the group became a supergroup with another chat id",
                                     code="chat_migrated", revoke_address=True)
    if isinstance(exc, Forbidden):
        return PermanentChannelError(f"{label}: {exc.message}", code="forbidden", revoke_address=True)
    if isinstance(exc, InvalidToken):
        # a configuration problem, not this member's: every send of this bot fails until the token is fixed
        return ProviderAccountError(f"{label}: Telegram rejected the bot token", code="invalid_token")
    if isinstance(exc, BadRequest):
        # Telegram's only signal for a dead chat is the description of a 400 (see the docstring)
        if "chat not found" in exc.message.casefold():
            return PermanentChannelError(f"{label}: {exc.message}", code="chat_not_found", revoke_address=True)
        return PermanentChannelError(f"{label}: Telegram refused the message: {exc.message}", code="bad_request")
    if isinstance(exc, NetworkError):
        cause = exc.__cause__
        if isinstance(cause, _NOT_SENT):
            return TransientChannelError(f"{label}: cannot reach Telegram ({type(cause).__name__}); nothing was sent",
                                         code="unreachable")
        if isinstance(exc, TimedOut):
            return InDoubtChannelError(f"{label}: no answer from Telegram in time after sending; do not resend blindly",
                                       code="timed_out")
        if isinstance(cause, httpx.HTTPError):
            return InDoubtChannelError(
                f"{label}: connection lost after sending ({type(cause).__name__}); do not resend blindly",
                code="no_answer")
        # the description, or PTB's "Bad Gateway (502). Parsing the server response b'<html>...' failed"
        return InDoubtChannelError(f"{label}: Telegram answered an error ({exc.message[:160]}); it may have sent it",
                                   code="server_error")
    return InDoubtChannelError(f"{label}: unexpected answer from Telegram ({type(exc).__name__})", code="bad_answer")


# --- sandbox ----------------------------------------------------------------------------------------


def _message_id(recorded_id: str) -> int:
    """A Telegram message id (a positive int) from a recorder's id: the number itself when it is one."""
    if recorded_id.isdigit() and 0 < int(recorded_id) < 2**31:
        return int(recorded_id)
    return int.from_bytes(hashlib.sha256(recorded_id.encode()).digest()[:4], "big") % (2**31 - 1) + 1


def _chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private"}
    return {"id": chat_id, "type": "supergroup" if str(chat_id).startswith("-100") else "group", "title": "sandbox"}


class SandboxRequest(BaseRequest):
    """A PTB request class that records the request ``HTTPXRequest`` would send instead of sending it."""

    __slots__ = ("_builder", "_channel", "_provider", "_recorder", "_timeout", "_token")

    def __init__(self, recorder: SandboxRecorder, *, token: str, timeout: float,
                 channel: str = "telegram", provider: str = "telegram") -> None:
        self._recorder = recorder
        self._token = token
        self._timeout = timeout
        self._channel = channel
        self._provider = provider
        self._builder: httpx.AsyncClient | None = None    # builds requests (same default headers), never sends

    @property
    def read_timeout(self) -> float | None:
        return self._timeout

    async def initialize(self) -> None:
        if self._builder is None or self._builder.is_closed:
            self._builder = httpx.AsyncClient()

    async def shutdown(self) -> None:
        if self._builder is not None:
            await self._builder.aclose()
            self._builder = None

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: Any = BaseRequest.DEFAULT_NONE, write_timeout: Any = BaseRequest.DEFAULT_NONE,
                         connect_timeout: Any = BaseRequest.DEFAULT_NONE,
                         pool_timeout: Any = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        await self.initialize()
        assert self._builder is not None
        # what HTTPXRequest.do_request passes to httpx: form fields (JSON-encoded values), files as multipart
        request = self._builder.build_request(
            method, url, headers={"User-Agent": self.USER_AGENT},
            data=request_data.json_parameters if request_data else None,
            files=(request_data.multipart_data or None) if request_data else None)
        body = request.read().decode("utf-8", errors="replace")
        recorded_id = await asyncio.to_thread(self._recorder.record, RecordedRequest(
            channel=self._channel, provider=self._provider, method=request.method,
            url=str(request.url).replace(self._token, "<token>"),
            headers=redacted(dict(request.headers)), body=body))
        params = request_data.parameters if request_data else {}
        return 200, json.dumps({"ok": True, "result": self._answer(url, params, recorded_id)}).encode()

    @staticmethod
    def _answer(url: str, params: dict[str, Any], recorded_id: str) -> Any:
        endpoint = url.rsplit("/", 1)[-1]
        if endpoint == "sendMessage":
            message: dict[str, Any] = {"message_id": _message_id(recorded_id), "date": int(time.time()),
                                       "chat": _chat(int(params["chat_id"])), "text": params.get("text", "")}
            if params.get("reply_markup"):
                message["reply_markup"] = params["reply_markup"]
            return message
        if endpoint == "getMe":
            return {"id": 1, "is_bot": True, "first_name": "Clarion sandbox", "username": "clarion_sandbox_bot"}
        return True


# --- the channel ----------------------------------------------------------------------------------


def _keyboard(buttons: tuple[Button, ...]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(b.text, url=b.url)] for b in buttons])


def _chat_id(to: str) -> int:
    if not CHAT_ID.fullmatch(to.strip()):
        raise PermanentChannelError("telegram: a chat id is an integer", code="invalid_chat_id")
    return int(to)


def _build_bot(config: TelegramConfig, request: BaseRequest) -> Bot:
    _hide_token_in_logs(config.bot_token)
    kwargs: dict[str, Any] = {"request": request, "get_updates_request": request}  # no getUpdates: no 2nd pool
    if config.base_url:
        kwargs["base_url"] = config.base_url
    return Bot(config.bot_token, **kwargs)


def _http_request(config: TelegramConfig) -> HTTPXRequest:
    t = config.timeout
    return HTTPXRequest(read_timeout=t, write_timeout=t, connect_timeout=t, pool_timeout=t, media_write_timeout=t)


class TelegramChannel:
    name: ClassVar[ChannelName] = ChannelName.telegram

    def __init__(self, config: TelegramConfig, *, sandbox_recorder: SandboxRecorder | None = None) -> None:
        self._config = config
        self.sandboxed = sandbox_recorder is not None
        self._request: BaseRequest = (
            SandboxRequest(sandbox_recorder, token=config.bot_token, timeout=config.timeout, channel=str(self.name))
            if sandbox_recorder is not None else _http_request(config))
        self._bot = _build_bot(config, self._request)
        self._open = False

    async def _ensure_open(self) -> None:
        if not self._open:
            await self._request.initialize()   # what Bot.initialize would do, without its getMe
            self._open = True

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        chat_id = _chat_id(msg.to)
        keyboard = _keyboard(msg.buttons)
        await self._ensure_open()
        token = current_delivery.set(msg.delivery_id)
        try:
            message = await self._bot.send_message(
                chat_id=chat_id, text=msg.text, parse_mode=ParseMode.HTML, reply_markup=keyboard,
                link_preview_options=LinkPreviewOptions(is_disabled=True))
        except TelegramError as exc:
            raise map_telegram_error(exc) from exc
        except Exception as exc:  # the request went out and the answer could not be read: never resend blindly
            raise InDoubtChannelError(f"telegram: unreadable answer ({type(exc).__name__})",
                                      code="bad_answer") from exc
        finally:
            current_delivery.reset(token)
        return SendReceipt(provider_message_id=f"{chat_id}:{message.message_id}")

    async def set_webhook(self, url: str, secret_token: str | None = None) -> None:
        """Point the bot's updates at ``url`` (see :func:`set_webhook`)."""
        secret = _webhook_secret(self._config, secret_token)
        await self._ensure_open()
        try:
            await self._bot.set_webhook(url=url, secret_token=secret, allowed_updates=list(ALLOWED_UPDATES))
        except TelegramError as exc:
            raise map_telegram_error(exc) from exc

    async def aclose(self) -> None:
        # not Bot.shutdown(): it does nothing when Bot.initialize() never ran
        await self._request.shutdown()
        self._open = False


def _webhook_secret(config: TelegramConfig, secret_token: str | None) -> str:
    secret = secret_token or config.webhook_secret
    if not secret or not WEBHOOK_SECRET.fullmatch(secret):
        raise ValueError("telegram: a webhook secret is 1-256 characters of A-Z a-z 0-9 _ -")
    return secret


async def set_webhook(config: TelegramConfig, url: str, secret_token: str | None = None) -> None:
    """Tell Telegram to POST the bot's ``message`` and ``my_chat_member`` updates to ``url`` with
    ``secret_token`` (default: ``config.webhook_secret``) in the X-Telegram-Bot-Api-Secret-Token header."""
    channel = TelegramChannel(config)
    try:
        await channel.set_webhook(url, secret_token)
    finally:
        await channel.aclose()


# --- inbound --------------------------------------------------------------------------------------


def verify_secret(header_value: str | None, expected: str) -> bool:
    """True when the X-Telegram-Bot-Api-Secret-Token header equals our webhook secret (constant time)."""
    if not header_value or not expected:
        return False
    return hmac.compare_digest(header_value.encode(), expected.encode())


def deep_link(bot_username: str, token: str) -> str:
    """``https://t.me/<bot>?start=<token>``: opening it and pressing Start sends us ``/start <token>``."""
    if not DEEP_LINK_TOKEN.fullmatch(token):
        raise ValueError("telegram: a /start token is 1-64 characters of A-Z a-z 0-9 _ -")
    bot = bot_username.removeprefix("@")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", bot):
        raise ValueError("telegram: not a bot username")
    return f"https://t.me/{bot}?start={token}"


_COMMANDS: dict[str, InboundKind] = {"start": "start", "stop": "stop", "help": "help"}
#: my_chat_member statuses after which the bot can no longer write to the chat
_GONE = frozenset({"kicked", "left"})


def _command(text: str, bot_username: str | None) -> tuple[str | None, str] | None:
    """``/name[@bot] rest`` → (name or None when addressed to another bot, rest); None when not a command."""
    if not text.startswith("/"):
        return None
    head, _, rest = text.partition(" ")
    name, _, addressee = head[1:].partition("@")
    if addressee and bot_username and addressee.casefold() != bot_username.removeprefix("@").casefold():
        return None, rest
    return name.casefold(), rest.strip()


def parse_update(data: dict, *, bot_username: str | None = None) -> InboundEvent | None:
    """A webhook update → InboundEvent, or None when it is nothing we act on.

    - ``message`` with text: ``/start [token]`` (also ``/start@Bot token``) → "start" (``token`` when the rest
      is a valid deep-link token, else None), ``/stop`` → "stop", ``/help`` → "help"; any other text, other
      commands included → "reply". With ``bot_username``, a command addressed to another bot → None.
    - ``message`` without text but with content (photo, sticker, voice, document...) → "reply", its
      caption as text (or ""): the member answered.
    - ``message`` that is a service message (members joined, pinned, chat migrated...) → None.
    - ``my_chat_member`` with the bot's new status "kicked" (the user blocked the bot) or "left" (removed
      from a group) → "stop", text "". Any other status, un-blocking ("member") included → None: consent is
      not granted again by unblocking, only by /start.
    - anything else (edited messages, channel posts, callback queries...) → None.

    ``profile_name`` is the sender's first and last name: personal data, never log it.
    Raises ValueError when ``data`` is not a Telegram update."""
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise ValueError("telegram: not an update (no update_id)")
    try:
        update = Update.de_json(data, None)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"telegram: malformed update ({type(exc).__name__})") from exc
    event_id = f"telegram:{update.update_id}"
    profile = update.effective_user.full_name if update.effective_user else None

    if update.my_chat_member is not None:
        if update.my_chat_member.new_chat_member.status not in _GONE:
            return None
        return InboundEvent(address=str(update.my_chat_member.chat.id), text="", kind="stop",
                            event_id=event_id, profile_name=profile)

    message = update.message
    if message is None:
        return None
    address = str(message.chat.id)
    if message.text is None:
        if message.effective_attachment is None and message.caption is None:
            return None
        return InboundEvent(address=address, text=message.caption or "", kind="reply", event_id=event_id,
                            profile_name=profile)

    text = message.text
    command = _command(text.strip(), bot_username)
    if command is None:
        return InboundEvent(address=address, text=text, kind="reply", event_id=event_id, profile_name=profile)
    name, rest = command
    if name is None:
        return None
    kind = _COMMANDS.get(name, "reply")
    token = rest if kind == "start" and DEEP_LINK_TOKEN.fullmatch(rest) else None
    return InboundEvent(address=address, text=text, kind=kind, event_id=event_id, token=token,
                        profile_name=profile)
