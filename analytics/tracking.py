"""Responses from the providers' side, applied to the delivery ledger: status reports and replies.

Status reports (``channels.base.StatusEvent``) move a delivery forward only::

    sent | in_doubt ──delivered──▶ delivered      (+ a `delivered` response)
    sent | in_doubt ──failed / undelivered──▶ failed (error code kept)
    delivered ── anything ──▶ delivered            (a late "sent" or "failed" never moves it back)
    read                     → an `opened` response (and delivered, if it was not yet)

Each report is written once: the response row's ``provider_event_id`` is unique, so a provider's retry of
the same callback changes nothing. A failure whose code says the address is gone (Twilio 21610, WhatsApp
63014) cuts the address off in the consent ledger, as a permanent error at send time does.

A report can arrive before the delivery activity has recorded the provider's id of the message (ids are
recorded per chunk, and a chunk at a slow rate takes seconds): ``keep_early`` stores it and
``apply_early`` applies it when the id is recorded.

Replies (``InboundEvent`` of kind ``reply``) become a `replied` response on the member's latest delivery on
that channel (within ``REPLY_WINDOW``), deduplicated by the provider's message id.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlmodel import Session

from analytics import responses
from channels.base import StatusEvent
from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.db import insert_ignore
from storage.tables import (
    Campaign,
    ConsentAction,
    ConsentSource,
    Delivery,
    DeliveryStatus,
    EarlyStatus,
    ResponseKind,
    utcnow,
)

REPLY_WINDOW = timedelta(days=7)
EARLY_KEPT = timedelta(days=2)
ADVANCES_TO_DELIVERED = (DeliveryStatus.sent, DeliveryStatus.in_doubt, DeliveryStatus.sending)
CAN_FAIL = (DeliveryStatus.sent, DeliveryStatus.in_doubt)


@dataclass(frozen=True)
class Applied:
    found: bool                 # a delivery of ours has this provider message id
    duplicate: bool = False     # this report was applied before
    status: str | None = None   # the delivery's status afterwards
    revoked: bool = False       # the address was cut off


def _respond(session: Session, delivery_id: int, kind: ResponseKind, event_id: str | None, at: datetime) -> bool:
    """Insert a response once; True when it is new."""
    return responses.record(session, delivery_id=delivery_id, kind=kind, at=at, event_id=event_id)


def apply_status(*, session: Session, event: StatusEvent, channels: Collection[str],
                 program_ids: Collection[int], revoking_codes: Collection[str] = (),
                 now: datetime | None = None) -> Applied:
    """Apply one provider status report to the delivery it names. The caller commits."""
    now = now or utcnow()
    row = session.execute(
        select(Delivery.id, Delivery.status, Delivery.member_id, Delivery.channel, Campaign.program_id,
               Campaign.id.label("campaign_id"))  # type: ignore[union-attr]
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.provider_message_id == event.provider_message_id,
               Delivery.channel.in_(list(channels)),  # type: ignore[union-attr]
               Campaign.program_id.in_(list(program_ids)))).first()  # type: ignore[attr-defined]
    if row is None:
        return Applied(found=False)
    if event.status in ("queued", "sent"):
        return Applied(found=True, status=row.status)
    kind = {"delivered": ResponseKind.delivered, "read": ResponseKind.opened}.get(event.status)
    if kind is not None:
        new = _respond(session, row.id, kind, event.event_id, now)
        if not new:
            return Applied(found=True, duplicate=True, status=row.status)
        if row.status in ADVANCES_TO_DELIVERED:
            session.execute(update(Delivery).where(Delivery.id == row.id,  # type: ignore[arg-type]
                                                   Delivery.status.in_(ADVANCES_TO_DELIVERED))  # type: ignore[attr-defined]
                            .values(status=DeliveryStatus.delivered, updated_at=now))
            return Applied(found=True, status=DeliveryStatus.delivered)
        return Applied(found=True, status=row.status)
    # failed / undelivered: the provider could not deliver it
    if row.status not in CAN_FAIL:
        return Applied(found=True, duplicate=row.status == DeliveryStatus.failed, status=row.status)
    session.execute(update(Delivery).where(Delivery.id == row.id,  # type: ignore[arg-type]
                                           Delivery.status.in_(CAN_FAIL))  # type: ignore[attr-defined]
                    .values(status=DeliveryStatus.failed, reason=f"provider_{event.status}",
                            error_code=event.error_code, updated_at=now))
    revoked = bool(event.error_code and event.error_code in revoking_codes)
    if revoked:
        ledger.record(session=session, program_id=row.program_id, acts=[ledger.ConsentAct(
            member_id=row.member_id, channel=row.channel, topic=CHANNEL_WIDE, action=ConsentAction.suppressed,
            source=ConsentSource.provider, campaign_id=row.campaign_id)])
    return Applied(found=True, status=DeliveryStatus.failed, revoked=revoked)


def record_reply(*, session: Session, member_ids: Collection[int], channel: str, event_id: str | None,
                 now: datetime | None = None, kind: ResponseKind = ResponseKind.replied) -> int | None:
    """A `replied` (or ``kind``: `unsubscribed` for STOP) response on the latest delivery to one of
    ``member_ids`` on ``channel`` (sent within ``REPLY_WINDOW``). Returns the delivery id, or None when there is
    none (or it was recorded before)."""
    now = now or utcnow()
    if not member_ids:
        return None
    delivery_id = session.scalar(
        select(Delivery.id).where(Delivery.member_id.in_(list(member_ids)), Delivery.channel == channel,  # type: ignore[attr-defined]
                                  Delivery.status.in_((DeliveryStatus.sent, DeliveryStatus.delivered,  # type: ignore[attr-defined]
                                                       DeliveryStatus.in_doubt)),
                                  Delivery.sent_at >= now - REPLY_WINDOW)  # type: ignore[operator]
        .order_by(Delivery.sent_at.desc(), Delivery.id.desc()).limit(1))  # type: ignore[union-attr]
    if delivery_id is None:
        return None
    if kind == ResponseKind.unsubscribed:
        event_id = f"unsub:{delivery_id}"   # one unsubscribe per delivery, however often the member says it
    return delivery_id if _respond(session, delivery_id, kind, event_id, now) else None


def keep_early(*, session: Session, event: StatusEvent, now: datetime | None = None) -> None:
    """Keep a report whose message id is not recorded yet (once per event id); drop old ones nobody claimed."""
    now = now or utcnow()
    session.execute(delete(EarlyStatus).where(EarlyStatus.received_at < now - EARLY_KEPT))  # type: ignore[arg-type]
    session.execute(insert_ignore(session, EarlyStatus.__table__, ["event_id"]), [{
        "provider_message_id": event.provider_message_id, "status": event.status, "error_code": event.error_code,
        "event_id": event.event_id or f"{event.provider_message_id}:{event.status}", "received_at": now}])


def apply_early(*, session: Session, provider_message_ids: Collection[str], channels: Collection[str],
                program_ids: Collection[int], revoking_codes: Collection[str] = ()) -> int:
    """Apply the kept reports for these just-recorded message ids, in the order they came; returns how many."""
    if not provider_message_ids:
        return 0
    rows = list(session.scalars(select(EarlyStatus).where(
        EarlyStatus.provider_message_id.in_(list(provider_message_ids))).order_by(EarlyStatus.id)))  # type: ignore[attr-defined]
    for row in rows:
        apply_status(session=session, event=StatusEvent(row.provider_message_id, row.status,  # type: ignore[arg-type]
                                                        row.error_code, row.event_id),
                     channels=channels, program_ids=program_ids, revoking_codes=revoking_codes)
        session.delete(row)
    return len(rows)
