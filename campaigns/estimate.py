"""What a campaign would do before it is launched: audience, held out, reachable per channel, cost.

The same pure rules as the delivery path decide (holdout hash, consent policy, unit costs), over one
SQL pass of the audience, so the estimate and the real run agree. Frequency caps and send windows
depend on when messages go out and are not estimated (windows delay, they do not drop).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from typing import Any

from sqlalchemy import exists, literal, select
from sqlmodel import Session

from campaigns.audience import audience_clause
from campaigns.channel_choice import Contacts, candidates
from campaigns.costs import message_cost, unit_costs
from campaigns.holdout import held_out
from campaigns.rules import program_rules
from campaigns.spec import CampaignSpec
from consent import ledger
from consent.policy import SuppressReason
from storage.tables import Card, Member, Program, PushToken


@dataclass
class ChannelEstimate:
    channel: str
    reachable: int = 0
    unit_cost: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    suppressed: dict[str, int] = field(default_factory=dict)


@dataclass
class Estimate:
    campaign: str
    program: str
    currency: str
    audience: int
    held_out: int
    channels: list[ChannelEstimate]
    cost: Decimal
    budget: Decimal | None
    within_budget: int          # messages the budget pays for (all reachable when there is no budget)
    seconds: float = 0.0

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.cost > self.budget


def estimate(*, session: Session, program: Program, spec: CampaignSpec, now: datetime,
             chunk: int = 5000) -> Estimate:
    """Each member of the audience goes to the first channel of the campaign's order that they allow and
    have an address on (``campaigns.channel_choice``), as in a run; ``suppressed`` is counted against the
    first channel, with the first channel's reason. SMS is costed at one segment a message."""
    rules = program_rules(program.settings)
    costs = unit_costs(rules.unit_costs)
    order = [c.value for c in spec.channels]
    cols: list[Any] = [Member.id, Member.email.is_not(None), Member.phone.is_not(None),  # type: ignore[union-attr]
                       Member.telegram_chat_id.is_not(None), Member.postal_address.is_not(None)]  # type: ignore[union-attr]
    cols.append(exists(select(PushToken.id).where(PushToken.member_id == Member.id)) if "push" in order
                else literal(False))
    cols.append(exists(select(Card.id).where(Card.member_id == Member.id, Card.status == "active"))
                if "receipt" in order else literal(False))
    rows = session.execute(select(*cols).where(audience_clause(program.id or 0, spec.audience, now=now))
                           .order_by(Member.id))
    audience = held = 0
    reachable: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    batch: list[tuple[int, Contacts]] = []

    def flush() -> None:
        ids = [mid for mid, _ in batch]
        states = {c: ledger.states_for(session=session, member_ids=ids, channel=c) for c in order}
        for mid, contacts in batch:
            choice = candidates(order, topic=spec.topic, contacts=contacts,
                                states={c: states[c].get(mid, {}) for c in order})
            if choice.channels:
                reachable[choice.channels[0]] += 1
            else:
                suppressed[choice.reason or SuppressReason.no_address] += 1
        batch.clear()

    for mid, email, phone, chat, postal, push, card in rows:
        audience += 1
        if spec.holdout and held_out(spec.key, mid, spec.holdout):
            held += 1
            continue
        batch.append((mid, Contacts(email="x" if email else None, phone="x" if phone else None,
                                    telegram_chat_id="x" if chat else None, push_tokens=int(bool(push)),
                                    has_card=bool(card), postal=bool(postal))))
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    channels = []
    for i, channel in enumerate(order):
        unit = message_cost(channel, costs)
        channels.append(ChannelEstimate(channel=channel, reachable=reachable[channel], unit_cost=unit,
                                        cost=unit * reachable[channel],
                                        suppressed=dict(suppressed) if i == 0 else {}))
    cost = sum((c.cost for c in channels), Decimal(0))
    total = sum(reachable.values())
    within = total
    if spec.budget is not None:
        within, left = 0, Decimal(spec.budget)
        for c in channels:   # cheapest guess: in the order of the channels
            if c.unit_cost == 0:
                within += c.reachable
                continue
            n = min(c.reachable, int(left // c.unit_cost))
            within += n
            left -= n * c.unit_cost
    return Estimate(
        campaign=spec.key, program=program.key, currency=program.currency, audience=audience, held_out=held,
        channels=channels, cost=cost, budget=spec.budget, within_budget=within,
    )
