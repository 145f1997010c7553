"""WhatsApp through Twilio's Messages API (``whatsapp:`` addresses), on the official ``twilio`` library.

WhatsApp lets a business write free-form text only inside the 24-hour customer service window that opens
when the member last wrote to us; outside it, only an approved template may start the conversation (Twilio
Content API: ``ContentSid`` + ``ContentVariables``). The caller knows the window (``msg.session_open``,
from the member's last inbound message); this adapter picks the form:

    session open                         → Body = msg.text
    session closed, msg.content_sid set  → ContentSid + ContentVariables (JSON), no Body
    session closed, no template          → PermanentChannelError("no_template"), nothing sent

Errors: those of ``channels.sms_twilio.map_twilio_error`` (21610 unsubscribed, 21211/21614 bad number,
20429/429 rate limited, 5xx in doubt, transport errors), plus the WhatsApp ones::

    code 63016 (free-form outside the 24 h window)   → PermanentChannelError (not revoked: a template may go)
    code 63014 (the member blocked the business)     → PermanentChannelError(revoke_address=True)

The same codes arrive asynchronously in status callbacks (``parse_status`` of ``channels.sms_twilio``);
the webhook applies the same rule there. Inbound messages (``parse_inbound``) open the window again.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import ClassVar

from twilio.base.exceptions import TwilioRestException

from channels.base import OutboundMessage, PermanentChannelError, SendReceipt
from channels.sms_twilio import TwilioMessaging, e164
from storage.tables import ChannelName

SESSION = timedelta(hours=24)
OUTSIDE_WINDOW = 63016
BLOCKED = 63014
REVOKING_CODES = frozenset({"21610", str(BLOCKED)})   # status callbacks with these codes revoke the address


def session_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """True when the member wrote to us less than 24 hours before ``now``."""
    return last_inbound_at is not None and now - last_inbound_at < SESSION


def whatsapp_address(number: str) -> str:
    return "whatsapp:" + e164(number.removeprefix("whatsapp:"))


class TwilioWhatsAppChannel(TwilioMessaging):
    name: ClassVar[ChannelName] = ChannelName.whatsapp
    label = "whatsapp"

    def _sender_args(self) -> dict[str, str]:
        sender = self._config.sender
        if sender.startswith("MG"):
            return {"messaging_service_sid": sender}
        return {"from_": "whatsapp:" + sender.removeprefix("whatsapp:")}

    def _create(self, delivery_id: int, **fields: object) -> str:  # type: ignore[override]
        try:
            return super()._create(delivery_id, **fields)
        except PermanentChannelError as exc:
            cause = exc.__cause__
            code = cause.code if isinstance(cause, TwilioRestException) else None
            if code == OUTSIDE_WINDOW:
                raise PermanentChannelError("whatsapp: free-form text outside the 24 h window; "
                                            "an approved template is needed", code=str(code)) from cause
            if code == BLOCKED:
                raise PermanentChannelError("whatsapp: the member blocked the business", code=str(code),
                                            revoke_address=True) from cause
            raise

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        to = whatsapp_address(msg.to)
        if msg.session_open:
            fields: dict[str, object] = {"to": to, "body": msg.text}
        elif msg.content_sid:
            fields = {"to": to, "content_sid": msg.content_sid}
            if msg.content_variables:
                fields["content_variables"] = json.dumps(msg.content_variables, ensure_ascii=False,
                                                         separators=(",", ":"))
        else:
            raise PermanentChannelError("whatsapp: the 24 h window is closed and the template has no "
                                        "approved WhatsApp template (content_sid)", code="no_template")
        sid = await asyncio.to_thread(self._create, msg.delivery_id, **fields)
        return SendReceipt(provider_message_id=sid)
