"""Suppressions from outside the send path: hard bounces reported later (a bounce message, an ESP's
webhook), spam complaints (feedback loops), opt-outs a provider holds. Each becomes a ``suppressed`` act on
the whole channel in the ledger with its source (bounce, complaint, provider); a complaint about a message
we can find (its Message-ID / provider id) is also a ``complained`` response of that delivery.

Members are found by external id, or by address on the channel (every member of the program with it: an
address that bounces bounces for all of them). The caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlmodel import Session

from analytics import responses
from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.tables import (
    Campaign,
    ConsentAction,
    ConsentSource,
    Delivery,
    Member,
    ResponseKind,
    utcnow,
)

REASONS = {"bounce": ConsentSource.bounce, "complaint": ConsentSource.complaint, "provider": ConsentSource.provider}


@dataclass(frozen=True)
class SuppressionIn:
    channel: str
    reason: str                        # bounce | complaint | provider
    external_id: str | None = None
    address: str | None = None         # email or E.164 phone
    message_id: str | None = None      # the message complained about, when known


@dataclass
class SuppressionResult:
    suppressed: int = 0                # ledger acts written
    already: int = 0                   # members suppressed on that channel before
    responses: int = 0                 # complaints tied to a delivery
    unknown: list[int] = field(default_factory=list)   # item indexes that matched no member


def suppress(*, session: Session, program_id: int, items: list[SuppressionIn]) -> SuppressionResult:
    result = SuppressionResult()
    for index, item in enumerate(items):
        q = select(Member.id).where(Member.program_id == program_id, Member.erased_at.is_(None))  # type: ignore[union-attr]
        if item.external_id:
            q = q.where(Member.external_id == item.external_id)
        elif item.channel == "email":   # stored as the member gave it (the local part keeps its case)
            q = q.where(func.lower(Member.email) == (item.address or "").strip().lower())
        else:
            q = q.where(Member.phone == (item.address or "").strip())
        member_ids = list(session.scalars(q))
        if not member_ids:
            result.unknown.append(index)
            continue
        states = ledger.states_for(session=session, member_ids=member_ids, channel=item.channel)
        fresh = [m for m in member_ids if states.get(m, {}).get(CHANNEL_WIDE) != ConsentAction.suppressed]
        result.already += len(member_ids) - len(fresh)
        result.suppressed += len(ledger.record(session=session, program_id=program_id, acts=[
            ledger.ConsentAct(member_id=m, channel=item.channel, topic=CHANNEL_WIDE,
                              action=ConsentAction.suppressed, source=REASONS[item.reason]) for m in fresh]))
        if item.reason == "complaint" and item.message_id:
            found = session.execute(
                select(Delivery.id, Delivery.campaign_id).join(Campaign, Campaign.id == Delivery.campaign_id)
                .where(Campaign.program_id == program_id, Delivery.provider_message_id == item.message_id,
                       Delivery.member_id.in_(member_ids))).first()  # type: ignore[attr-defined]
            if found is not None and responses.record(
                    session, delivery_id=found.id, kind=ResponseKind.complained, at=utcnow(),
                    event_id=f"complaint:{item.message_id}", campaign_id=found.campaign_id):
                result.responses += 1
    return result
