"""Conversions: which campaign a purchase counts for.

A purchase counts for the member's **last** delivery (latest exposure) among those whose campaign's
``attribution_window`` (spec, default 7 days) covers it — last touch:

- a delivery's exposure is when it was sent (``sent_at``: sent, delivered, queued for print, in doubt);
- a control-group row's exposure is when the member was held out (``due_at`` for a triggered reaction with a
  delay, else ``created_at``) — so the control group's purchases are counted exactly as the treated ones',
  which is what the uplift compares. Held-out members the campaign could not have reached
  (``control_unreachable``) are outside the comparison and get nothing;
- the purchase must come after the exposure and within the window; failed, suppressed and pending rows
  reached nobody and get nothing.

Each purchase event is attributed once (the response's event id is ``purchase:<event row id>``), with its
amount as revenue when its currency is the program's (or not given); a purchase in another currency counts
as a conversion without revenue rather than mixing currencies. A conversion that lands on a follow-up step's
row also marks the member's main-step row (``CONVERTED_LATER``), so the campaign's uplift, computed over
main-step rows, counts it once.

Runs in the transaction that stores the events (``members.events.ingest_events``): one query per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, func, or_, select
from sqlmodel import Session

from analytics import responses
from storage.tables import Campaign, Delivery, DeliveryStatus, ResponseKind

DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=90)       # the spec's upper bound: no delivery older than this can get a purchase
EXPOSED = (DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.queued, DeliveryStatus.in_doubt)
CONTROL = "control"
_DURATION = TypeAdapter(timedelta)


@dataclass(frozen=True)
class Purchase:
    event_id: int                 # the event row's id
    member_id: int
    at: datetime                  # when it happened (aware)
    amount: Decimal | None        # in the program's currency; None: not counted as revenue


@dataclass(frozen=True)
class Attributed:
    event_id: int
    delivery_id: int
    campaign_id: int


def purchase_of(event_id: int, member_id: int, at: datetime, payload: dict[str, Any],
                currency: str) -> Purchase:
    """A stored purchase event → what attribution needs (the amount only in the program's currency)."""
    amount: Decimal | None = None
    if payload.get("currency") in (None, currency):
        try:
            amount = Decimal(str(payload.get("amount")))
        except (InvalidOperation, ValueError):
            amount = None
        if amount is not None and not amount.is_finite():
            amount = None
    return Purchase(event_id=event_id, member_id=member_id, at=_aware(at), amount=amount)


def window_of(spec: dict[str, Any]) -> timedelta:
    """The campaign's attribution window from its stored spec (a spec stored before it existed: 7 days)."""
    raw = spec.get("attribution_window") if isinstance(spec, dict) else None
    if raw is None:
        return DEFAULT_WINDOW
    try:
        return min(_DURATION.validate_python(raw), MAX_WINDOW)
    except ValidationError:
        return DEFAULT_WINDOW


def attribute(session: Session, purchases: Sequence[Purchase]) -> list[Attributed]:
    """Record a `converted` response for each purchase that falls in a campaign's window (see the module's
    docstring); returns what was attributed now (a purchase attributed before is not again). The caller
    commits."""
    if not purchases:
        return []
    earliest = min(p.at for p in purchases) - MAX_WINDOW
    latest = max(p.at for p in purchases)
    rows = session.execute(
        select(Delivery.id, Delivery.member_id, Delivery.campaign_id, Delivery.step, Delivery.occurrence,
               Delivery.status, Delivery.sent_at, Delivery.due_at, Delivery.created_at)
        .where(Delivery.member_id.in_(sorted({p.member_id for p in purchases})),  # type: ignore[attr-defined]
               or_(and_(Delivery.status.in_(EXPOSED), Delivery.sent_at >= earliest,  # type: ignore[attr-defined,operator]
                        Delivery.sent_at <= latest),  # type: ignore[operator]
                   and_(Delivery.status == DeliveryStatus.held_out, Delivery.reason == CONTROL,
                        func.coalesce(Delivery.due_at, Delivery.created_at) >= earliest,
                        func.coalesce(Delivery.due_at, Delivery.created_at) <= latest)))).all()
    if not rows:
        return []
    windows = {cid: window_of(spec) for cid, spec in session.execute(
        select(Campaign.id, Campaign.spec).where(Campaign.id.in_({r.campaign_id for r in rows})))}  # type: ignore[union-attr]
    by_member: dict[int, list[tuple[datetime, int, Any]]] = {}
    for r in rows:
        exposed = r.sent_at if r.status != DeliveryStatus.held_out else (r.due_at or r.created_at)
        by_member.setdefault(r.member_id, []).append((_aware(exposed), r.id, r))
    chosen: list[tuple[Purchase, Any]] = []
    for p in purchases:
        best = max(((at, did, r) for at, did, r in by_member.get(p.member_id, ())
                    if at <= p.at and p.at - at <= windows[r.campaign_id]), default=None,
                   key=lambda c: (c[0], c[1]))
        if best is not None:
            chosen.append((p, best[2]))
    new = responses.record_many(session, [responses.NewResponse(
        delivery_id=row.id, campaign_id=row.campaign_id, kind=ResponseKind.converted, at=p.at,
        event_id=f"purchase:{p.event_id}", value=p.amount,
        # the daily curve tells the control group's purchases apart without a join
        detail=CONTROL if row.status == DeliveryStatus.held_out else None) for p, row in chosen])
    done: list[Attributed] = []
    for p, row in chosen:
        if f"purchase:{p.event_id}" not in new:   # attributed before
            continue
        if row.step != "main":
            main = session.scalar(select(Delivery.id).where(
                Delivery.campaign_id == row.campaign_id, Delivery.member_id == p.member_id,
                Delivery.step == "main", Delivery.occurrence == row.occurrence))
            if main is not None:
                responses.mark(session, delivery_id=main, bits=responses.CONVERTED_LATER)
        done.append(Attributed(event_id=p.event_id, delivery_id=row.id, campaign_id=row.campaign_id))
    return done


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
