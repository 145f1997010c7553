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

from sqlalchemy import and_, select
from sqlalchemy.orm import aliased
from sqlmodel import Session

from campaigns.audience import audience_clause
from campaigns.costs import message_cost, unit_costs
from campaigns.holdout import held_out
from campaigns.rules import program_rules
from campaigns.spec import CampaignSpec
from consent.policy import CHANNEL_WIDE, SuppressReason, decide
from storage.tables import ConsentState, Member, Program


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


def estimate(*, session: Session, program: Program, spec: CampaignSpec, now: datetime) -> Estimate:
    rules = program_rules(program.settings)
    costs = unit_costs(rules.unit_costs)
    channel = spec.channels[0].value
    address = {"email": Member.email, "sms": Member.phone, "whatsapp": Member.phone,
               "telegram": Member.telegram_chat_id}.get(channel)
    wide = aliased(ConsentState)
    topic = aliased(ConsentState)
    rows = session.execute(
        select(Member.id, (address.is_not(None) if address is not None else Member.id.is_not(None)),  # type: ignore[union-attr]
               wide.status, topic.status)
        .outerjoin(wide, and_(wide.member_id == Member.id, wide.channel == channel, wide.topic == CHANNEL_WIDE))
        .outerjoin(topic, and_(topic.member_id == Member.id, topic.channel == channel, topic.topic == spec.topic))
        .where(audience_clause(program.id or 0, spec.audience, now=now)))
    audience = held = reachable = 0
    suppressed: Counter[str] = Counter()
    for member_id, has_address, wide_status, topic_status in rows:
        audience += 1
        if spec.holdout and held_out(spec.key, member_id, spec.holdout):
            held += 1
            continue
        states = {k: v for k, v in ((CHANNEL_WIDE, wide_status), (spec.topic, topic_status)) if v}
        decision = decide(states, topic=spec.topic)
        if decision.allowed and not has_address:
            suppressed[SuppressReason.no_address] += 1
        elif not decision.allowed:
            suppressed[str(decision.reason)] += 1
        else:
            reachable += 1
    unit = message_cost(channel, costs)
    cost = unit * reachable
    within = reachable if spec.budget is None or unit == 0 else min(reachable, int(spec.budget // unit))
    return Estimate(
        campaign=spec.key, program=program.key, currency=program.currency, audience=audience, held_out=held,
        channels=[ChannelEstimate(channel=channel, reachable=reachable, unit_cost=unit, cost=cost,
                                  suppressed=dict(suppressed))],
        cost=cost, budget=spec.budget, within_budget=within,
    )
