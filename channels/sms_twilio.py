"""SMS through Twilio's Programmable Messaging API, with the official ``twilio`` library.

Sending: validate the number (E.164, ``phonenumbers``) → count segments (``channels.sms_text``) and refuse
texts over ``max_segments`` → ``client.messages.create`` → a ``SendReceipt`` with the segment count and
encoding (the cost is per segment). ``channels.whatsapp_twilio`` reuses the client, the error mapping and
the inbound helpers of this module.

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
    ├── HTTP 401, code 20003 (authentication), 20404 (no such account / resource)
    │                                             → ProviderAccountError (configuration: every message waits)
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

Inbound helpers (pure): ``verify_signature`` (X-Twilio-Signature), ``parse_status`` (status callbacks,
normalized to queued|sent|delivered|read|failed|undelivered) and ``parse_inbound`` (replies and the
STOP/START/HELP keywords), both into the normalized shapes of ``channels.base``.

Sandbox: with a ``SandboxRecorder`` the client's requests session is routed to ``channels.sandbox``: the
form body Twilio would get is recorded, and the answer is a queued message like Twilio's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs

import phonenumbers
import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels import sandbox
from channels.base import (
    ChannelError,
    InboundEvent,
    InboundKind,
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    SandboxRecorder,
    SendReceipt,
    StatusEvent,
    current_delivery,
)
from channels.http import map_transport_error, retry_after_seconds
from channels.sms_text import sms_segments
from storage.tables import ChannelName

UNSUBSCRIBED = 21610          # "Attempt to send to unsubscribed recipient"
INVALID_TO = (21211, 21614)   # invalid 'To' number; 'To' is not a valid mobile number
TOO_MANY_REQUESTS = 20429
ACCOUNT_CODES = (20003, 20404)   # authentication failed; the account (or its Messages resource) does not exist


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str
    sender: str                         # E.164 number, or a messaging service SID "MG..."
    status_callback: str | None = None
    max_segments: int = 6
    base_url: str | None = None         # tests: the fake's URL; production None (https://api.twilio.com)
    timeout: float = 10.0


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


def map_twilio_error(exc: TwilioRestException | TwilioServiceException, retry_after: str | None, *,
                     label: str = "sms") -> ChannelError:
    code, status = exc.code, exc.status
    code_str = str(code) if code is not None else str(status)
    if code == UNSUBSCRIBED:
        return PermanentChannelError(f"{label}: recipient unsubscribed (replied STOP)", code=code_str,
                                     revoke_address=True)
    if code in INVALID_TO:
        return PermanentChannelError(f"{label}: Twilio refused the number ({code})", code=code_str)
    if code == TOO_MANY_REQUESTS or status == 429:
        return RateLimited(f"{label}: Twilio rate limit ({code_str})", retry_after=retry_after_seconds(retry_after),
                           code=code_str)
    if status == 401 or code in ACCOUNT_CODES:
        return ProviderAccountError(f"{label}: Twilio refused our account ({status}, {code_str}): check the "
                                    "account SID, auth token and sender", code=code_str)
    if status >= 500:
        return InDoubtChannelError(f"{label}: Twilio server error {status}; it may have accepted the message",
                                   code=code_str)
    if 400 <= status < 500:
        return PermanentChannelError(f"{label}: Twilio refused the message ({status}, {code_str})",
                                     code=code_str)
    return InDoubtChannelError(f"{label}: unexpected answer from Twilio ({status})", code=code_str)


def e164(number: str) -> str:
    """The E.164 form of ``number`` (which must start with +), or PermanentChannelError."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise PermanentChannelError(f"sms: not a phone number: {number!r}", code="invalid_number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise PermanentChannelError(f"sms: not a valid phone number: {number!r}", code="invalid_number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# Twilio's test credentials answer these "magic" To numbers with an error; the sandbox does the same, so a
# demo or a test can show what a refused number does (https://www.twilio.com/docs/iam/test-credentials)
SANDBOX_MAGIC = {"+15005550001": (21211, "The 'To' number is not a valid phone number."),
                 "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
                 "+15005550009": (21614, "'To' number is not a valid mobile number")}


def _sandbox_answer(recorded_id: str, request: requests.PreparedRequest) -> tuple[int, dict[str, Any]]:
    """What Twilio answers a Messages create: the message, queued (SID "SM" + the recorded request's id);
    for a magic test number, Twilio's error."""
    form = {k: v[0] for k, v in parse_qs(sandbox.body_text(request.body), keep_blank_values=True).items()}
    magic = SANDBOX_MAGIC.get(form.get("To", "").removeprefix("whatsapp:"))
    if magic is not None:
        return 400, {"code": magic[0], "message": magic[1], "status": 400,
                     "more_info": f"https://www.twilio.com/docs/errors/{magic[0]}"}
    account = (request.path_url or "").split("/")[3] if (request.path_url or "").count("/") >= 4 else ""
    sid = "SM" + f"sandbox{recorded_id}".rjust(32, "0")[-32:]
    return 201, {"sid": sid, "account_sid": account, "to": form.get("To"), "from": form.get("From"),
                 "body": form.get("Body"), "status": "queued", "num_segments": "1"}


class TwilioMessaging:
    """Twilio's Messages resource on the official client: what SMS and WhatsApp share."""

    name: ClassVar[ChannelName] = ChannelName.sms
    label = "sms"

    def __init__(self, config: TwilioConfig, *, sandbox_recorder: SandboxRecorder | None = None) -> None:
        self._config = config
        self._http = _RecordingHttpClient(timeout=config.timeout)
        self._client = Client(config.account_sid, config.auth_token, http_client=self._http)
        if config.base_url:
            self._client.api.base_url = config.base_url  # the Messages resource: {base}/2010-04-01/...
        self.sandboxed = sandbox_recorder is not None
        if sandbox_recorder is not None and self._http.session is not None:
            sandbox.mount(self._http.session, sandbox.RecordingAdapter(
                sandbox_recorder, channel=str(self.name), provider="twilio", answer=_sandbox_answer))

    def _sender_args(self) -> dict[str, str]:
        sender = self._config.sender
        if sender.startswith("MG"):
            return {"messaging_service_sid": sender}
        return {"from_": sender}

    def _create(self, delivery_id: int, **fields: Any) -> str:
        """Blocking: runs in a worker thread. Returns the message SID."""
        extra: dict[str, Any] = self._sender_args()
        if self._config.status_callback:
            extra["status_callback"] = self._config.status_callback
        token = current_delivery.set(delivery_id)
        try:
            message = self._client.messages.create(**fields, **extra)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise map_twilio_error(exc, self._http.last_header("Retry-After"), label=self.label) from exc
        except requests.RequestException as exc:
            raise map_transport_error(exc, label=self.label) from exc
        finally:
            current_delivery.reset(token)
        return message.sid

    async def aclose(self) -> None:
        if self._http.session is not None:
            self._http.session.close()


class TwilioSmsChannel(TwilioMessaging):
    name: ClassVar[ChannelName] = ChannelName.sms
    label = "sms"

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        to = e164(msg.to)
        info = sms_segments(msg.text)
        if info.segments > self._config.max_segments:
            raise PermanentChannelError(
                f"sms: {info.segments} segments ({info.encoding}) over the limit of {self._config.max_segments}",
                code="too_many_segments")
        sid = await asyncio.to_thread(self._create, msg.delivery_id, to=to, body=msg.text)
        return SendReceipt(provider_message_id=sid, segments=info.segments, encoding=info.encoding)


# --- inbound: signatures, status callbacks, replies -------------------------------------------------

_STATUS: dict[str, str] = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued",
    "sending": "sent", "sent": "sent",
    "delivered": "delivered", "read": "read",
    "undelivered": "undelivered",
    "failed": "failed", "canceled": "failed",
}

STOP_WORDS = frozenset(w.casefold() for w in (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "СТОП", "ОТПИСАТЬСЯ"))
START_WORDS = frozenset(w.casefold() for w in ("START", "YES", "UNSTOP"))
HELP_WORDS = frozenset(w.casefold() for w in ("HELP",))


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
    return StatusEvent(provider_message_id=sid, status=status,  # type: ignore[arg-type]
                       error_code=params.get("ErrorCode") or None, event_id=f"twilio:{sid}:{status}")


def keyword_kind(body: str) -> InboundKind:
    word = body.strip().casefold()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return "reply"


def parse_inbound(params: Mapping[str, str]) -> InboundEvent:
    """An incoming message's form fields → InboundEvent (the whole trimmed body is the keyword).
    WhatsApp's ``whatsapp:`` prefix is taken off the address."""
    body = params.get("Body", "")
    sid = params.get("MessageSid") or params.get("SmsSid") or None
    return InboundEvent(address=params.get("From", "").removeprefix("whatsapp:"), text=body,
                        kind=keyword_kind(body), event_id=f"twilio:{sid}" if sid else None,
                        profile_name=params.get("ProfileName") or None)
