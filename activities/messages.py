"""What a member gets on a channel: a delivery target rendered into the channel's ``OutboundMessage`` and
its cost. Used by the delivery activities; no I/O beyond the (cached) template library.

Email carries the one-click unsubscribe link (RFC 8058 headers); SMS its segment count, which its cost
is multiplied by; WhatsApp the approved template for outside the 24 h window; push its title, image and
deep link; Telegram its URL buttons; the receipt, inbox and letter their heading, coupon and expiry.

Links are tracked here (``analytics.links``): email HTML and text, Telegram's text and buttons, the push
and inbox link go through the click redirect, and email gets the open pixel. A preview (delivery id 0, no
delivery row) keeps its links as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from analytics.links import Tracker, personal_words
from campaigns.costs import message_cost
from channels.base import Button, OutboundMessage
from channels.sms_text import sms_segments
from consent.tokens import (
    PREFERENCES,
    PREFERENCES_TTL_S,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TTL_S,
    Signer,
)
from templates.render import Renderer


@dataclass(frozen=True, slots=True)
class Target:
    """A planned delivery about to go to one member on one channel."""

    delivery_id: int
    member_id: int
    channel: str
    locale: str
    context: dict[str, Any]
    step: str = "main"
    address: str = ""                          # on ``channel``: email, phone, chat id, address block
    addresses: dict[str, str] = field(default_factory=dict)   # every channel's (for a fallback)
    push_tokens: tuple[str, ...] = ()
    session_open: bool = False                 # WhatsApp's 24 h window
    candidates: tuple[str, ...] = ()           # the channels the member may get, in the campaign's order
    attempts: tuple[dict[str, Any], ...] = ()  # channels tried before (fallback), with their error codes
    time_zone: str | None = None
    member_locale: str | None = None
    quiet: Any = None                          # the member's own quiet hours (schedule.QuietHours), if any
    variant: str | None = None                 # the member's A/B variant (campaigns.variants)


@dataclass(frozen=True)
class CampaignInfo:
    """The parts of a campaign's context message building needs."""

    id: int
    key: str
    name: str
    program_id: int
    program: dict[str, Any]
    template: Any                              # (step, variant) → (template name, pinned version or None)
    costs: dict[str, Decimal]
    expires_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# channels whose links are tracked; SMS, WhatsApp, receipt and direct mail are not (see analytics.links)
TRACKED = frozenset({"email", "telegram", "push", "inbox"})


class MessageBuilder:
    def __init__(self, *, renderer: Renderer, signer: Signer, base_url: str, unsubscribe_mailto: str) -> None:
        self._renderer = renderer
        self._signer = signer
        self._base_url = base_url.rstrip("/")
        self._mailto = unsubscribe_mailto
        self._domain = unsubscribe_mailto.rsplit("@", 1)[-1]

    def unsubscribe_url(self, delivery_id: int) -> tuple[str, str]:
        token = self._signer.sign(UNSUBSCRIBE, {"d": delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
        return f"{self._base_url}/u/{token}", token

    def preferences_url(self, member_id: int) -> str:
        """The member's preference center (sealed link: nothing readable in it)."""
        return f"{self._base_url}/p/{self._signer.sign(PREFERENCES, {'m': member_id}, ttl_s=PREFERENCES_TTL_S)}"

    def _tracker(self, t: Target) -> Tracker:
        """Link labels leave out the member's names and mailbox name (a link's text may greet them)."""
        member = t.context.get("member") or {}
        mailbox = t.address.split("@", 1)[0] if "@" in t.address else None
        personal = personal_words((member.get("first_name"), member.get("last_name"), mailbox))
        return Tracker(self._signer, self._base_url, t.delivery_id, personal)

    def build(self, c: CampaignInfo, t: Target) -> tuple[OutboundMessage, Decimal]:
        """The message and what it costs. Raises templates.render.TemplateProblem."""
        url, token = self.unsubscribe_url(t.delivery_id)
        template, version = c.template(t.step, t.variant)
        context = {"time_zone": c.program.get("time_zone"), **t.context, "program": c.program,
                   "campaign": {"key": c.key, "name": c.name},
                   "unsubscribe_url": url, "preferences_url": self.preferences_url(t.member_id)}
        track = self._tracker(t) if t.delivery_id > 0 and t.channel in TRACKED else None
        if t.channel == "email":
            rendered = self._renderer.render_email(template, t.locale, context, version)
            html, text = rendered.html, rendered.text
            if track is not None:
                html, text = track.email_html(html), track.text(text)
            msg = OutboundMessage(
                delivery_id=t.delivery_id, to=t.address, subject=rendered.subject, text=text,
                html=html, message_id=f"<d{t.delivery_id}.c{c.id}@{self._domain}>",
                headers={
                    "List-Unsubscribe": f"<{url}>, <mailto:{self._mailto}?subject=unsubscribe%20{token}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                    "X-Clarion-Campaign": c.key,
                },
                member_id=t.member_id, campaign_id=c.id, program_id=c.program_id, locale=t.locale)
            return msg, message_cost("email", c.costs)
        r = self._renderer.render(template, t.channel, t.locale, context, version)
        data = {"campaign": c.key, "delivery": str(t.delivery_id)} if t.channel == "push" else {}
        text, link, buttons = r.text, r.link, [(b, u) for b, u in r.buttons if b and u]
        if track is not None:
            if t.channel == "telegram":
                text, buttons = track.html(text), track.buttons(buttons)
            link = track.link(link)
        msg = OutboundMessage(
            delivery_id=t.delivery_id, to=t.address, text=text, title=r.title, image_url=r.image,
            link=link, data=data, buttons=tuple(Button(b, u) for b, u in buttons),
            content_sid=r.content_sid, content_variables=r.content_variables or {},
            session_open=t.session_open, coupon=r.coupon, member_id=t.member_id, campaign_id=c.id,
            program_id=c.program_id, expires_at=c.expires_at, locale=t.locale,
            html=r.text if t.channel == "direct_mail" else None)
        segments = sms_segments(r.text).segments if t.channel == "sms" else 1
        return msg, message_cost(t.channel, c.costs, segments=segments)
