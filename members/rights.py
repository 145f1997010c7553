"""Member rights: access (GDPR art. 15; 152-FZ art. 14) and erasure (GDPR art. 17; 152-FZ art. 21).

    export_member(...)   everything Clarion holds about one member, as a ``MemberExport`` (JSON, schema below)
    erase_member(...)    the member's personal data removed in one transaction; the figures stay as they were

Export: JSON with a schema version (``SCHEMA_VERSION``; a new key is not a new version, a removed or renamed
one is). Times are ISO 8601 in UTC, amounts are decimal strings, lists are in the order things happened::

    schema, schema_version, generated_at
    program            {key, name}
    member             every column: external_id, kind, names, locale, time_zone, email, phone,
                       telegram_chat_id, postal_address, whatsapp_inbound_at, preferences, attributes,
                       created_at, updated_at, erased_at
    cards              [{number, status, issued_at}]
    push_devices       [{token, platform, created_at}]            (the whole token: it is the member's data)
    consent            {state: [{channel, topic, status, since}],
                        ledger: [{at, channel, topic, action, source, wording_version, text_hash, ip,
                                  user_agent, campaign}]}
    confirmations      [{channel, address, topics, status, requested_at, sent_at, confirmed_at,
                         provider_message_id}]                    (double opt-in requests, with their address)
    links              [{channel, topics, created_at, expires_at, used_at}]    (the token is never stored)
    events             [{id, type, occurred_at, received_at, payload}]
    deliveries         [{id, campaign, step, occurrence, channel, status, reason, error_code, locale, variant,
                         created_at, sent_at, cost, provider_message_id, attempts, responses: [{kind, at, value}]}]
    stored_messages    [{delivery_id, campaign, channel, title, body, link, coupon, locale, data, state,
                         receipt_number, batch, created_at, expires_at}]
    sandbox_requests   [{delivery_id, channel, provider, method, url, headers, body, created_at}]
    coupons            [{pool, code, assigned_at}]                 (unique codes drawn for the member)

Erasure keeps what the figures are made of and removes what identifies the person:

- member: names, email, phone, Telegram chat id, postal address, attributes, preferences, the WhatsApp window,
  locale and time zone are cleared; ``external_id`` becomes ``erased-<32 random hex>`` (nothing links it to
  the old id, so it cannot be reversed); ``erased_at`` is set. Locale and time zone go too: nothing needs
  them once nothing is sent, and a rare pair narrows a small program to a few people; each delivery keeps
  the locale it was sent in, which the by-locale figures are made of. ``kind`` stays (two values).
- deleted: cards, push tokens, member links, the sandbox's recorded requests for the member's deliveries
  (and unfiled ones, such as double opt-in confirmations, that name one of the member's addresses).
- kept, scrubbed: consent ledger rows (proof that consent existed and was withdrawn) without ip and user
  agent; double opt-in requests (confirmations) without the address (the only personal value they hold;
  channel, topics and times stay), open ones expired (a pending one is never sent, claimed only while still
  pending, and no link confirms anything); stored messages (receipt, inbox, letters)
  without title, body, link, coupon, address, till and receipt number (pending ones expire); event payloads
  down to ``amount`` and ``currency`` (revenue and conversions; store, items and receipt numbers are a trail
  of where and what the person bought); provider message ids that embed an address (Telegram's
  ``chat:message``) get ``erased`` in its place.
- kept, unlinked: coupon codes drawn for the member stay given (never drawn for anyone else: the code went
  out in a message, and the till may still take it, checking it against the POS's or partner's own list,
  which needs nothing from Clarion) but name no member and no draw time any more (``members.coupons``:
  the time matched the member's deliveries). A partner's record of who redeemed a code (a card) can no
  longer be joined to what is kept here. A draw of the member's in flight finishes first.
- kept as they are: deliveries and responses (the member id is an opaque number now), so every campaign
  report is identical before and after.
- added: one ``revoked`` ledger row per channel for the whole channel (topic ``*``, source ``api``): nothing
  is ever sent to the member again, service messages included.

Erasing again re-scrubs (a send in flight at the first erasure may have left a row behind) and otherwise
changes nothing; it answers the same. The old external id is unknown afterwards: pushing it again creates
a new member. Nothing personal is logged: the log names the member's internal id only.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from consent import ledger
from consent.policy import CHANNEL_WIDE
from members import coupons
from members.service import get_program
from storage.db import session_scope
from storage.tables import (
    Campaign,
    Card,
    ChannelName,
    Confirmation,
    ConsentAction,
    ConsentRecord,
    ConsentSource,
    ConsentState,
    CouponCode,
    Delivery,
    Event,
    Member,
    MemberLink,
    Program,
    PushToken,
    Response,
    SandboxMessage,
    StoredMessage,
    utcnow,
)

log = logging.getLogger(__name__)

SCHEMA = "clarion.member-export"
SCHEMA_VERSION = 1
PSEUDONYM_PREFIX = "erased-"
KEPT_PAYLOAD_KEYS = ("amount", "currency")     # what revenue and conversion figures read from an event
ERASED = "erased"
_OPEN_STORED = ("pending", "reserved")         # a stored message that could still reach the member
_OPEN_CONFIRMATIONS = ("pending", "sending", "sent", "in_doubt")   # a double opt-in that could still be confirmed


class MemberNotFound(LookupError):
    def __init__(self, external_id: str, program: str) -> None:
        super().__init__(f"member {external_id!r} not found in program {program!r}")
        self.external_id = external_id


# --- the export's shape -------------------------------------------------------------------------


class ProgramOut(BaseModel):
    key: str
    name: str


class ProfileOut(BaseModel):
    external_id: str
    kind: str
    first_name: str | None
    last_name: str | None
    locale: str | None
    time_zone: str | None
    email: str | None
    phone: str | None
    telegram_chat_id: str | None
    postal_address: dict[str, Any] | None
    whatsapp_inbound_at: datetime | None
    preferences: dict[str, Any] | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None = Field(description="when the personal data was erased; null: never")


class CardOut(BaseModel):
    number: str
    status: str
    issued_at: datetime


class PushDeviceOut(BaseModel):
    token: str
    platform: str
    created_at: datetime


class ConsentStateOut(BaseModel):
    channel: str
    topic: str = Field(description="'*' is the whole channel")
    status: str
    since: datetime


class ConsentRecordOut(BaseModel):
    at: datetime
    channel: str
    topic: str
    action: str
    source: str
    wording_version: str | None
    text_hash: str | None = Field(description="SHA-256 of the exact text the member was shown")
    ip: str | None
    user_agent: str | None
    campaign: str | None = Field(description="the key of the campaign the act came from (an unsubscribe link)")


class ConsentOut(BaseModel):
    state: list[ConsentStateOut]
    ledger: list[ConsentRecordOut]


class ConfirmationOut(BaseModel):
    channel: str
    address: str | None
    topics: list[str]
    status: str
    requested_at: datetime
    sent_at: datetime | None
    confirmed_at: datetime | None
    provider_message_id: str | None


class LinkOut(BaseModel):
    channel: str
    topics: list[str]
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None


class EventOut(BaseModel):
    id: str = Field(description="the loyalty core's id of the event")
    type: str
    occurred_at: datetime
    received_at: datetime
    payload: dict[str, Any]


class ResponseOut(BaseModel):
    kind: str
    at: datetime
    value: Decimal | None


class DeliveryOut(BaseModel):
    id: int
    campaign: str
    step: str
    occurrence: str
    channel: str | None
    status: str
    reason: str | None
    error_code: str | None
    locale: str | None
    variant: str | None
    created_at: datetime
    sent_at: datetime | None
    cost: Decimal | None
    provider_message_id: str | None
    attempts: list[dict[str, Any]] | None
    responses: list[ResponseOut]


class StoredMessageOut(BaseModel):
    delivery_id: int
    campaign: str
    channel: str
    title: str | None
    body: str
    link: str | None
    coupon: str | None
    locale: str | None
    data: dict[str, Any]
    state: str
    receipt_number: str | None
    batch: str | None
    created_at: datetime
    expires_at: datetime | None


class SandboxRequestOut(BaseModel):
    delivery_id: int | None
    channel: str
    provider: str
    method: str
    url: str
    headers: dict[str, Any]
    body: str
    created_at: datetime


class CouponOut(BaseModel):
    pool: str
    code: str
    assigned_at: datetime | None


class MemberExport(BaseModel):
    """Everything Clarion holds about one member (see the module docstring of ``members.rights``)."""

    schema_: str = Field(default=SCHEMA, alias="schema")
    schema_version: int = SCHEMA_VERSION
    generated_at: datetime
    program: ProgramOut
    member: ProfileOut
    cards: list[CardOut]
    push_devices: list[PushDeviceOut]
    consent: ConsentOut
    confirmations: list[ConfirmationOut]
    links: list[LinkOut]
    events: list[EventOut]
    deliveries: list[DeliveryOut]
    stored_messages: list[StoredMessageOut]
    sandbox_requests: list[SandboxRequestOut]
    coupons: list[CouponOut]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class Erasure(BaseModel):
    """The answer to an erasure: the same every time it is asked again."""

    program: str
    external_id: str = Field(description="the pseudonym the erased member is known by from now on")
    erased_at: datetime
    blocked_channels: list[str] = Field(description="channels revoked for good (topic '*')")


# --- helpers ------------------------------------------------------------------------------------


def _utc(dt: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every time Clarion stores is UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def find_member(session: Session, *, program: str, external_id: str) -> tuple[Program, Member]:
    prog = get_program(session, program)
    member = session.scalar(select(Member).where(Member.program_id == prog.id, Member.external_id == external_id))
    if member is None:
        raise MemberNotFound(external_id, program)
    return prog, member


def _campaign_keys(session: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return {}
    return dict(session.execute(select(Campaign.id, Campaign.key).where(
        Campaign.id.in_(wanted))).all())  # type: ignore[union-attr,arg-type]


def _addresses(session: Session, member: Member) -> list[str]:
    """The member's addresses as they may appear in a provider request: as stored and URL-encoded."""
    found: list[str] = []
    if member.email:
        found += [member.email, quote(member.email, safe="")]
    if member.phone:
        found += [member.phone, member.phone.lstrip("+")]          # "+7..." is "%2B7..." in a form body
    if member.telegram_chat_id and len(member.telegram_chat_id) >= 5:
        found.append(member.telegram_chat_id)
    found += session.scalars(select(PushToken.token).where(PushToken.member_id == member.id)).all()
    return list(dict.fromkeys(a for a in found if a))


