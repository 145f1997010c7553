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

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update
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
        [{"delivery_id": delivery_id, "campaign_id": campaign_id, "kind": kind, "at": at, "value": value,
          "provider_event_id": event_id, "detail": detail[:255] if detail else None}]).all()
    if not inserted:
        return False
    bit = BITS[kind]
    values: dict = {}
    if bit:
        values["response_flags"] = Delivery.response_flags.op("|")(bit)  # type: ignore[union-attr]
    if kind == ResponseKind.converted and value is not None:
        values["revenue"] = func.coalesce(Delivery.revenue, 0) + value
    if values:
        session.execute(update(Delivery).execution_options(synchronize_session=False)
                        .where(Delivery.id == delivery_id).values(**values))  # type: ignore[arg-type]
    return True


def mark(session: Session, *, delivery_id: int, bits: int) -> None:
    """Set summary bits without a response row (e.g. CONVERTED_LATER on a main-step row)."""
    session.execute(update(Delivery).execution_options(synchronize_session=False)
                    .where(Delivery.id == delivery_id)  # type: ignore[arg-type]
                    .values(response_flags=Delivery.response_flags.op("|")(bits)))  # type: ignore[union-attr]
