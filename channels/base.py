"""The Channel protocol, the message that goes in, the receipt that comes out, and the error tree.

Errors are typed, never strings to parse::

    ChannelError
    ├── PermanentChannelError      the message can never go to this address (revoke_address: stop using it)
    ├── TransientChannelError      nothing was sent; trying again later may work
    │   └── RateLimited            the provider asks us to slow down (retry_after seconds, if it said)
    └── InDoubtChannelError        the provider may or may not have accepted it: never resend blindly

Adapters map their library's exceptions to these once, at the edge, with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from storage.tables import ChannelName


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A rendered message for one member on one channel."""

    delivery_id: int
    to: str                               # the channel's address: email, E.164 phone, chat id, token
    text: str
    subject: str | None = None
    html: str | None = None
    message_id: str | None = None         # our id for the message (email Message-ID)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider_message_id: str


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


class InDoubtChannelError(ChannelError):
    pass
