"""The campaign report: what each campaign reached and achieved. SQL in, figures out.

Three queries, whatever the campaign's size:

1. the delivery rows grouped by (status, step, channel, locale, variant, segment, reason, response bits), with
   their count, cost and revenue — read from the covering index ``ix_delivery_report`` alone, already in that
   order (no table access, no sort: SQLite streams the groups);
2. the reached rows' sending times by day (``ix_delivery_campaign_sent``);
3. the campaign's response rows by day and kind (``ix_response_campaign_at``).

Everything else is arithmetic in Python over a few hundred groups. ``bench/reports.py`` measures it on
1,000,000 deliveries.

What the figures mean
- ``audience``: delivery rows (a member per step and occurrence); ``held_out``: the control group rows;
  ``control``: held-out members the campaign could have reached (main step) — the uplift's control group.
- ``sent``: accepted by the provider (sent or delivered); ``delivered``: the provider, the till or the app
  confirmed it; ``queued``: direct mail waiting for its print batch; ``reached`` = sent + queued + in doubt.
- ``opened`` (human opens; a click counts as an open), ``opened_machine`` (privacy proxies, scanners: apart),
  ``clicked``, ``replied``, ``unsubscribed``, ``complained``, ``converted``: reached messages with at least one
  such response (each message counted once, however often the member clicked); ``responded``: clicked,
  replied or converted; ``revenue``: attributed purchases (``analytics.attribution``).
- rates: delivery = delivered/sent; open, click, response, unsubscribe = x/reached; conversion = converted
  treated members / treated members, where *treated* = reached main-step rows (a conversion on a follow-up
  counts for the member's main row); control conversion = converted control members / control.
- ``uplift`` (``analytics.uplift``): treated − control conversion rate with its 95% CI and p-value;
  ``incremental_conversions`` = uplift × treated; ``incremental_revenue`` = (revenue per treated member −
  revenue per control member) × treated; ``roi`` = (incremental revenue − cost) / cost;
  ``cost_per_response`` = cost / responded; ``cost_per_conversion`` = cost / incremental conversions.
- by channel: held-out rows have no channel (they are in the totals, locales, segments and variants); a
  channel is not randomly assigned, so it has no uplift. By locale and segment: uplift against the control
  members of the same locale or segment. By variant: against the whole control group (variants are assigned
  at random, independently of the holdout). By day (the program's time zone): messages sent and responses
  recorded that day (responses count events: one open per message, one click per link of a message).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analytics import responses as R
from analytics.attribution import window_of
from analytics.uplift import Uplift, compare
from storage.tables import Campaign, Delivery, DeliveryStatus, Program, Response, ResponseKind, utcnow

REACHED = (DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.queued, DeliveryStatus.in_doubt)
CONTROL = "control"
CONTROL_KEY = "(holdout)"        # by variant: the held-out members (no variant key can look like this)
MAX_DAYS = 400                   # the daily curve shows at most this many days (the latest)
DAILY_KINDS = ("delivered", "opened", "opened_machine", "clicked", "replied", "unsubscribed", "complained")


@dataclass
class Figures:
    audience: int = 0
    held_out: int = 0
    control: int = 0
    suppressed: int = 0
    pending: int = 0              # planned or sending: not finished yet
    sent: int = 0
    delivered: int = 0
    queued: int = 0
    failed: int = 0
    in_doubt: int = 0
    opened: int = 0
    opened_machine: int = 0
    clicked: int = 0
    clicked_machine: int = 0
    replied: int = 0
    unsubscribed: int = 0
    complained: int = 0
    converted: int = 0
    responded: int = 0
    revenue: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    treated: int = 0                      # reached main-step rows
    treated_converted: int = 0
    control_converted: int = 0
    control_revenue: Decimal = Decimal(0)
    suppressed_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def reached(self) -> int:
        return self.sent + self.queued + self.in_doubt

    def add(self, *, status: str, step: str, reason: str | None, flags: int, n: int, cost: Decimal,
            revenue: Decimal) -> None:
        self.audience += n
        self.cost += cost
        converted = bool(flags & (R.CONVERTED | R.CONVERTED_LATER))
        if status == DeliveryStatus.held_out:
            self.held_out += n
            if reason == CONTROL and step == "main":
                self.control += n
                self.control_converted += n if converted else 0
                self.control_revenue += revenue
            return
        if status == DeliveryStatus.suppressed:
            self.suppressed += n
            key = reason or "unknown"
            self.suppressed_by_reason[key] = self.suppressed_by_reason.get(key, 0) + n
            return
        if status == DeliveryStatus.failed:
            self.failed += n
            return
        if status not in REACHED:
            self.pending += n
            return
        if status in (DeliveryStatus.sent, DeliveryStatus.delivered):
            self.sent += n
        if status == DeliveryStatus.delivered:
            self.delivered += n
        elif status == DeliveryStatus.queued:
            self.queued += n
        elif status == DeliveryStatus.in_doubt:
            self.in_doubt += n
        for name, bit in (("opened", R.OPENED), ("opened_machine", R.OPENED_MACHINE), ("clicked", R.CLICKED),
                          ("clicked_machine", R.CLICKED_MACHINE), ("replied", R.REPLIED),
                          ("unsubscribed", R.UNSUBSCRIBED), ("complained", R.COMPLAINED),
                          ("converted", R.CONVERTED), ("responded", R.RESPONDED)):
            if flags & bit:
                setattr(self, name, getattr(self, name) + n)
        self.revenue += revenue
        if step == "main":
            self.treated += n
            self.treated_converted += n if converted else 0

    def with_control_of(self, other: Figures) -> Figures:
        """These figures compared against another group's control (a variant against the whole holdout)."""
        copy = Figures(**{k: v for k, v in self.__dict__.items() if k != "suppressed_by_reason"},
                       suppressed_by_reason=dict(self.suppressed_by_reason))
        copy.control, copy.control_converted, copy.control_revenue = \
            other.control, other.control_converted, other.control_revenue
        return copy

    # --- derived ---------------------------------------------------------------------------------

    def uplift(self) -> Uplift | None:
        return compare(self.treated_converted, self.treated, self.control_converted, self.control)

    def derived(self, *, with_uplift: bool = True) -> dict[str, Any]:
        reached = self.reached
        u = self.uplift() if with_uplift else None
        incremental = incremental_revenue = None
        if u is not None:
            incremental = u.uplift * self.treated
            per_treated = self.revenue / self.treated
            per_control = self.control_revenue / self.control
            incremental_revenue = (per_treated - per_control) * self.treated
        return {
            "delivery_rate": _ratio(self.delivered, self.sent),
            "open_rate": _ratio(self.opened, reached),
            "click_rate": _ratio(self.clicked, reached),
            "response_rate": _ratio(self.responded, reached),
            "unsubscribe_rate": _ratio(self.unsubscribed, reached),
            "conversion_rate": _ratio(self.treated_converted, self.treated),
            "control_conversion_rate": _ratio(self.control_converted, self.control),
            "uplift": None if u is None else {
                "uplift": u.uplift, "ci_low": u.ci_low, "ci_high": u.ci_high, "p_value": u.p_value,
                "significant": u.significant, "treated": self.treated, "treated_converted": self.treated_converted,
                "control": self.control, "control_converted": self.control_converted},
            "incremental_conversions": incremental,
            "incremental_revenue": incremental_revenue,
            "cost_per_response": None if not self.responded else self.cost / self.responded,
            "cost_per_conversion": None if not incremental or incremental <= 0 or not self.cost
            else self.cost / Decimal(str(incremental)),
            "roi": None if incremental_revenue is None or not self.cost
            else (incremental_revenue - self.cost) / self.cost,
        }