def _sandbox_rows(program_id: int, member: Member, addresses: list[str]) -> Any:
    """The sandbox's recorded requests of the member: filed under their deliveries, or unfiled (delivery id
    none or 0: a double opt-in confirmation, a bot's answer) and naming one of their addresses."""
    deliveries = select(Delivery.id).where(Delivery.member_id == member.id)
    mine = SandboxMessage.delivery_id.in_(deliveries)  # type: ignore[union-attr]
    if not addresses:
        return mine
    unfiled = [or_(SandboxMessage.delivery_id.is_(None), SandboxMessage.delivery_id == 0),  # type: ignore[union-attr]
               or_(SandboxMessage.program_id == program_id, SandboxMessage.program_id.is_(None)),  # type: ignore[union-attr]
               or_(*(c.contains(a, autoescape=True) for a in addresses  # type: ignore[attr-defined]
                     for c in (SandboxMessage.body, SandboxMessage.url)))]
    return or_(mine, and_(*unfiled))


# --- export -------------------------------------------------------------------------------------


def export_member(*, engine: Engine, program: str, external_id: str, now: datetime | None = None) -> MemberExport:
    """Everything Clarion holds about the member (an erased member: what is left)."""
    with Session(engine) as s:
        prog, m = find_member(s, program=program, external_id=external_id)
        mid = m.id
        records = ledger.history(session=s, member_id=mid or 0)
        deliveries = list(s.scalars(select(Delivery).where(Delivery.member_id == mid).order_by(Delivery.id)))  # type: ignore[arg-type]
        responses: dict[int, list[ResponseOut]] = {}
        for r in s.scalars(select(Response).where(Response.delivery_id.in_([d.id for d in deliveries]))  # type: ignore[attr-defined]
                           .order_by(Response.at, Response.id)):  # type: ignore[arg-type]
            responses.setdefault(r.delivery_id, []).append(ResponseOut(kind=r.kind, at=_utc(r.at), value=r.value))  # type: ignore[arg-type]
        stored = list(s.scalars(select(StoredMessage).where(StoredMessage.member_id == mid)
                                .order_by(StoredMessage.id)))  # type: ignore[arg-type]
        sandbox = list(s.scalars(select(SandboxMessage).where(_sandbox_rows(prog.id or 0, m, _addresses(s, m)))
                                 .order_by(SandboxMessage.id)))  # type: ignore[arg-type]
        keys = _campaign_keys(s, {r.campaign_id for r in records} | {d.campaign_id for d in deliveries}
                              | {x.campaign_id for x in stored})
        t = _utc
        return MemberExport(
            generated_at=t(now or utcnow()),  # type: ignore[arg-type]
            program=ProgramOut(key=prog.key, name=prog.name),
            member=ProfileOut(
                external_id=m.external_id, kind=m.kind, first_name=m.first_name, last_name=m.last_name,
                locale=m.locale, time_zone=m.time_zone, email=m.email, phone=m.phone,
                telegram_chat_id=m.telegram_chat_id, postal_address=m.postal_address,
                whatsapp_inbound_at=t(m.whatsapp_inbound_at), preferences=m.preferences, attributes=m.attributes,
                created_at=t(m.created_at), updated_at=t(m.updated_at), erased_at=t(m.erased_at)),  # type: ignore[arg-type]
            cards=[CardOut(number=c.number, status=c.status, issued_at=t(c.issued_at))  # type: ignore[arg-type]
                   for c in s.scalars(select(Card).where(Card.member_id == mid).order_by(Card.id))],  # type: ignore[arg-type]
            push_devices=[PushDeviceOut(token=p.token, platform=p.platform, created_at=t(p.created_at))  # type: ignore[arg-type]
                          for p in s.scalars(select(PushToken).where(PushToken.member_id == mid)
                                             .order_by(PushToken.id))],  # type: ignore[arg-type]
            consent=ConsentOut(
                state=[ConsentStateOut(channel=c.channel, topic=c.topic, status=c.status, since=t(c.updated_at))  # type: ignore[arg-type]
                       for c in s.scalars(select(ConsentState).where(ConsentState.member_id == mid)
                                          .order_by(ConsentState.channel, ConsentState.topic))],  # type: ignore[arg-type]
                ledger=[ConsentRecordOut(at=t(r.at), channel=r.channel, topic=r.topic, action=r.action,  # type: ignore[arg-type]
                                         source=r.source, wording_version=r.wording_version, text_hash=r.text_hash,
                                         ip=r.ip, user_agent=r.user_agent,
                                         campaign=keys.get(r.campaign_id) if r.campaign_id else None)
                        for r in records]),
            confirmations=[ConfirmationOut(channel=c.channel, address=c.address, topics=list(c.topics),
                                           status=c.status, requested_at=t(c.requested_at), sent_at=t(c.sent_at),  # type: ignore[arg-type]
                                           confirmed_at=t(c.confirmed_at), provider_message_id=c.provider_message_id)
                           for c in s.scalars(select(Confirmation).where(Confirmation.member_id == mid)
                                              .order_by(Confirmation.id))],  # type: ignore[arg-type]
            links=[LinkOut(channel=x.channel, topics=list(x.topics), created_at=t(x.created_at),  # type: ignore[arg-type]
                           expires_at=t(x.expires_at), used_at=t(x.used_at))  # type: ignore[arg-type]
                   for x in s.scalars(select(MemberLink).where(MemberLink.member_id == mid)
                                      .order_by(MemberLink.created_at))],  # type: ignore[arg-type]
            events=[EventOut(id=e.source_event_id, type=e.type, occurred_at=t(e.occurred_at),  # type: ignore[arg-type]
                             received_at=t(e.received_at), payload=e.payload)  # type: ignore[arg-type]
                    for e in s.scalars(select(Event).where(Event.member_id == mid)
                                       .order_by(Event.occurred_at, Event.id))],  # type: ignore[arg-type]
            deliveries=[DeliveryOut(
                id=d.id or 0, campaign=keys.get(d.campaign_id, str(d.campaign_id)), step=d.step,
                occurrence=d.occurrence, channel=d.channel, status=d.status, reason=d.reason,
                error_code=d.error_code, locale=d.locale, variant=d.variant, created_at=t(d.created_at),  # type: ignore[arg-type]
                sent_at=t(d.sent_at), cost=d.cost, provider_message_id=d.provider_message_id,
                attempts=d.attempts, responses=responses.get(d.id or 0, [])) for d in deliveries],
            stored_messages=[StoredMessageOut(
                delivery_id=x.delivery_id, campaign=keys.get(x.campaign_id, str(x.campaign_id)), channel=x.channel,
                title=x.title, body=x.body, link=x.link, coupon=x.coupon, locale=x.locale, data=x.data, state=x.state,
                receipt_number=x.receipt_number, batch=x.batch, created_at=t(x.created_at),  # type: ignore[arg-type]
                expires_at=t(x.expires_at)) for x in stored],
            sandbox_requests=[SandboxRequestOut(
                delivery_id=x.delivery_id, channel=x.channel, provider=x.provider, method=x.method, url=x.url,
                headers=x.headers, body=x.body, created_at=t(x.created_at)) for x in sandbox],  # type: ignore[arg-type]
            coupons=[CouponOut(pool=c.pool, code=c.code, assigned_at=t(c.assigned_at))
                     for c in s.scalars(select(CouponCode).where(CouponCode.member_id == mid)
                                        .order_by(CouponCode.assigned_at, CouponCode.id))],  # type: ignore[arg-type]
        )


