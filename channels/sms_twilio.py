"""SMS through Twilio's Programmable Messaging API, with the official ``twilio`` library.

Sending: validate the number (E.164, ``phonenumbers``) → count segments (``channels.sms_text``) and refuse
texts over ``max_segments`` → ``client.messages.create`` → an ``SmsReceipt`` (a ``SendReceipt`` that also
carries the segment count and encoding; ``channels.base.SendReceipt`` has no place for them).

Why a thread and not ``AsyncTwilioHttpClient``: the sync client (requests/urllib3) is called with
``asyncio.to_thread``. The async client needs aiohttp and aiohttp-retry, and wraps every request in an
``ExponentialRetry`` when retries are asked for — an automatic resend of a POST that may already have been
accepted, which is exactly what must never happen here. requests also types the two failures we must tell
apart: ``NewConnectionError`` / ``ConnectTimeout`` (no connection, nothing sent) versus everything after
the connection was made (the request may have reached Twilio). A send costs one pool thread for its
duration (bounded by ``timeout``).

Errors, mapped once here (codes: https://www.twilio.com/docs/api/errors)::

    TwilioRestException / TwilioServiceException (Twilio answered)
    ├── code 21610 (recipient replied STOP)       → PermanentChannelError(revoke_address=True)
    ├── code 21211, 21614 (invalid / not mobile)  → PermanentChannelError
    ├── code 20429 or HTTP 429                    → RateLimited(retry_after=Retry-After header or None)
    ├── HTTP 5xx                                  → InDoubtChannelError
    ├── other HTTP 4xx                            → PermanentChannelError(code=Twilio's code)
    └── anything else (unexpected 1xx/3xx)        → InDoubtChannelError
    requests.RequestException (no answer)
    ├── ConnectTimeout, SSLError, ConnectionError caused by urllib3 NewConnectionError
    │   (refused, unreachable, DNS: no connection, nothing sent)   → TransientChannelError
    ├── ReadTimeout (request sent, no answer in time)               → InDoubtChannelError
    └── any other ConnectionError / RequestException (peer closed, reset, broken answer) → InDoubtChannelError
    before any request: bad number → PermanentChannelError("invalid_number");
                        too long   → PermanentChannelError("too_many_segments")

Inbound helpers (pure; routes come later): ``verify_signature`` (X-Twilio-Signature), ``parse_status``
(status callbacks, normalized to queued|sent|delivered|failed|undelivered) and ``parse_inbound`` (replies
and the STOP/START/HELP keywords).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

import phonenumbers
import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from channels.base import (
    ChannelError,
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    RateLimited,
    SendReceipt,
    TransientChannelError,
)
from channels.sms_text import sms_segments
from storage.tables import ChannelName

UNSUBSCRIBED = 21610          # "Attempt to send to unsubscribed recipient"
INVALID_TO = (21211, 21614)   # invalid 'To' number; 'To' is not a valid mobile number
TOO_MANY_REQUESTS = 20429


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str
    sender: str                         # E.164 number, or a messaging service SID "MG..."
    status_callback: str | None = None
    max_segments: int = 6
    base_url: str | None = None         # tests: the fake's URL; production None (https://api.twilio.com)
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class SmsReceipt(SendReceipt):
    segments: int = 1
    encoding: str = "GSM-7"


class _RecordingHttpClient(TwilioHttpClient):
    """Twilio's requests-based client that keeps the last response per thread, so a 429's Retry-After
    header (which ``TwilioRestException`` does not carry) can be read by the thread that got it."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.response = None
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    def last_header(self, name: str) -> str | None:
        response: Response | None = getattr(self._local, "response", None)
        if response is None or not response.headers:
            return None
        lowered = {k.lower(): v for k, v in response.headers.items()}
        return lowered.get(name.lower())


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _map_twilio_error(exc: TwilioRestException | TwilioServiceException, retry_after: str | None) -> ChannelError:
    code, status = exc.code, exc.status
    code_str = str(code) if code is not None else str(status)
    if code == UNSUBSCRIBED:
        return PermanentChannelError("sms: recipient unsubscribed (replied STOP)", code=code_str,
                                     revoke_address=True)
    if code in INVALID_TO:
        return PermanentChannelError(f"sms: Twilio refused the number ({code})", code=code_str)
    if code == TOO_MANY_REQUESTS or status == 429:
        return RateLimited(f"sms: Twilio rate limit ({code_str})", retry_after=_retry_after(retry_after),
                           code=code_str)
    if status >= 500:
        return InDoubtChannelError(f"sms: Twilio server error {status}; it may have accepted the message",
                                   code=code_str)
    if 400 <= status < 500:
        return PermanentChannelError(f"sms: Twilio refused the message ({status}, {code_str})", code=code_str)
    return InDoubtChannelError(f"sms: unexpected answer from Twilio ({status})", code=code_str)