@dataclass
class Day:
    day: date
    sent: int = 0
    cost: Decimal = Decimal(0)
    delivered: int = 0
    opened: int = 0
    opened_machine: int = 0
    clicked: int = 0
    replied: int = 0
    unsubscribed: int = 0
    complained: int = 0
    conversions: int = 0          # purchases attributed to the treated members' messages
    revenue: Decimal = Decimal(0)
    control_conversions: int = 0  # purchases attributed to control-group members
    control_revenue: Decimal = Decimal(0)


@dataclass
class CampaignReport:
    campaign: str
    name: str
    status: str
    kind: str
    program: str
    currency: str
    time_zone: str
    holdout: float
    attribution_window: timedelta
    generated_at: datetime
    total: Figures
    by_channel: dict[str, Figures]
    by_locale: dict[str, Figures]
    by_variant: dict[str, Figures]
    by_segment: dict[str, Figures]
    by_step: dict[str, Figures]
    by_day: list[Day]
    failed_by_reason: dict[str, int]

    # --- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def dim(groups: dict[str, Figures], *, uplift: bool) -> list[dict[str, Any]]:
            return [{"key": k, **_figures(f, uplift=uplift)} for k, f in groups.items()]

        return {
            "campaign": self.campaign, "name": self.name, "status": self.status, "kind": self.kind,
            "program": self.program, "currency": self.currency, "time_zone": self.time_zone,
            "holdout": self.holdout, "attribution_window_hours": self.attribution_window.total_seconds() / 3600,
            "generated_at": self.generated_at.isoformat(),
            "total": _figures(self.total, uplift=True),
            "by_channel": dim(self.by_channel, uplift=False),
            "by_locale": dim(self.by_locale, uplift=True),
            "by_variant": dim(self.by_variant, uplift=True),
            "by_segment": dim(self.by_segment, uplift=True),
            "by_step": dim(self.by_step, uplift=False),
            "by_day": [{**{k: _num(v) for k, v in d.__dict__.items() if k != "day"}, "day": d.day.isoformat()}
                       for d in self.by_day],
            "failed_by_reason": self.failed_by_reason,
        }

    # --- CSV -------------------------------------------------------------------------------------

    def csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for row in self.csv_rows():
            w.writerow([csv_cell(row.get(c)) for c in CSV_COLUMNS])
        return out.getvalue()

    def csv_rows(self) -> Iterable[dict[str, Any]]:
        base = {"campaign": self.campaign, "currency": self.currency}
        yield {**base, "dimension": "total", "key": "all", **_flat(self.total, uplift=True)}
        for dimension, groups, uplift in (("channel", self.by_channel, False), ("locale", self.by_locale, True),
                                          ("variant", self.by_variant, True), ("segment", self.by_segment, True),
                                          ("step", self.by_step, False)):
            for key, f in groups.items():
                yield {**base, "dimension": dimension, "key": key, **_flat(f, uplift=uplift)}
        for d in self.by_day:
            yield {**base, "dimension": "day", "key": d.day.isoformat(), "sent": d.sent, "cost": d.cost,
                   "delivered": d.delivered, "opened": d.opened, "opened_machine": d.opened_machine,
                   "clicked": d.clicked, "replied": d.replied, "unsubscribed": d.unsubscribed,
                   "complained": d.complained, "converted": d.conversions, "revenue": d.revenue,
                   "control_converted": d.control_conversions, "control_revenue": d.control_revenue}


