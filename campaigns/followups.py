"""Who a follow-up step goes to: members sent the campaign's main step who did (or did not) respond.

Compiled to SQL over ``member`` like the audience: opened / clicked come from ``response`` rows of the
main delivery; bought means a purchase event after the main message was sent; delivered means the
delivery reached ``delivered`` (a provider's delivery report, a printed receipt, a read inbox message).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, not_, select

from campaigns.spec import FollowUp
from storage.tables import Delivery, DeliveryStatus, Event, Member, Response, ResponseKind

_REACHED = (DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.queued)
_KINDS = {
    "opened": (ResponseKind.opened, ResponseKind.clicked),  # a click implies the message was opened
    "clicked": (ResponseKind.clicked,),
}


def followup_clause(campaign_id: int, follow_up: FollowUp, *, occurrence: str,
                    previous_step: str = "main") -> ColumnElement[bool]:
    """WHERE clause over ``member`` selecting the follow-up's recipients."""
    target = follow_up.to
    positive = not target.value.startswith("not_")
    what = target.value.removeprefix("not_")
    if what == "delivered":
        responded = Delivery.status == DeliveryStatus.delivered
    elif what == "bought":
        responded = exists(select(Event.id).where(
            Event.member_id == Delivery.member_id, Event.type == "purchase",
            Event.occurred_at > Delivery.sent_at))  # type: ignore[operator]
    else:
        responded = exists(select(Response.id).where(
            Response.delivery_id == Delivery.id, Response.kind.in_(_KINDS[what])))  # type: ignore[attr-defined]
    return exists(select(Delivery.id).where(
        Delivery.campaign_id == campaign_id, Delivery.step == previous_step,
        Delivery.occurrence == occurrence, Delivery.member_id == Member.id,
        Delivery.status.in_(_REACHED),  # type: ignore[attr-defined]
        responded if positive else not_(responded),
    ))