def export_json(export: MemberExport) -> str:
    return json.dumps(export.model_dump(mode="json", by_alias=True), ensure_ascii=False, indent=2) + "\n"


# --- erasure ------------------------------------------------------------------------------------


def _scrubbed(text: str | None, addresses: list[str], chat_id: str | None) -> str | None:
    """A provider's message id without the member's addresses in it (Telegram's is ``chat:message``)."""
    if text is None:
        return None
    if chat_id and text.startswith(f"{chat_id}:"):
        text = f"{ERASED}:{text[len(chat_id) + 1:]}"
    for a in addresses:
        text = text.replace(a, ERASED)
    return text


def erase_member(*, engine: Engine, program: str, external_id: str, now: datetime | None = None) -> Erasure:
    """Remove the member's personal data and block every channel, in one transaction (see the module
    docstring for what is removed and what is kept). Erasing an erased member (by its pseudonym) changes
    nothing that is already clean and answers the same."""
    now = now or utcnow()
    with session_scope(engine) as s:
        # the first statement writes: concurrent erasures of one member take turns (PostgreSQL row lock;
        # SQLite's write lock from the start, so the transaction never has to upgrade a read)
        s.execute(update(Member).where(
            Member.program_id == select(Program.id).where(Program.key == program).scalar_subquery(),
            Member.external_id == external_id).values(updated_at=Member.updated_at))
        prog, m = find_member(s, program=program, external_id=external_id)
        mid = m.id or 0
        addresses = _addresses(s, m)
        chat_id = m.telegram_chat_id

        s.execute(delete(SandboxMessage).where(_sandbox_rows(prog.id or 0, m, addresses)))
        for table in (PushToken, Card, MemberLink):
            s.execute(delete(table).where(table.member_id == mid))  # type: ignore[attr-defined]
        coupons.unlink_member(session=s, member_id=mid)

        s.execute(update(Confirmation).where(Confirmation.member_id == mid,   # its link can never be used now
                                             Confirmation.status.in_(_OPEN_CONFIRMATIONS))  # type: ignore[attr-defined]
                  .values(status="expired"))
        s.execute(update(Confirmation).where(Confirmation.member_id == mid,
                                             Confirmation.address.is_not(None))  # type: ignore[union-attr]
                  .values(address=None))
        for cid, pmid in s.execute(select(Confirmation.id, Confirmation.provider_message_id).where(
                Confirmation.member_id == mid, Confirmation.provider_message_id.is_not(None))).all():  # type: ignore[union-attr]
            if (clean := _scrubbed(pmid, addresses, chat_id)) != pmid:
                s.execute(update(Confirmation).where(Confirmation.id == cid).values(provider_message_id=clean))

        s.execute(update(StoredMessage).where(StoredMessage.member_id == mid,
                                              StoredMessage.state.in_(_OPEN_STORED))  # type: ignore[attr-defined]
                  .values(state="expired", updated_at=now))
        s.execute(update(StoredMessage).where(StoredMessage.member_id == mid).values(
            title=None, body="", link=None, coupon=None, data={}, reserved_by=None, receipt_number=None))

        for eid, payload in s.execute(select(Event.id, Event.payload).where(Event.member_id == mid)).all():
            kept = {k: payload[k] for k in KEPT_PAYLOAD_KEYS if k in (payload or {})}
            if kept != payload:
                s.execute(update(Event).where(Event.id == eid).values(payload=kept))

        for did, pmid in s.execute(select(Delivery.id, Delivery.provider_message_id).where(
                Delivery.member_id == mid, Delivery.provider_message_id.is_not(None))).all():  # type: ignore[union-attr]
            if (clean := _scrubbed(pmid, addresses, chat_id)) != pmid:
                s.execute(update(Delivery).where(Delivery.id == did).values(provider_message_id=clean))

        s.execute(update(ConsentRecord).where(
            ConsentRecord.member_id == mid,
            or_(ConsentRecord.ip.is_not(None), ConsentRecord.user_agent.is_not(None)))  # type: ignore[union-attr]
            .values(ip=None, user_agent=None))
        channels = [c.value for c in ChannelName]
        revoked = set(s.scalars(select(ConsentState.channel).where(
            ConsentState.member_id == mid, ConsentState.topic == CHANNEL_WIDE,
            ConsentState.status == ConsentAction.revoked)))
        ledger.record(session=s, program_id=prog.id or 0, acts=[
            ledger.ConsentAct(member_id=mid, channel=c, topic=CHANNEL_WIDE, action=ConsentAction.revoked,
                              source=ConsentSource.api) for c in channels if c not in revoked])

        first_time = m.erased_at is None
        cleared: dict[str, Any] = {
            "first_name": None, "last_name": None, "locale": None, "time_zone": None, "email": None,
            "phone": None, "telegram_chat_id": None, "postal_address": None, "whatsapp_inbound_at": None,
            "preferences": None, "attributes": {}}
        if first_time:
            cleared |= {"external_id": PSEUDONYM_PREFIX + secrets.token_hex(16), "erased_at": now}
        if first_time or any(getattr(m, k) != v for k, v in cleared.items()):
            for k, v in cleared.items():
                setattr(m, k, v)
            m.updated_at = now
            s.add(m)
        s.flush()
        answer = Erasure(program=prog.key, external_id=m.external_id, erased_at=_utc(m.erased_at),  # type: ignore[arg-type]
                         blocked_channels=channels)
    log.info("member erased: program=%s member_id=%s first_time=%s", prog.id, mid, first_time)
    return answer