CSV_COLUMNS = [
    "campaign", "dimension", "key", "audience", "held_out", "control", "suppressed", "pending", "sent", "delivered",
    "queued", "failed", "in_doubt", "opened", "opened_machine", "clicked", "clicked_machine", "replied",
    "unsubscribed", "complained", "converted", "responded", "treated", "treated_converted", "control_converted",
    "revenue", "control_revenue", "cost", "currency", "delivery_rate", "open_rate", "click_rate", "response_rate",
    "unsubscribe_rate", "conversion_rate", "control_conversion_rate", "uplift", "uplift_ci_low",
    "uplift_ci_high", "p_value", "incremental_conversions", "incremental_revenue", "cost_per_response",
    "cost_per_conversion", "roi",
]
_COUNTS = ("audience", "held_out", "control", "suppressed", "pending", "sent", "delivered", "queued", "failed",
           "in_doubt", "opened", "opened_machine", "clicked", "clicked_machine", "replied", "unsubscribed",
           "complained", "converted", "responded", "treated", "treated_converted", "control_converted", "revenue",
           "control_revenue", "cost")


def _figures(f: Figures, *, uplift: bool) -> dict[str, Any]:
    counts = {k: _num(getattr(f, k)) for k in _COUNTS}
    return {**counts, "reached": f.reached, "suppressed_by_reason": dict(sorted(f.suppressed_by_reason.items())),
            **{k: _num(v) for k, v in f.derived(with_uplift=uplift).items()}}


