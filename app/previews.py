"""The exact message a member would get from a template on a channel — what a send builds, rendered from the
member's real data (profile, card, last purchase, time zone) — with what the channel makes of it: SMS
encoding, segments and cost; push payload size; the receipt's lines at the till's width.

Used by ``clarion templates preview`` and ``GET /api/v1/templates/{name}/preview``. Nothing is sent or
written. The member links in a preview are inert: a preview is made with :class:`PreviewSigner`, whose every
token is the word ``PREVIEW`` (``https://.../p/PREVIEW``, ``/u/PREVIEW``), so a preview a marketer forwards
or leaves in a browser never opens the member's preference center nor unsubscribes anyone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from activities.messages import CampaignInfo, MessageBuilder, Target
from campaigns.costs import unit_costs
from campaigns.rules import program_rules
from channels.receipt import ReceiptCoupon, format_receipt
from channels.sms_text import sms_segments
from consent.tokens import BadToken
from members.profile import address_lines
from members.service import get_program
from storage.tables import Card, Event, Member
from templates.render import Renderer, TemplateProblem

CHANNELS = ("email", "sms", "whatsapp", "telegram", "push", "inbox", "receipt", "direct_mail")
PREVIEW_TOKEN = "PREVIEW"


class PreviewSigner:
    """What ``consent.tokens.Signer`` offers, for previews: every token is ``PREVIEW`` (no member, delivery or
    expiry in it, nothing any page accepts) and none verifies."""

    def sign(self, purpose: str, payload: dict, *, ttl_s: int, now: float | None = None) -> str:
        return PREVIEW_TOKEN

    def verify(self, purpose: str, token: str, *, now: float | None = None) -> dict:
        raise BadToken()


def inert(builder: MessageBuilder) -> MessageBuilder:
    """``builder`` making the same messages with :class:`PreviewSigner`'s links."""
    if isinstance(getattr(builder, "_signer", None), PreviewSigner):
        return builder
    quiet = copy.copy(builder)
    quiet._signer = PreviewSigner()  # type: ignore[assignment]
    return quiet


class PreviewError(LookupError):
    """Unknown member or template, or a channel the template has no body for: ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Preview:
    template: str
    version: int
    channel: str
    locale: str
    subject: str | None = None
    preheader: str | None = None
    html: str | None = None
    text: str = ""
    title: str | None = None
    link: str | None = None
    image: str | None = None
    buttons: list[dict[str, str]] = field(default_factory=list)
    whatsapp_template: dict[str, Any] | None = None
    sms: dict[str, Any] | None = None              # encoding, units, segments, cost
    push: dict[str, Any] | None = None             # payload bytes, limit
    receipt: dict[str, Any] | None = None          # width, lines
    cost: str | None = None


def preview(*, engine: Engine, renderer: Renderer, builder: MessageBuilder, program: str, template: str,
            channel: str, member: str, locale: str | None = None, version: int | None = None,
            width: int = 42) -> Preview:
    if channel not in CHANNELS:
        raise PreviewError(f"channel {channel!r}: use one of {', '.join(CHANNELS)}", "channel")
    with Session(engine) as s:
        prog = get_program(s, program)
        m = s.scalar(select(Member).where(Member.program_id == prog.id, Member.external_id == member,
                                          Member.erased_at.is_(None)))  # type: ignore[union-attr]
        if m is None:
            raise PreviewError(f"member {member!r} not found in program {program!r}", "member")
        card = s.execute(select(Card.number, Card.status).where(Card.member_id == m.id, Card.status == "active")
                         .order_by(Card.id).limit(1)).first()
        last = s.execute(select(Event.occurred_at, Event.payload).where(
            Event.member_id == m.id, Event.type == "purchase").order_by(Event.occurred_at.desc()).limit(1)).first()  # type: ignore[union-attr]
        rules = program_rules(prog.settings)
    try:
        meta = renderer.meta(template, version)
        if channel not in renderer.channels(template, version):
            raise PreviewError(f"template {template!r} has no {channel} body", "channel")
        chosen = renderer.resolve_locale(template, locale or m.locale, prog.default_locale, channel=channel,
                                         version=version)
    except TemplateProblem as exc:
        raise PreviewError(str(exc), "template") from None
    context = {"member": {**(m.attributes or {}), "first_name": m.first_name, "last_name": m.last_name,
                          "kind": m.kind, "locale": m.locale},
               "time_zone": m.time_zone or prog.time_zone,
               "card": {"number": card.number, "status": card.status} if card else None,
               "last_purchase": {**(last.payload or {}), "occurred_at": last.occurred_at.isoformat()} if last else None}
    address = {"email": m.email, "sms": m.phone, "whatsapp": m.phone, "telegram": m.telegram_chat_id,
               "direct_mail": "\n".join(address_lines(m.postal_address, m.first_name, m.last_name))}.get(channel) or ""
    costs = unit_costs(rules.unit_costs)
    info = CampaignInfo(id=0, key="preview", name="Preview", program_id=prog.id or 0,
                        program={"key": prog.key, "name": prog.name, "currency": prog.currency,
                                 "time_zone": prog.time_zone, "brand": rules.brand.model_dump()},
                        template=lambda step, variant=None: (template, meta["version"]), costs=costs)
    target = Target(delivery_id=0, member_id=m.id or 0, channel=channel, locale=chosen, context=context,
                    address=address, session_open=True)
    try:
        msg, cost = inert(builder).build(info, target)
    except TemplateProblem as exc:
        raise PreviewError(str(exc), "template") from None
    # only what the channel carries: a title on push, inbox, receipt and letters; buttons on Telegram
    out = Preview(template=template, version=int(meta["version"]), channel=channel, locale=chosen,
                  subject=msg.subject, html=msg.html, text=msg.text,
                  title=msg.title if channel in ("push", "inbox", "receipt", "direct_mail") else None,
                  link=msg.link if channel in ("push", "inbox") else None,
                  image=msg.image_url if channel == "push" else None,
                  buttons=[{"text": b.text, "url": b.url} for b in msg.buttons] if channel == "telegram" else [],
                  cost=str(cost))
    if channel == "email":
        out.preheader = renderer.render_email(template, chosen, {**context, "program": info.program,
                                                                 "campaign": {"key": "preview", "name": "Preview"},
                                                                 "unsubscribe_url": "", "preferences_url": ""},
                                              version).preheader
    if channel == "sms":
        info_sms = sms_segments(msg.text)
        out.sms = {"encoding": info_sms.encoding, "units": info_sms.units, "segments": info_sms.segments}
    if channel == "whatsapp":
        out.whatsapp_template = {"content_sid": msg.content_sid, "variables": msg.content_variables}
    if channel == "push":
        from channels.push_fcm import MAX_PAYLOAD, payload_size

        out.push = {"payload_bytes": payload_size(msg.title, msg.text, msg.image_url, {"link": msg.link} if msg.link else {}),
                    "limit_bytes": MAX_PAYLOAD}
    if channel == "receipt":
        r = format_receipt(title=msg.title, text=msg.text, width=width,
                           coupon=ReceiptCoupon(msg.coupon) if msg.coupon and msg.coupon.isascii() else None)
        out.receipt = {"width": width, "lines": r.lines}
    return out


def sample_members(*, engine: Engine, program: str, limit: int = 5) -> list[str]:
    """A few external ids to preview with (the CLI's hint when no member is given)."""
    with Session(engine) as s:
        prog = get_program(s, program)
        return list(s.scalars(select(Member.external_id).where(Member.program_id == prog.id,
                                                               Member.erased_at.is_(None))  # type: ignore[union-attr]
                              .order_by(func.random()).limit(limit)))
