"""The campaign report: audience, suppressed by reason, sent (delivered among them), queued, failed, in doubt,
cost; by locale and by channel. SQL in, figures out."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.tables import Campaign, Delivery

SENT = ("sent", "delivered")


@dataclass
class Figures:
    audience: int = 0
    sent: int = 0
    failed: int = 0
    in_doubt: int = 0
    pending: int = 0          # planned or sending: not finished yet
    suppressed: int = 0
    suppressed_by_reason: dict[str, int] = field(default_factory=dict)
    delivered: int = 0        # of the sent: the provider (or the till, the app) reported delivery
    queued: int = 0           # direct mail in a print batch not handed over yet
    cost: Decimal = Decimal(0)

    def add(self, status: str, reason: str | None, n: int, cost: Decimal | None = None) -> None:
        self.audience += n
        self.cost += cost or 0
        if status == "delivered":
            self.delivered += n
        if status in SENT:
            self.sent += n
        elif status == "queued":
            self.queued += n
        elif status == "failed":
            self.failed += n
        elif status == "in_doubt":
            self.in_doubt += n
        elif status in ("suppressed", "held_out"):
            self.suppressed += n
            key = reason or status
            self.suppressed_by_reason[key] = self.suppressed_by_reason.get(key, 0) + n
        else:
            self.pending += n


@dataclass
class CampaignReport:
    campaign: str
    name: str
    status: str
    total: Figures
    by_locale: dict[str, Figures]
    failed_by_reason: dict[str, int]
    by_channel: dict[str, Figures] = field(default_factory=dict)


def campaign_report(engine: Engine, campaign_id: int) -> CampaignReport:
    with Session(engine) as s:
        c = s.get(Campaign, campaign_id)
        if c is None:
            raise LookupError(f"campaign {campaign_id} not found")
        rows = s.execute(
            select(Delivery.locale, Delivery.channel, Delivery.status, Delivery.reason, func.count(),
                   func.sum(Delivery.cost))
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.locale, Delivery.channel, Delivery.status, Delivery.reason)
        ).all()
    total = Figures()
    by_locale: dict[str, Figures] = defaultdict(Figures)
    by_channel: dict[str, Figures] = defaultdict(Figures)
    failed: dict[str, int] = defaultdict(int)
    for locale, channel, status, reason, n, cost in rows:
        cost = Decimal(cost or 0)
        total.add(status, reason, n, cost)
        by_locale[locale or "-"].add(status, reason, n, cost)
        by_channel[channel or "-"].add(status, reason, n, cost)
        if status == "failed":
            failed[reason or "unknown"] += n
    return CampaignReport(campaign=c.key, name=c.name, status=c.status, total=total,
                          by_locale=dict(sorted(by_locale.items())), failed_by_reason=dict(failed),
                          by_channel=dict(sorted(by_channel.items())))