def _never_connected(exc: BaseException) -> bool:
    """True when a requests error shows no connection was made (so nothing was sent)."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, NewConnectionError):
            return True
        todo.extend([getattr(e, "reason", None), e.__cause__, e.__context__, *e.args])
    return False


def _map_transport_error(exc: requests.RequestException) -> ChannelError:
    kind = type(exc).__name__
    if _never_connected(exc):
        return TransientChannelError(f"sms: cannot reach Twilio ({kind}); nothing was sent")
    return InDoubtChannelError(f"sms: no answer from Twilio after sending ({kind}); do not resend blindly")


def e164(number: str) -> str:
    """The E.164 form of ``number`` (which must start with +), or PermanentChannelError."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise PermanentChannelError(f"sms: not a phone number: {number!r}", code="invalid_number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise PermanentChannelError(f"sms: not a valid phone number: {number!r}", code="invalid_number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class TwilioSmsChannel:
    name: ClassVar[ChannelName] = ChannelName.sms

    def __init__(self, config: TwilioConfig) -> None:
        self._config = config
        self._http = _RecordingHttpClient(timeout=config.timeout)
        self._client = Client(config.account_sid, config.auth_token, http_client=self._http)
        if config.base_url:
            self._client.api.base_url = config.base_url  # the Messages resource: {base}/2010-04-01/...

    def _sender_args(self) -> dict[str, str]:
        sender = self._config.sender
        if sender.startswith("MG"):
            return {"messaging_service_sid": sender}
        return {"from_": sender}

    def _create(self, to: str, body: str) -> str:
        """Blocking: runs in a worker thread. Returns the message SID."""
        extra: dict[str, str] = self._sender_args()
        if self._config.status_callback:
            extra["status_callback"] = self._config.status_callback
        try:
            message = self._client.messages.create(to=to, body=body, **extra)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _map_twilio_error(exc, self._http.last_header("Retry-After")) from exc
        except requests.RequestException as exc:
            raise _map_transport_error(exc) from exc
        return message.sid

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        to = e164(msg.to)
        info = sms_segments(msg.text)
        if info.segments > self._config.max_segments:
            raise PermanentChannelError(
                f"sms: {info.segments} segments ({info.encoding}) over the limit of {self._config.max_segments}",
                code="too_many_segments")
        sid = await asyncio.to_thread(self._create, to, msg.text)
        return SmsReceipt(provider_message_id=sid, segments=info.segments, encoding=info.encoding)

    async def aclose(self) -> None:
        if self._http.session is not None:
            self._http.session.close()


# --- inbound: signatures, status callbacks, replies -------------------------------------------------

StatusName = Literal["queued", "sent", "delivered", "failed", "undelivered"]

_STATUS: dict[str, StatusName] = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued",
    "sending": "sent", "sent": "sent",
    "delivered": "delivered", "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed", "canceled": "failed",
}

STOP_WORDS = frozenset(w.casefold() for w in (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "СТОП", "ОТПИСАТЬСЯ"))
START_WORDS = frozenset(w.casefold() for w in ("START", "YES", "UNSTOP"))
HELP_WORDS = frozenset(w.casefold() for w in ("HELP",))


@dataclass(frozen=True)
class StatusEvent:
    message_sid: str
    status: StatusName
    error_code: str | None = None


@dataclass(frozen=True)
class InboundEvent:
    from_: str
    body: str
    kind: Literal["stop", "start", "help", "reply"]


def verify_signature(url: str, params: Mapping[str, str], signature: str | None, auth_token: str) -> bool:
    """True when ``signature`` (the X-Twilio-Signature header) signs this exact URL and these form fields."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


def parse_status(params: Mapping[str, str]) -> StatusEvent:
    """A status callback's form fields → StatusEvent. Unknown statuses raise ValueError."""
    raw = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    status = _STATUS.get(raw)
    if status is None:
        raise ValueError(f"sms: unknown Twilio message status {raw!r}")
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    if not sid:
        raise ValueError("sms: status callback without MessageSid")
    return StatusEvent(message_sid=sid, status=status, error_code=params.get("ErrorCode") or None)


def keyword_kind(body: str) -> Literal["stop", "start", "help", "reply"]:
    word = body.strip().casefold()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return "reply"


def parse_inbound(params: Mapping[str, str]) -> InboundEvent:
    """An incoming message's form fields → InboundEvent (the whole trimmed body is the keyword)."""
    body = params.get("Body", "")
    return InboundEvent(from_=params.get("From", ""), body=body, kind=keyword_kind(body))
