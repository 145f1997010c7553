"""Recording a response: the one way a `response` row is written.

Every source (provider status reports, replies, the open pixel and click redirects, unsubscribes,
complaints, the till and the app inbox, attributed purchases) calls :func:`record`, which

- inserts the row once: ``event_id`` is unique (``response.provider_event_id``), so a repeated callback, a
  second pixel load or a double click writes nothing and returns False;
- keeps the delivery's summary in step, in the same transaction: ``delivery.response_flags`` gets the kind's
  bit (a click also sets `opened`: the member saw the message), ``delivery.revenue`` adds a conversion's value.

The campaign report reads only those two columns (one index-only scan, see ``analytics.report``); the daily
curve reads the response rows themselves by ``(campaign_id, at)``. The caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, case, cast, func, select, update
from sqlmodel import Session

from storage.db import insert_ignore
from storage.tables import Delivery, Response, ResponseKind

OPENED = 1
OPENED_MACHINE = 2
CLICKED = 4
REPLIED = 8
UNSUBSCRIBED = 16
COMPLAINED = 32
CONVERTED = 64
DISMISSED = 128
CONVERTED_LATER = 256    # on a main-step row: a later step of the same campaign got the member's conversion
CLICKED_MACHINE = 512

BITS: dict[str, int] = {
    ResponseKind.delivered: 0,              # the status says it (delivery.status = delivered)
    ResponseKind.opened: OPENED,
    ResponseKind.opened_machine: OPENED_MACHINE,
    ResponseKind.clicked: CLICKED | OPENED,
    ResponseKind.clicked_machine: CLICKED_MACHINE,
    ResponseKind.replied: REPLIED,
    ResponseKind.unsubscribed: UNSUBSCRIBED,
    ResponseKind.complained: COMPLAINED,
    ResponseKind.converted: CONVERTED,
    ResponseKind.dismissed: DISMISSED,
}
RESPONDED = CLICKED | REPLIED | CONVERTED    # what counts as "responded" (an open alone does not)


@dataclass(frozen=True)
class NewResponse:
    """One response for :func:`record_many` (``event_id`` required: it is what makes a repeat a no-op)."""

    delivery_id: int
    campaign_id: int
    kind: ResponseKind
    at: datetime
    event_id: str
    value: Decimal | None = None
    detail: str | None = None


def record(session: Session, *, delivery_id: int, kind: ResponseKind | str, at: datetime, event_id: str | None,
           value: Decimal | None = None, detail: str | None = None, campaign_id: int | None = None) -> bool:
    """Write one response (once per ``event_id``) and update the delivery's summary; True when it is new.

    ``event_id`` None means "not deduplicated" (each call is a new response): give one whenever the source
    may repeat itself."""
    kind = ResponseKind(kind)
    if campaign_id is None:
        campaign_id = session.scalar(select(Delivery.campaign_id).where(Delivery.id == delivery_id))  # type: ignore[arg-type]
    inserted = session.execute(
        insert_ignore(session, Response.__table__, ["provider_event_id"]).returning(Response.__table__.c.id),
        [_row(delivery_id, campaign_id, kind, at, event_id, value, detail)]).all()
    if not inserted:
        return False
    change = _summary(kind, value)
    if change is not None:
        _update_summaries(session, [{"b_id": delivery_id, "b_bits": change[0], "b_add": change[1]}])
    return True


def record_many(session: Session, items: Sequence[NewResponse]) -> set[str]:
    """:func:`record` for many responses in two statements (attributing a batch of purchases: one INSERT and one
    executemany UPDATE instead of two statements a purchase); returns the event ids written now."""
    if not items:
        return set()
    inserted = {eid for eid, in session.execute(
        insert_ignore(session, Response.__table__, ["provider_event_id"])
        .returning(Response.__table__.c.provider_event_id),
        [_row(i.delivery_id, i.campaign_id, ResponseKind(i.kind), i.at, i.event_id, i.value, i.detail)
         for i in items])}
    updates, done = [], set()
    for i in items:
        if i.event_id not in inserted or i.event_id in done:   # a repeat, or the same id twice in this batch
            continue
        done.add(i.event_id)
        change = _summary(ResponseKind(i.kind), i.value)
        if change is not None:
            updates.append({"b_id": i.delivery_id, "b_bits": change[0], "b_add": change[1]})
    _update_summaries(session, updates)
    return done


def _row(delivery_id: int, campaign_id: int | None, kind: ResponseKind, at: datetime, event_id: str | None,
         value: Decimal | None, detail: str | None) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "campaign_id": campaign_id, "kind": kind, "at": at, "value": value,
            "provider_event_id": event_id, "detail": detail[:255] if detail else None}


def _summary(kind: ResponseKind, value: Decimal | None) -> tuple[int, Decimal | None] | None:
    """(the bits the delivery gets, the revenue it adds), or None when its summary does not change."""
    add = value if kind == ResponseKind.converted and value is not None else None
    bit = BITS[kind]
    return None if not bit and add is None else (bit, add)


def _update_summaries(session: Session, params: list[dict[str, Any]]) -> None:
    if not params:
        return
    t = Delivery.__table__
    add = cast(bindparam("b_add", type_=t.c.revenue.type), t.c.revenue.type)   # PostgreSQL: a NULL has no type
    session.connection().execute(
        update(t).where(t.c.id == bindparam("b_id"))
        .values(response_flags=t.c.response_flags.op("|")(bindparam("b_bits")),
                revenue=case((add.is_(None), t.c.revenue), else_=func.coalesce(t.c.revenue, 0) + add)),
        params)


def mark(session: Session, *, delivery_id: int, bits: int) -> None:
    """Set summary bits without a response row (e.g. CONVERTED_LATER on a main-step row)."""
    session.execute(update(Delivery).execution_options(synchronize_session=False)
                    .where(Delivery.id == delivery_id)  # type: ignore[arg-type]
                    .values(response_flags=Delivery.response_flags.op("|")(bits)))  # type: ignore[union-attr]
