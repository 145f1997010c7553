"""Email over SMTP with aiosmtplib, through a small pool of kept-open connections.

The SMTP transaction is driven step by step (MAIL, RCPT, DATA) so that the outcome is exact:
a refusal before DATA means nothing was sent (safe to retry or to give up); a connection lost or a
timeout *during* DATA means the server may have accepted the message, which is in doubt and must
not be resent blindly.

The message is built once its connection has said what it takes: 8-bit UTF-8 parts (``BODY=8BITMIME``)
where the server offers 8BITMIME, base64 otherwise (``channels.mime``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formataddr, parseaddr
from typing import ClassVar

import aiosmtplib

from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    SendReceipt,
    TransientChannelError,
)
from channels.mime import ascii_address, build_email, encode_header_value, new_boundary
from storage.tables import ChannelName


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool = False
    timeout: float = 30.0
    connections: int = 4
    sender: str = "Clarion <news@clarion.example>"


def _format_sender(sender: str) -> tuple[str, str]:
    """(header value, envelope address) of a sender like ``Name <addr>``."""
    name, addr = parseaddr(sender)
    if not addr:
        raise ValueError(f"email_from: not an email address: {sender!r}")
    header = formataddr((encode_header_value(name), addr)) if name else addr
    return header, addr


def _map_response_error(exc: aiosmtplib.SMTPResponseException, *, stage: str,
                        recipient_stage: bool) -> Exception:
    code = str(exc.code)
    if 400 <= exc.code < 500:
        return TransientChannelError(f"email: {stage} deferred ({exc.code})", code=code)
    # 5xx: permanent; a refused recipient means the address itself is bad (hard bounce)
    return PermanentChannelError(f"email: {stage} refused ({exc.code})", code=code,
                                 revoke_address=recipient_stage and exc.code in (550, 551, 553))


async def _greeted(client: aiosmtplib.SMTP) -> None:
    """EHLO once a connection (HELO where the server refuses EHLO), as aiosmtplib's MAIL would: the server's
    extensions are known after it."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()


class SmtpEmailChannel:
    name: ClassVar[ChannelName] = ChannelName.email

    def __init__(self, config: SmtpConfig, *, message_id_domain: str | None = None) -> None:
        self._config = config
        self._sender_header, self._envelope_from = _format_sender(config.sender)
        self._domain = message_id_domain or self._envelope_from.rsplit("@", 1)[-1]
        self._idle: asyncio.Queue[aiosmtplib.SMTP] | None = None
        self._all: list[aiosmtplib.SMTP] = []

    def new_message_id(self) -> str:
        return f"<{uuid.uuid4().hex}@{self._domain}>"

    def build(self, msg: OutboundMessage, *, eight_bit: bool = False) -> bytes:
        """The message's bytes; ``eight_bit`` where the server takes 8-bit bodies (8BITMIME)."""
        message_id = msg.message_id or self.new_message_id()
        return build_email(
            sender=self._sender_header, to=msg.to, subject=msg.subject or "", text=msg.text,
            html=msg.html, message_id=message_id, date=datetime.now(UTC), headers=msg.headers,
            boundary=new_boundary(message_id), eight_bit=eight_bit,
        )

    async def _pool(self) -> asyncio.Queue[aiosmtplib.SMTP]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self._config.connections):
                client = aiosmtplib.SMTP(
                    hostname=self._config.host, port=self._config.port, timeout=self._config.timeout,
                    use_tls=self._config.use_tls, start_tls=self._config.start_tls,
                    username=self._config.username, password=self._config.password,
                )
                self._all.append(client)
                self._idle.put_nowait(client)
        return self._idle

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        try:
            to = ascii_address(msg.to)
        except (ValueError, UnicodeError) as exc:
            raise PermanentChannelError(f"email: cannot address this mailbox ({exc})", code="address") from exc
        pool = await self._pool()
        client = await pool.get()
        try:
            await self._transaction(client, to, msg)
        finally:
            pool.put_nowait(client)
        return SendReceipt(provider_message_id=msg.message_id or "")

    async def _transaction(self, client: aiosmtplib.SMTP, to: str, msg: OutboundMessage) -> None:
        """One message on ``client``, built once the server's EHLO says whether it takes 8-bit bodies."""
        # before DATA: any failure means nothing was sent
        try:
            if not client.is_connected:
                await client.connect()
            await _greeted(client)
            eight_bit = client.supports_extension("8bitmime")
            data = self.build(msg, eight_bit=eight_bit)
            await client.mail(self._envelope_from, options=["BODY=8BITMIME"] if eight_bit else None)
            await client.rcpt(to)
        except aiosmtplib.SMTPRecipientRefused as exc:
            await self._reset(client)
            raise _map_response_error(exc, stage="recipient", recipient_stage=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(client)
            raise _map_response_error(exc, stage="sender", recipient_stage=False) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise TransientChannelError(f"email: cannot reach the SMTP server ({type(exc).__name__})") from exc
        # DATA: a definite answer is definite; a lost connection or a timeout is in doubt
        try:
            await client.data(data)
        except aiosmtplib.SMTPDataError as exc:
            await self._reset(client)
            raise _map_response_error(exc, stage="message", recipient_stage=False) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise InDoubtChannelError(f"email: connection lost during DATA ({type(exc).__name__})") from exc

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    async def aclose(self) -> None:
        for client in self._all:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
        self._all.clear()
        self._idle = None
