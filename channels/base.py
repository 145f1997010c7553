"""The Channel protocol, the message that goes in, the receipt that comes out, and the error tree.

Errors are typed, never strings to parse::

    ChannelError
    ├── PermanentChannelError      the message can never go to this address (revoke_address: stop using it)
    ├── TransientChannelError      nothing was sent; trying again later may work
    │   ├── RateLimited            the provider asks us to slow down (retry_after seconds, if it said)
    │   └── ProviderAccountError   the provider refused our account or credentials: a configuration problem,
    │                              not the member's; nothing was sent, every message of the account waits
    └── InDoubtChannelError        the provider may or may not have accepted it: never resend blindly

Adapters map their library's exceptions to these once, at the edge, with ``raise ... from exc``.

Inbound provider traffic (status callbacks, replies, keywords, bot updates) is parsed by the same adapter
into two normalized shapes, :class:`StatusEvent` and :class:`InboundEvent`, before anything else sees it.

Sandbox: an adapter built with a :class:`SandboxRecorder` runs its real client library to the last byte
but hands the finished HTTP request to the recorder instead of the network, and answers like the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from storage.tables import ChannelName


@dataclass(frozen=True, slots=True)
class Button:
    """A link button under a message (Telegram inline keyboard): the URL is already a tracked link."""

    text: str
    url: str


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A rendered message for one member on one channel. Each adapter reads the fields its channel has."""

    delivery_id: int
    to: str                               # the channel's address: email, E.164 phone, chat id, token
    text: str                             # the body (SMS, WhatsApp, push body, Telegram HTML subset, receipt)
    subject: str | None = None            # email subject
    html: str | None = None               # email HTML; direct mail letter HTML
    message_id: str | None = None         # our id for the message (email Message-ID)
    headers: dict[str, str] = field(default_factory=dict)
    title: str | None = None              # push title; inbox, receipt and letter heading
    image_url: str | None = None          # push image
    link: str | None = None               # deep link (push data "link", inbox and receipt call to action)
    data: dict[str, str] = field(default_factory=dict)      # push data payload (strings only)
    buttons: tuple[Button, ...] = ()      # Telegram inline URL buttons
    content_sid: str | None = None        # WhatsApp approved template (Twilio Content SID "HX...")
    content_variables: dict[str, str] = field(default_factory=dict)
    session_open: bool = False            # WhatsApp: the member wrote within 24 h, free-form text allowed
    coupon: str | None = None             # receipt: a coupon code printed with its barcode / QR data
    member_id: int = 0                    # pull channels (receipt, inbox, direct mail) store per member
    campaign_id: int = 0
    program_id: int = 0
    expires_at: str | None = None         # ISO 8601: a pulled message is not shown after this
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider_message_id: str
    segments: int = 1                     # what the provider bills: SMS segments, else 1
    encoding: str | None = None           # SMS: GSM-7 or UCS-2
    queued: bool = False                  # kept for a batch not handed over yet (direct mail): not sent yet


class Channel(Protocol):
    name: ClassVar[ChannelName]

    async def send(self, msg: OutboundMessage) -> SendReceipt: ...


class ChannelError(Exception):
    """Base of every channel error. ``code`` is the provider's code, for the ledger."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class PermanentChannelError(ChannelError):
    def __init__(self, message: str, *, code: str | None = None, revoke_address: bool = False) -> None:
        super().__init__(message, code=code)
        self.revoke_address = revoke_address


class TransientChannelError(ChannelError):
    pass


class RateLimited(TransientChannelError):
    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ProviderAccountError(TransientChannelError):
    pass


class InDoubtChannelError(ChannelError):
    pass


# --- inbound, normalized -----------------------------------------------------------------------

DeliveryState = Literal["queued", "sent", "delivered", "read", "failed", "undelivered"]
InboundKind = Literal["stop", "start", "help", "reply"]


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A provider's status report for a message we sent."""

    provider_message_id: str
    status: DeliveryState
    error_code: str | None = None
    event_id: str | None = None           # the provider's id of this report, for deduplication


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """A member wrote to us: a keyword (stop / start / help) or any other reply.

    ``address`` is where it came from on the channel (E.164 phone, Telegram chat id); ``token`` is the
    signed linking token of a Telegram ``/start <token>``."""

    address: str
    text: str
    kind: InboundKind
    event_id: str | None = None
    token: str | None = None
    profile_name: str | None = None


# --- sandbox -----------------------------------------------------------------------------------

#: the delivery an adapter is sending right now: a sandbox recorder files the request under it
current_delivery: ContextVar[int | None] = ContextVar("current_delivery", default=None)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    channel: str
    provider: str
    method: str
    url: str
    headers: Mapping[str, str]            # credentials already removed
    body: str


class SandboxRecorder(Protocol):
    """Keeps the exact outgoing provider request instead of sending it; returns an id for it."""

    def record(self, request: RecordedRequest) -> str: ...


SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def redacted(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers without credentials (kept as ``[redacted]`` so the reader sees they were sent)."""
    return {k: ("[redacted]" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}