def _flat(f: Figures, *, uplift: bool) -> dict[str, Any]:
    d = f.derived(with_uplift=uplift)
    u = d.pop("uplift") or {}
    return {**{k: getattr(f, k) for k in _COUNTS}, **d, "uplift": u.get("uplift"),
            "uplift_ci_low": u.get("ci_low"), "uplift_ci_high": u.get("ci_high"), "p_value": u.get("p_value")}


def _num(v: Any) -> Any:
    if isinstance(v, Decimal):
        return float(round(v, 4))
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _num(x) for k, x in v.items()}
    return v


def csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:.6f}"
    return str(v)


def _ratio(a: int | float, b: int | float) -> float | None:
    return a / b if b else None


# --- the queries ---------------------------------------------------------------------------------


def campaign_report(engine: Engine, campaign_id: int, *, days: bool = True) -> CampaignReport:
    """The report of one campaign (``days=False``: without the daily curve, for comparisons)."""
    with Session(engine) as s:
        row = s.execute(select(Campaign, Program).join(Program, Program.id == Campaign.program_id)
                        .where(Campaign.id == campaign_id)).first()
        if row is None:
            raise LookupError(f"campaign {campaign_id} not found")
        c, program = row
        groups = s.execute(
            select(Delivery.status, Delivery.step, Delivery.channel, Delivery.locale, Delivery.variant,
                   Delivery.segment, Delivery.reason, Delivery.response_flags, func.count(),
                   func.sum(Delivery.cost), func.sum(Delivery.revenue))
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.status, Delivery.step, Delivery.channel, Delivery.locale, Delivery.variant,
                      Delivery.segment, Delivery.reason, Delivery.response_flags)).all()
        zone = _zone(program.time_zone)
        by_day = _days(s, campaign_id, zone) if days else []
    total = Figures()
    dims: dict[str, dict[str, Figures]] = {d: defaultdict(Figures) for d in ("channel", "locale", "variant",
                                                                            "segment", "step")}
    failed: dict[str, int] = defaultdict(int)
    has_variants = bool((c.spec or {}).get("variants"))
    for status, step, channel, locale, variant, segment, reason, flags, n, cost, revenue in groups:
        kw = {"status": status, "step": step, "reason": reason, "flags": flags or 0, "n": n,
              "cost": Decimal(cost or 0), "revenue": Decimal(revenue or 0)}
        total.add(**kw)
        held = status == DeliveryStatus.held_out
        if not held:
            dims["channel"][channel or "-"].add(**kw)
        dims["locale"][locale or "-"].add(**kw)
        if segment is not None:
            dims["segment"][segment].add(**kw)
        if has_variants and step == "main":
            dims["variant"][CONTROL_KEY if held else (variant or "-")].add(**kw)
        dims["step"][step].add(**kw)
        if status == DeliveryStatus.failed:
            failed[reason or "unknown"] += n
    by_variant = {k: (f if k == CONTROL_KEY else f.with_control_of(total)) for k, f in sorted(dims["variant"].items())}
    return CampaignReport(
        campaign=c.key, name=c.name, status=c.status, kind=c.kind, program=program.key, currency=program.currency,
        time_zone=program.time_zone, holdout=float((c.spec or {}).get("holdout") or 0),
        attribution_window=window_of(c.spec or {}), generated_at=utcnow(), total=total,
        by_channel=dict(sorted(dims["channel"].items())), by_locale=dict(sorted(dims["locale"].items())),
        by_variant=by_variant, by_segment=dict(sorted(dims["segment"].items())),
        by_step=dict(sorted(dims["step"].items(), key=lambda kv: (kv[0] != "main", kv[0]))),
        by_day=by_day, failed_by_reason=dict(sorted(failed.items())))


