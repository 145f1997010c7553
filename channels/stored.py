"""The channels whose provider is Clarion itself: the till receipt, the app inbox and direct mail.

"Sending" keeps the rendered message in ``stored_message`` for the member to pull (the POS asks what to
print at checkout, the app asks for the member's inbox) or for the campaign's print batch (direct mail).
Storing is idempotent per delivery: a retried send finds the row it made and answers the same receipt.

Receipt and inbox messages count as ``sent`` once stored (they are with the member's channel, like an
email handed to the relay) and ``delivered`` when printed or read. A direct-mail letter is ``queued``:
it counts as sent when its batch PDF is handed over (``activities.direct_mail``).

For direct mail ``msg.to`` is the address block, one line per ``\\n``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import ClassVar

from sqlalchemy import select
from sqlalchemy.engine import Engine

from channels.base import OutboundMessage, PermanentChannelError, SendReceipt
from storage.db import insert_ignore, session_scope
from storage.tables import ChannelName, StoredMessage, utcnow

STORED_CHANNELS = frozenset({ChannelName.receipt, ChannelName.inbox, ChannelName.direct_mail})


class StoredChannel:
    name: ClassVar[ChannelName]

    def __init__(self, engine: Engine, channel: ChannelName) -> None:
        if channel not in STORED_CHANNELS:
            raise ValueError(f"{channel} is not kept by Clarion")
        self._engine = engine
        self.channel = channel

    def _store(self, msg: OutboundMessage) -> int:
        if not (msg.member_id and msg.campaign_id and msg.program_id):
            raise PermanentChannelError(f"{self.channel}: message without member, campaign or program",
                                        code="incomplete")
        data: dict[str, object] = {}
        if self.channel == ChannelName.direct_mail:
            lines = [line for line in msg.to.split("\n") if line.strip()]
            if not lines:
                raise PermanentChannelError("direct_mail: no postal address", code="no_address")
            data["address"] = lines
        now = utcnow()
        row = {
            "program_id": msg.program_id, "campaign_id": msg.campaign_id, "member_id": msg.member_id,
            "delivery_id": msg.delivery_id, "channel": str(self.channel), "title": msg.title,
            "body": msg.html if self.channel == ChannelName.direct_mail and msg.html else msg.text,
            "link": msg.link, "coupon": msg.coupon, "locale": msg.locale, "data": data, "state": "pending",
            "expires_at": datetime.fromisoformat(msg.expires_at) if msg.expires_at else None,
            "created_at": now, "updated_at": now,
        }
        with session_scope(self._engine) as s:
            s.execute(insert_ignore(s, StoredMessage.__table__, ["delivery_id"]), [row])
            return int(s.scalar(select(StoredMessage.id).where(StoredMessage.delivery_id == msg.delivery_id)) or 0)

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        stored_id = await asyncio.to_thread(self._store, msg)
        return SendReceipt(provider_message_id=f"{self.channel}:{stored_id}",
                           queued=self.channel == ChannelName.direct_mail)

    async def aclose(self) -> None:
        pass