def compare_campaigns(engine: Engine, program_id: int, start: datetime | None,
                      end: datetime | None) -> list[CampaignReport]:
    """The reports (without daily curves) of the program's campaigns that ran in [start, end): started
    (or were created) before ``end`` and had not finished before ``start``."""
    began = func.coalesce(Campaign.started_at, Campaign.created_at)
    q = select(Campaign.id).where(Campaign.program_id == program_id)
    if end is not None:
        q = q.where(began < end)
    if start is not None:
        q = q.where((Campaign.finished_at.is_(None)) | (Campaign.finished_at >= start))  # type: ignore[union-attr,operator]
    with Session(engine) as s:
        ids = list(s.scalars(q.order_by(began, Campaign.id)))
    return [campaign_report(engine, cid, days=False) for cid in ids]


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def _day_starts(first: datetime, last: datetime, zone: ZoneInfo) -> list[tuple[date, datetime, datetime]]:
    """(local day, its start, the next day's start) in UTC, from ``first``'s local day to ``last``'s (at most
    ``MAX_DAYS``, the latest). DST-correct: a local day is 23 or 25 hours long when the clocks change."""
    d, end = _aware(first).astimezone(zone).date(), _aware(last).astimezone(zone).date()
    d = max(d, end - timedelta(days=MAX_DAYS - 1))
    out = []
    while d <= end:
        nxt = d + timedelta(days=1)
        out.append((d, datetime.combine(d, time(0), zone).astimezone(UTC),
                    datetime.combine(nxt, time(0), zone).astimezone(UTC)))
        d = nxt
    return out


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _days(s: Session, campaign_id: int, zone: ZoneInfo) -> list[Day]:
    """Messages sent and responses recorded per local day, every day from the first to the last (empty days
    included: a curve has no holes). One range query per day and table, each an index-only range scan
    (``ix_delivery_campaign_sent``, ``ix_response_campaign_at``): no sort of the campaign's rows."""
    sent = Delivery.campaign_id == campaign_id
    resp = Response.campaign_id == campaign_id
    ends = [s.scalar(select(func.min(Delivery.sent_at)).where(sent)),
            s.scalar(select(func.max(Delivery.sent_at)).where(sent)),
            s.scalar(select(func.min(Response.at)).where(resp)),
            s.scalar(select(func.max(Response.at)).where(resp))]
    known = [_aware(e) for e in ends if e is not None]
    if not known:
        return []
    days: list[Day] = []
    is_control = (Response.detail == CONTROL).label("c")
    for day, start, end in _day_starts(min(known), max(known), zone):
        d = Day(day=day)
        n, cost = s.execute(select(func.count(), func.sum(Delivery.cost)).where(
            sent, Delivery.sent_at >= start, Delivery.sent_at < end,  # type: ignore[operator]
            Delivery.status.in_(REACHED))).one()  # type: ignore[attr-defined]
        d.sent, d.cost = n, Decimal(cost or 0)
        for kind, control, n, value in s.execute(
                select(Response.kind, is_control, func.count(), func.sum(Response.value))
                .where(resp, Response.at >= start, Response.at < end)  # type: ignore[operator]
                .group_by(Response.kind, is_control)):
            if kind == ResponseKind.converted:
                if control:
                    d.control_conversions += n
                    d.control_revenue += Decimal(value or 0)
                else:
                    d.conversions += n
                    d.revenue += Decimal(value or 0)
            elif kind in DAILY_KINDS:
                setattr(d, kind, getattr(d, kind) + n)
        days.append(d)
    return days
