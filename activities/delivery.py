"""Delivery activities: the side effects of a campaign. Thin: open storage and channels, call domain code.

``deliver_batch`` handles one page of a step's recipients (member ids in ``(after, upto]``);
``deliver_due`` handles the planned deliveries of a triggered campaign whose time has come.

1. prepare (one transaction): rows a crashed attempt left ``sending`` become ``in_doubt`` (never
   resent); new members get a row: ``held_out`` (the control group), ``suppressed(reason)`` (no channel
   of the campaign allowed by consent with an address) or ``planned``; each planned row goes to the
   first channel of the campaign's order that the member allows, has an address on, and whose send
   window and quiet hours are open now (``campaigns.channel_choice``); when none is open the row stays
   planned with reason ``outside_window`` and ``due_at`` = when the first of them opens;
2. per chunk: render for the row's channel → claim (one transaction, the campaign row locked: consent
   re-checked, frequency caps counted from the ledger, the budget reserved atomically; allowed rows
   become ``sending``, committed) → send (``activities.sending``: the program's adapter per channel,
   paced by the account's shared rate limit) → record ``sent`` / ``queued`` / ``failed`` / ``in_doubt``
   (committed; the cost of a message not sent is given back) → heartbeat.
3. fallback: a permanent failure on one channel (bad number, bot blocked, no device left, a template
   the channel cannot render) moves the row back to ``planned`` on the member's next channel, with the
   failed attempt kept in ``delivery.attempts``; it is sent in the same activity when its window is open.

So a retried or re-run batch never sends a message twice, spent never exceeds the limit with any
number of workers, and a crash leaves at most one chunk in doubt. Members the budget does not reach
stay ``planned`` with reason ``budget_exhausted``: raising the budget sends them.
This module is the one place that maps channel outcomes to delivery states and Temporal errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, bindparam, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.messages import CampaignInfo, MessageBuilder, Target
from activities.sending import Sender, SendOutcome
from analytics.tracking import apply_early
from campaigns import schedule
from campaigns.audience import audience_clause, segment_of
from campaigns.channel_choice import Contacts, candidates, pick, tried_channels
from campaigns.costs import affordable, unit_costs
from campaigns.followups import followup_clause
from campaigns.holdout import held_out
from campaigns.rules import CapScope, FrequencyCap, daily_window, member_quiet_hours, program_rules, quiet_hours_for
from campaigns.spec import CampaignSpec
from campaigns.variants import assign
from channels.base import OutboundMessage
from channels.registry import ChannelRegistry, Route
from channels.ratelimit import SharedRateLimiter
from channels.whatsapp_twilio import REVOKING_CODES, session_open
from consent import ledger
from consent.policy import CHANNEL_WIDE, SERVICE_TOPIC, decide
from consent.tokens import Signer
from members.coupons import assign_codes
from members.profile import address_lines
from storage.db import insert_ignore, run_write, session_scope, write_scope
from storage.tables import (
    Campaign,
    Card,
    ConsentAction,
    ConsentSource,
    Delivery,
    DeliveryStatus,
    Event,
    Member,
    Program,
    PushToken,
    utcnow,
)
from templates.render import Renderer, TemplateProblem
from workflows.contracts import (
    AudienceCount,
    BatchResult,
    CampaignRef,
    Counts,
    Deferral,
    DeliverBatch,
    DeliverDue,
    DueResult,
    ExpirePending,
    PageBounds,
    PagePlan,
    PendingSummary,
    PlanPages,
    StatusChange,
)

FINISHED = {DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.failed, DeliveryStatus.queued,
            DeliveryStatus.suppressed, DeliveryStatus.held_out, DeliveryStatus.in_doubt}
COUNTED_BY_CAPS = (DeliveryStatus.sending, DeliveryStatus.queued, DeliveryStatus.sent, DeliveryStatus.delivered,
                   DeliveryStatus.in_doubt)
CONTROL = "control"
CONTROL_UNREACHABLE = "control_unreachable"   # held out, but no channel of the campaign could have reached them
CAPPED = "frequency_cap"
CANCELLED_BY_EVENT = "cancelled_by_event"
ONCE_PER_MEMBER = "once_per_member"
COOLDOWN = "cooldown"
FALLBACK = "fallback"      # reason of a row moved to the member's next channel after a permanent failure
REACHED = (DeliveryStatus.sending, DeliveryStatus.queued, DeliveryStatus.sent, DeliveryStatus.delivered,
           DeliveryStatus.in_doubt)
NO_WINDOW = "no_window"    # the send window and quiet hours never overlap for the member's time zone
CHARGED = (DeliveryStatus.sent, DeliveryStatus.queued, DeliveryStatus.in_doubt)
REPORTING_CHANNELS = ("sms", "whatsapp")
PULLED_CHANNELS = frozenset({"receipt", "inbox", "direct_mail"})   # the member picks these up: no quiet hours    # providers that call back with delivery reports
# who cut off an address, by channel, in the consent ledger
REVOKED_BY = {"email": ConsentSource.bounce, "telegram": ConsentSource.telegram}


# a page stops claiming new chunks after this long (its start-to-close timeout is 10 min): at a slow
# provider rate the rest of the page stays planned (``paced``) and the workflow sends it with the next pages
TIME_BUDGET_S = 6 * 60.0
# how long a chunk's outcomes are tried again while the database is away (within the 30 s heartbeat: it beats
# between tries)
RECORD_RETRY_S = 120.0

log = logging.getLogger(__name__)
T = TypeVar("T")

# a page's members share a few time zones and one `now`: the window math (~0.3 ms) runs once per zone
_next_allowed = functools.lru_cache(maxsize=4096)(schedule.next_allowed)


def parse_now(text: str | None) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC) if text else utcnow()


def _aware(dt: datetime | None) -> datetime | None:
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CampaignContext:
    id: int
    key: str
    program_id: int
    spec: CampaignSpec
    program: dict[str, Any]
    program_locale: str
    program_tz: str
    channels: tuple[str, ...]        # the fallback order (then the channels only follow-up steps use)
    costs: dict[str, Decimal]
    window: Any                      # schedule.DailyWindow | None
    quiet: dict[str, Any]            # channel → schedule.QuietHours | None
    caps: tuple[FrequencyCap, ...]
    expires_at: str | None = None
    template_versions: dict[str, int] = field(default_factory=dict)   # pinned at launch (None: newest)
    uses: frozenset[str] = frozenset()   # optional data the templates read: card, last_purchase
    coupon_pool: str | None = None       # template.yaml `coupon_pool`: a unique code per member
    # what a page asks per member and is the same for all of them (a step's order, a locale choice)
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def channel(self) -> str:
        """The first channel of the order."""
        return self.channels[0]

    def order(self, step: str, variant: str | None = None) -> tuple[str, ...]:
        """The step's channels in fallback order (a variant may have its own)."""
        key = ("order", step, variant)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = tuple(c.value for c in self.spec.channels_for(step, variant))
        return found

    def variant_of(self, member_id: int) -> str | None:
        """The member's A/B variant (deterministic), or None when the campaign has none."""
        return assign(self.key, member_id, self.spec.variants).key if self.spec.variants else None

    def template(self, step: str, variant: str | None = None) -> tuple[str, int | None]:
        """(template name, the version the campaign launched with)."""
        name = self.spec.template_for(step, variant)
        return name, self.template_versions.get(name)

    def info(self) -> CampaignInfo:
        return CampaignInfo(id=self.id, key=self.key, name=self.spec.name, program_id=self.program_id,
                            program=self.program, template=self.template, costs=self.costs,
                            expires_at=self.expires_at)


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivery_id: int
    member_id: int
    status: DeliveryStatus
    reason: str | None = None
    code: str | None = None
    provider_message_id: str | None = None
    revoke_address: bool = False
    retry_after: float | None = None
    cost: Decimal = Decimal(0)
    channel: str | None = None
    locale: str | None = None
    attempts: tuple[dict[str, Any], ...] | None = None   # the channels tried before, with their codes
    due_at: datetime | None = None
    dead_tokens: tuple[str, ...] = ()
    fallback: bool = False           # planned again on the member's next channel after a permanent failure


@dataclass
class _Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)  # left planned, by reason (not an outcome)
    cost: Decimal = Decimal(0)
    exhausted: bool = False
    unreported: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, status) not yet in metrics
    reported_cost: Decimal = Decimal(0)

    def add(self, status: str, reason: str | None, n: int = 1, channel: str | None = None) -> None:
        if status == DeliveryStatus.planned:
            self.deferred[reason or "planned"] += n
            return
        self.statuses[status] += n
        self.unreported[channel or "none", status] += n
        if reason:
            self.reasons[reason] += n

    def counts(self, *, audience: int = 0, already_done: int = 0) -> Counts:
        """Outcomes only: what is deferred is counted again when it is finally handled."""
        st = self.statuses
        return Counts(audience=audience, sent=st[DeliveryStatus.sent], suppressed=st[DeliveryStatus.suppressed],
                      failed=st[DeliveryStatus.failed], in_doubt=st[DeliveryStatus.in_doubt],
                      already_done=already_done, held_out=st[DeliveryStatus.held_out],
                      cost=str(self.cost), reasons=dict(self.reasons), queued=st[DeliveryStatus.queued])

    def report(self, ctx: CampaignContext, **sending: Any) -> None:
        """What was counted since the last report, to the process's metrics (``activities.metrics``)."""
        metrics.record(program=ctx.program["key"], currency=ctx.program["currency"], by_channel=self.unreported,
                       spent=self.cost - self.reported_cost, **sending)
        self.unreported.clear()
        self.reported_cost = self.cost


@dataclass(frozen=True, slots=True)
class _Member:
    """A recipient row of a page (or a due delivery) with what channel choice and rendering need."""

    id: int
    locale: str | None
    time_zone: str | None
    context: dict[str, Any]
    contacts: Contacts
    addresses: dict[str, str]
    push_tokens: tuple[str, ...] = ()
    whatsapp_open: bool = False
    quiet: Any = None                # the member's own quiet hours (schedule.QuietHours)


class DeliveryActivities:
    def __init__(self, *, engine: Engine, renderer: Renderer, registry: ChannelRegistry, signer: Signer,
                 base_url: str, unsubscribe_mailto: str, chunk_size: int = 100,
                 final_attempt: int = 10, limiter: SharedRateLimiter | None = None,
                 time_budget_s: float = TIME_BUDGET_S, record_retry_s: float = RECORD_RETRY_S) -> None:
        self._engine = engine
        self._record_retry_s = record_retry_s
        self._renderer = renderer
        self._registry = registry
        self._messages = MessageBuilder(renderer=renderer, signer=signer, base_url=base_url,
                                        unsubscribe_mailto=unsubscribe_mailto)
        limiter = limiter or SharedRateLimiter(engine)
        self._sender = Sender(limiter=limiter)
        self._sender_clock = limiter.now
        self._chunk = chunk_size
        self._final_attempt = final_attempt
        self._time_budget_s = time_budget_s
        self._campaigns: dict[int, CampaignContext] = {}
        self._pg = engine.dialect.name == "postgresql"

    async def aclose(self) -> None:
        await self._registry.aclose()

    # --- small activities -------------------------------------------------------------------

    @activity.defn(name="count_audience")
    async def count_audience(self, ref: CampaignRef) -> AudienceCount:
        def run() -> int:
            ctx = self.campaign(ref.campaign_id)
            with Session(self._engine) as s:
                return s.scalar(select(func.count()).select_from(Member).where(
                    self._recipients(ctx, ref.step, ref.occurrence, parse_now(ref.now)))) or 0
        return AudienceCount(total=await asyncio.to_thread(run))

    @activity.defn(name="plan_pages")
    async def plan_pages(self, inp: PlanPages) -> PagePlan:
        def run() -> list[int]:
            ctx = self.campaign(inp.campaign_id)
            where = (self._pending(ctx, inp.step, inp.occurrence) if inp.pending_only
                     else self._recipients(ctx, inp.step, inp.occurrence, parse_now(inp.now)))
            with Session(self._engine) as s:
                return list(s.scalars(
                    select(Member.id).where(where, Member.id > inp.after)  # type: ignore[operator]
                    .order_by(Member.id).limit(inp.page_size * inp.pages)))
        ids = await asyncio.to_thread(run)
        pages, after = [], inp.after
        for i in range(0, len(ids), inp.page_size):
            upto = ids[min(i + inp.page_size, len(ids)) - 1]
            pages.append(PageBounds(after=after, upto=upto))
            after = upto
        return PagePlan(pages=pages)

    @activity.defn(name="set_campaign_status")
    async def set_campaign_status(self, change: StatusChange) -> None:
        def run() -> None:
            values: dict[str, Any] = {"status": change.status}
            if change.status == "running":
                values["started_at"] = func.coalesce(Campaign.started_at, utcnow())
            if change.status in ("completed", "cancelled"):
                values["finished_at"] = utcnow()
            with session_scope(self._engine) as s:
                s.execute(update(Campaign).where(Campaign.id == change.campaign_id).values(**values))  # type: ignore[arg-type]
        await asyncio.to_thread(run)

    @activity.defn(name="pending_summary")
    async def pending_summary(self, ref: CampaignRef) -> PendingSummary:
        """Planned deliveries of a step not sent yet, by reason, and the earliest ``due_at``."""
        def run() -> PendingSummary:
            with Session(self._engine) as s:
                rows = s.execute(
                    select(Delivery.reason, func.count(), func.min(Delivery.due_at))
                    .where(Delivery.campaign_id == ref.campaign_id, Delivery.step == ref.step,
                           Delivery.occurrence == ref.occurrence, Delivery.status == DeliveryStatus.planned)
                    .group_by(Delivery.reason)).all()
            by_reason = {str(reason or "planned"): n for reason, n, _ in rows}
            dues = [due for reason, _, due in rows if reason == Deferral.outside_window and due is not None]
            next_open = min(dues) if dues else None
            if next_open is not None and next_open.tzinfo is None:  # SQLite returns naive UTC
                next_open = next_open.replace(tzinfo=UTC)
            return PendingSummary(by_reason=by_reason, next_open=next_open.isoformat() if next_open else None)
        return await asyncio.to_thread(run)

    @activity.defn(name="expire_pending")
    async def expire_pending(self, inp: ExpirePending) -> Counts:
        """The campaign ended (end date, cancel): deliveries still planned are suppressed with a reason."""
        def run() -> int:
            which = [Delivery.campaign_id == inp.campaign_id, Delivery.step == inp.step,
                     Delivery.status == DeliveryStatus.planned]
            if not inp.every_occurrence:
                which.append(Delivery.occurrence == inp.occurrence)
            with session_scope(self._engine) as s:
                return s.execute(update(Delivery).where(*which)  # type: ignore[arg-type]
                                 .values(status=DeliveryStatus.suppressed, reason=inp.reason,
                                         updated_at=utcnow())).rowcount
        n = await asyncio.to_thread(run)
        return Counts(suppressed=n, reasons={inp.reason: n} if n else {})

    # --- the hot path -----------------------------------------------------------------------

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        now = parse_now(inp.now)
        ctx = await asyncio.to_thread(self.campaign, inp.campaign_id)
        tally = _Tally()
        counts, targets = await self._write(self._prepare, ctx, inp, now, tally)
        await self._process(ctx, targets, now, tally, progress=lambda done: self._after_chunk(inp, done))
        return BatchResult(counts=tally.counts(audience=counts["audience"], already_done=counts["already_done"]),
                           budget_exhausted=tally.exhausted, deferred=dict(tally.deferred))

    @activity.defn(name="deliver_due")
    async def deliver_due(self, inp: DeliverDue) -> DueResult:
        """Planned deliveries of a triggered campaign whose due time has come (oldest first)."""
        now = parse_now(inp.now)
        ctx = await asyncio.to_thread(self.campaign, inp.campaign_id)
        tally = _Tally()
        targets, more, next_due = await self._write(self._prepare_due, ctx, inp, now, tally)
        await self._process(ctx, targets, now, tally, progress=lambda done: None)
        paced = bool(tally.deferred.get(Deferral.paced))   # what the page's time left over is due now
        return DueResult(counts=tally.counts(), more=(more or paced) and not tally.exhausted,
                         next_due=next_due.isoformat() if next_due else None, budget_exhausted=tally.exhausted)

    async def _process(self, ctx: CampaignContext, targets: list[Target], now: datetime, tally: _Tally,
                       progress: Any) -> None:
        transient: list[_Outcome] = []
        retry_after: float | None = None
        final = activity.info().attempt >= self._final_attempt
        info = ctx.info()
        queue = deque(targets)
        handled = 0
        started = time.monotonic()
        # no claimed message waits for a rate slot past this: it stays planned (paced) for the next round
        deadline = self._sender_clock() + 1.5 * self._time_budget_s
        while queue:
            if time.monotonic() - started > self._time_budget_s:
                left = [t.delivery_id for t in queue]
                await self._write(self._defer, left, Deferral.paced)
                tally.add(DeliveryStatus.planned, Deferral.paced, len(left))
                break
            chunk = [queue.popleft() for _ in range(min(self._chunk, len(queue)))]
            size = len(chunk)
            if tally.exhausted:
                await self._write(self._defer, [t.delivery_id for t in chunk], Deferral.budget_exhausted)
                tally.add(DeliveryStatus.planned, Deferral.budget_exhausted, len(chunk))
                handled += len(chunk)
                continue
            rendered: list[tuple[Target, OutboundMessage, Decimal]] = []
            outcomes: list[_Outcome] = []
            if ctx.coupon_pool:   # each member's unique code, drawn once for good
                codes = await asyncio.to_thread(self._coupons, ctx, [t.member_id for t in chunk])
                short = [t for t in chunk if t.member_id not in codes]
                outcomes += [_Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, "coupon_pool_empty",
                                      channel=t.channel, locale=t.locale) for t in short]
                chunk = [replace(t, context={**t.context, "coupon": codes[t.member_id]})
                         for t in chunk if t.member_id in codes]
            for t in chunk:
                try:
                    msg, cost = self._messages.build(info, t)
                except TemplateProblem:
                    outcomes.append(self._fall_back(ctx, t, "render_error", now, reason="render_error"))
                    continue
                rendered.append((t, msg, cost))
            claimed = await self._write(self._claim, ctx, rendered, now, tally)
            routes = await asyncio.to_thread(self._routes, ctx, {t.channel for t, _, _ in claimed})
            began = time.time()
            sent = await self._sender.send_all([(t, m) for t, m, _ in claimed], routes,
                                               heartbeat=lambda: activity.heartbeat(handled), deadline=deadline,
                                               recheck=lambda ts: asyncio.to_thread(self._denied_now, ctx, ts))
            by_id = {t.delivery_id: t for t in chunk}
            for (t, _, cost), result in zip(claimed, sent, strict=True):
                o = self._outcome(ctx, t, result, cost, now)
                if o.reason == Deferral.paced:           # its rate slot is after the page's deadline
                    outcomes.append(o)
                    tally.add(DeliveryStatus.planned, Deferral.paced)
                    continue
                if o.status == DeliveryStatus.planned and not o.fallback and final:   # deferred every attempt
                    o = replace(o, status=DeliveryStatus.failed,
                                reason="provider_account" if o.reason == "provider_account" else "transient")
                if o.status == DeliveryStatus.planned and not o.fallback:   # nothing sent: try later
                    transient.append(o)
                    if o.retry_after:
                        retry_after = max(retry_after or 0.0, o.retry_after)
                outcomes.append(o)
            for o in outcomes:
                if o.fallback:
                    if o.due_at is None:
                        queue.append(self._retarget(ctx, by_id[o.delivery_id], o))
                    else:
                        tally.add(DeliveryStatus.planned, Deferral.outside_window)
                    continue
                if o.status != DeliveryStatus.planned:
                    tally.add(o.status, o.reason if o.status not in (DeliveryStatus.sent, DeliveryStatus.queued)
                              else None, channel=o.channel)
                if o.status in CHARGED:
                    tally.cost += o.cost
            await self._record_surely(ctx, outcomes, heartbeat=lambda: activity.heartbeat(handled))
            tally.report(ctx, **({"due": now, "began": began, "seconds": time.time() - began} if claimed else {}))
            handled += size
            progress(handled)
            activity.heartbeat(handled)
        tally.report(ctx)   # what no chunk reported: the page's preparation, budget and pacing deferrals
        if transient:
            account = sorted({f"{o.channel} ({o.code})" for o in transient if o.reason == "provider_account"})
            if account:   # the operator's problem: say which account, in the activity's failure
                raise ApplicationError(
                    f"{len(transient)} message(s) wait: the provider refused the program's account on "
                    f"{', '.join(account)}; fix it with `clarion channels set` (nothing was sent)",
                    type="ProviderAccount", next_retry_delay=timedelta(seconds=60))
            raise ApplicationError(
                f"{len(transient)} message(s) deferred by the provider; the page will be retried",
                type="TransientDelivery",
                next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
            )

    async def _record_surely(self, ctx: CampaignContext, outcomes: Sequence[_Outcome], heartbeat: Any) -> None:
        """:meth:`_record`, tried again while the database is away (locked past the busy timeout, a PostgreSQL
        restart) for up to ``record_retry_s``: these messages went out, and only this process knows it. Given up,
        the page's retry finds the rows `sending` and reports them in doubt. A transaction is all or nothing, so
        trying it again writes nothing twice (its UPDATEs touch rows still `sending` or `planned`)."""
        delay, give_up = 0.2, time.monotonic() + self._record_retry_s
        while True:
            try:
                await self._write(self._record, ctx, outcomes)
                return
            except DBAPIError as exc:
                transient = isinstance(exc, OperationalError) or exc.connection_invalidated
                if not transient or time.monotonic() + delay > give_up:
                    raise
                log.warning("recording %d outcome(s) of campaign %s: the database is away (%s); trying again in "
                            "%.1f s", len(outcomes), ctx.id, type(exc.orig).__name__, delay)
                heartbeat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a transaction that writes: :func:`storage.db.run_write` (on SQLite, on the loop's thread
        in the write turn). The functions given count nothing before their first write."""
        return await run_write(self._engine, fn, *args)

    def _after_chunk(self, inp: DeliverBatch, handled: int) -> None:
        """Called after each chunk's outcomes are committed (a seam for fault-injection tests)."""

    def _routes(self, ctx: CampaignContext, channels: set[str]) -> dict[str, Route]:
        return {c: self._registry.route(ctx.program_id, c) for c in channels}

    def _outcome(self, ctx: CampaignContext, t: Target, so: SendOutcome, cost: Decimal, now: datetime) -> _Outcome:
        """A channel's answer as the delivery's next state."""
        base = _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, code=so.code, cost=cost,
                        channel=t.channel, locale=t.locale, dead_tokens=so.dead_tokens,
                        revoke_address=so.revoke_address, attempts=t.attempts or None)
        if so.kind in ("sent", "queued"):
            status = DeliveryStatus.sent if so.kind == "sent" else DeliveryStatus.queued
            return replace(base, status=status, provider_message_id=so.provider_message_id,
                           reason="sandbox" if so.sandbox else None)
        if so.kind == "in_doubt":
            return replace(base, status=DeliveryStatus.in_doubt, reason="connection_lost")
        if so.kind == "rate_limited":
            return replace(base, reason="rate_limited", retry_after=so.retry_after)
        if so.kind == "transient":
            return replace(base, reason="transient")
        if so.kind == "account":
            return replace(base, reason="provider_account")
        if so.kind == "paced":
            return replace(base, reason=Deferral.paced)
        if so.kind == "denied":
            return replace(base, status=DeliveryStatus.suppressed, reason=so.code)
        return self._fall_back(ctx, t, so.code, now, cost=cost, revoke_address=so.revoke_address,
                               dead_tokens=so.dead_tokens)

    def _fall_back(self, ctx: CampaignContext, t: Target, code: str | None, now: datetime, *,
                   reason: str = "permanent", cost: Decimal = Decimal(0), revoke_address: bool = False,
                   dead_tokens: tuple[str, ...] = ()) -> _Outcome:
        """A permanent failure on ``t.channel``: the member's next channel (now, or when its window
        opens), else ``failed``."""
        attempts = (*t.attempts, {"channel": t.channel, "code": code})
        failed = _Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, reason, code, cost=cost,
                          channel=t.channel, locale=t.locale, revoke_address=revoke_address,
                          dead_tokens=dead_tokens, attempts=attempts if t.attempts else None)
        tried = tried_channels(attempts)
        left = [c for c in t.candidates if c not in tried]
        if not left:
            return failed
        channel, when = pick(left, now, lambda c: self._window_opens(ctx, t.time_zone, now, c, t.quiet))
        if channel is None:
            return failed
        reason = FALLBACK if when == now else Deferral.outside_window   # waits for the next channel's window
        return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, reason, code, cost=cost,
                        channel=channel, locale=self.locale_for(ctx, t.step, t.member_locale, channel, t.variant),
                        revoke_address=revoke_address, dead_tokens=dead_tokens, attempts=attempts,
                        due_at=None if when == now else when, fallback=True)

    def _retarget(self, ctx: CampaignContext, t: Target, o: _Outcome) -> Target:
        channel = o.channel or t.channel
        return replace(t, channel=channel, locale=o.locale or t.locale, attempts=o.attempts or (),
                       address=t.addresses.get(channel, ""))

    # --- who -----------------------------------------------------------------------------------

    def _recipients(self, ctx: CampaignContext, step: str, occurrence: str, now: datetime) -> ColumnElement[bool]:
        """The members a step goes to: the audience for the main step, responders for a follow-up."""
        if step == "main":
            return audience_clause(ctx.program_id, ctx.spec.audience, now=now)
        follow_up = ctx.spec.follow_up(step)
        if follow_up is None:
            raise ApplicationError(f"campaign {ctx.key!r} has no step {step!r}", type="UnknownStep",
                                   non_retryable=True)
        steps = ctx.spec.steps
        return followup_clause(ctx.id, follow_up, occurrence=occurrence, previous_step=steps[steps.index(step) - 1])

    def _pending(self, ctx: CampaignContext, step: str, occurrence: str) -> ColumnElement[bool]:
        return Member.id.in_(select(Delivery.member_id).where(  # type: ignore[union-attr]
            Delivery.campaign_id == ctx.id, Delivery.step == step, Delivery.occurrence == occurrence,
            Delivery.status == DeliveryStatus.planned))

    # --- steps ------------------------------------------------------------------------------

    def campaign(self, campaign_id: int) -> CampaignContext:
        found = self._campaigns.get(campaign_id)
        if found is not None:
            return found
        with Session(self._engine) as s:
            row = s.get(Campaign, campaign_id)
            if row is None:
                raise ApplicationError(f"campaign {campaign_id} not found", type="CampaignNotFound",
                                       non_retryable=True)
            program = s.get(Program, row.program_id)
            assert program is not None
            spec = CampaignSpec.model_validate(row.spec)
            rules = program_rules(program.settings)
            channels = tuple(c.value for c in spec.all_channels)
            caps = [*spec.caps]
            if spec.topic != SERVICE_TOPIC:
                caps += [c for c in rules.caps if c.scope == CapScope.program]
            ctx = CampaignContext(
                id=campaign_id, key=row.key, program_id=row.program_id, spec=spec,
                program={"key": program.key, "name": program.name, "currency": program.currency,
                         "time_zone": program.time_zone, "brand": rules.brand.model_dump()},
                program_locale=program.default_locale, program_tz=program.time_zone, channels=channels,
                costs=unit_costs(rules.unit_costs), window=daily_window(spec.send_window),
                quiet={c: quiet_hours_for(rules, c) for c in channels}, caps=tuple(caps),
                expires_at=spec.end_at.isoformat() if spec.end_at else None,
            )
            pinned = row.template_versions
        if pinned is None:   # launched before versions were pinned (migration 0005): pin what it renders now
            pinned = self._pin_now(campaign_id, spec)
        ctx = replace(ctx, template_versions={str(k): int(v) for k, v in pinned.items()})
        ctx = replace(ctx, **self._template_needs(ctx))
        self._campaigns[campaign_id] = ctx
        return ctx

    def _pin_now(self, campaign_id: int, spec: CampaignSpec) -> dict[str, Any]:
        """Pin the current version of each of the campaign's templates and keep them on its row, once: a
        campaign launched before pinning existed then renders the same version for as long as it runs, and
        a later import does not change what it sends. Two workers racing keep the first one's pins."""
        pins: dict[str, int] = {}
        for name in spec.all_templates:
            try:
                pins[name] = self._renderer.store.pin(name)
            except LookupError:
                continue    # a template that is gone: rendering reports it per message
        with session_scope(self._engine) as s:
            s.execute(update(Campaign).where(Campaign.id == campaign_id,  # type: ignore[arg-type]
                                             Campaign.template_versions.is_(None))  # type: ignore[union-attr]
                      .values(template_versions=pins))
            stored = s.scalar(select(Campaign.template_versions).where(Campaign.id == campaign_id))  # type: ignore[arg-type]
        return stored if stored is not None else pins

    def _coupons(self, ctx: CampaignContext, member_ids: list[int]) -> dict[int, str]:
        with session_scope(self._engine) as s:     # assign_codes takes its own locks (members.coupons)
            return assign_codes(session=s, program_id=ctx.program_id, pool=ctx.coupon_pool or "",
                                member_ids=member_ids)

    def _template_needs(self, ctx: CampaignContext) -> dict[str, Any]:
        """What the campaign's templates read beyond the member row (so a page loads only that), and the
        coupon pool they draw from."""
        uses: set[str] = set()
        pools: set[str] = set()
        for name in ctx.spec.all_templates:
            try:
                meta = self._renderer.meta(name, ctx.template_versions.get(name))
                files = self._renderer.store.get(name, meta["version"]).files
            except (TemplateProblem, LookupError):
                continue
            text = "\n".join(files.values())
            uses |= {word for word in ("card", "last_purchase") if re.search(rf"\b{word}\b", text)}
            if meta.get("coupon_pool"):
                pools.add(str(meta["coupon_pool"]))
        if len(pools) > 1:
            raise ApplicationError(f"campaign {ctx.key!r}: its templates draw from several coupon pools "
                                   f"({', '.join(sorted(pools))}); use one", type="InvalidCampaign", non_retryable=True)
        return {"uses": frozenset(uses), "coupon_pool": next(iter(pools), None)}

    def _members(self, s: Session, ctx: CampaignContext, where: Sequence[Any], now: datetime) -> list[_Member]:
        """The recipients matching ``where``, with the contacts the campaign's channels need (one query,
        plus one for push tokens and one for cards when the campaign has those channels)."""
        wanted = set(ctx.channels)
        cols: list[Any] = [Member.id, Member.email, Member.locale, Member.first_name, Member.last_name,
                           Member.kind, Member.time_zone, Member.attributes, Member.preferences]
        if wanted & {"sms", "whatsapp"}:
            cols.append(Member.phone)
        if "whatsapp" in wanted:
            cols.append(Member.whatsapp_inbound_at)
        if "telegram" in wanted:
            cols.append(Member.telegram_chat_id)
        if "direct_mail" in wanted:
            cols.append(Member.postal_address)
        rows = list(s.execute(select(*cols).where(*where).order_by(Member.id)))
        ids = [r.id for r in rows]
        tokens: dict[int, list[str]] = {}
        if "push" in wanted and ids:
            for mid, token in s.execute(select(PushToken.member_id, PushToken.token)
                                        .where(PushToken.member_id.in_(ids)).order_by(PushToken.id)):  # type: ignore[attr-defined]
                tokens.setdefault(mid, []).append(token)
        cards: dict[int, dict[str, str]] = {}
        if ("receipt" in wanted or "card" in ctx.uses) and ids:
            for mid, number, status in s.execute(select(Card.member_id, Card.number, Card.status).where(
                    Card.member_id.in_(ids), Card.status == "active").order_by(Card.id)):  # type: ignore[attr-defined]
                cards.setdefault(mid, {"number": number, "status": status})
        carded = set(cards)
        purchases = self._last_purchases(s, ids) if "last_purchase" in ctx.uses and ids else {}
        out: list[_Member] = []
        program_tz = ctx.program_tz
        for r in rows:
            m = r._mapping
            postal_address = m["postal_address"] if "direct_mail" in wanted else None
            postal = address_lines(postal_address, r.first_name, r.last_name) if postal_address else []
            phone = m["phone"] if "sms" in wanted or "whatsapp" in wanted else None
            chat = m["telegram_chat_id"] if "telegram" in wanted else None
            inbound = m["whatsapp_inbound_at"] if "whatsapp" in wanted else None
            addresses = {"email": r.email or "", "sms": phone or "", "whatsapp": phone or "",
                         "telegram": chat or "", "direct_mail": "\n".join(postal)}
            out.append(_Member(
                id=r.id, locale=r.locale, time_zone=r.time_zone,
                context={"member": {**(r.attributes or {}), "first_name": r.first_name,
                                    "last_name": r.last_name, "kind": r.kind, "locale": r.locale},
                         "time_zone": r.time_zone or program_tz,
                         "card": cards.get(r.id), "last_purchase": purchases.get(r.id)},
                contacts=Contacts(email=r.email, phone=phone, telegram_chat_id=chat,
                                  push_tokens=len(tokens.get(r.id, ())), has_card=r.id in carded,
                                  postal=bool(postal)),
                addresses=addresses, push_tokens=tuple(tokens.get(r.id, ())),
                whatsapp_open=inbound is not None and session_open(_aware(inbound), now),
                quiet=member_quiet_hours(r.preferences) if r.preferences else None))
        return out

    def _last_purchases(self, s: Session, member_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Each member's latest purchase event (for ``{{ last_purchase.amount }}`` and the like)."""
        latest = (select(Event.member_id, func.max(Event.occurred_at).label("at"))
                  .where(Event.member_id.in_(member_ids), Event.type == "purchase")  # type: ignore[attr-defined]
                  .group_by(Event.member_id).subquery())
        out: dict[int, dict[str, Any]] = {}
        for mid, at, payload in s.execute(select(Event.member_id, Event.occurred_at, Event.payload).join(
                latest, (latest.c.member_id == Event.member_id) & (latest.c.at == Event.occurred_at))
                .where(Event.type == "purchase")):
            out[mid] = {**(payload or {}), "occurred_at": _aware(at).isoformat() if at else None}
        return out

    def _states(self, s: Session, ctx: CampaignContext, member_ids: list[int]) -> dict[str, dict[int, dict[str, str]]]:
        """channel → member → {topic: status}, for the campaign's channels."""
        return {c: ledger.states_for(session=s, member_ids=member_ids, channel=c) for c in ctx.channels}

    def initial_row(self, ctx: CampaignContext, step: str, m: _Member,
                    states: dict[str, dict[int, dict[str, str]]]) -> tuple[str, str | None, str, str]:
        """(status, reason, channel, locale) of a new delivery row: held out, suppressed or planned on the
        member's first possible channel."""
        if ctx.spec.holdout and held_out(ctx.key, m.id, ctx.spec.holdout):
            # the control group of the uplift is the held-out members the campaign could have reached
            # (consent and an address on one of its channels), as its treated members are the reached ones
            reachable = self._candidates(ctx, step, m, states, ()).channels
            first = reachable[0] if reachable else ctx.order(step)[0]
            return (DeliveryStatus.held_out, CONTROL if reachable else CONTROL_UNREACHABLE, first,
                    self.locale_for(ctx, step, m.locale, first))
        variant = ctx.variant_of(m.id)
        choice = self._candidates(ctx, step, m, states, ())
        channel = choice.channels[0] if choice.channels else ctx.order(step, variant)[0]
        locale = self.locale_for(ctx, step, m.locale, channel, variant)
        if not choice.channels:
            return DeliveryStatus.suppressed, choice.reason, channel, locale
        return DeliveryStatus.planned, None, channel, locale

    def initial_rows(self, s: Session, ctx: CampaignContext, step: str, member_ids: Sequence[int],
                     now: datetime) -> dict[int, tuple[str, str | None, str, str, str | None]]:
        """``initial_row`` and the report segment of each member of ``member_ids`` (triggered campaigns
        create rows this way)."""
        members = self._members(s, ctx, [Member.id.in_(list(member_ids))], now)  # type: ignore[attr-defined]
        states = self._states(s, ctx, [m.id for m in members])
        segments = self.segments_of(s, ctx, [m.id for m in members], now)
        return {m.id: (*self.initial_row(ctx, step, m, states), segments.get(m.id)) for m in members}

    def segments_of(self, s: Session, ctx: CampaignContext, member_ids: list[int],
                    now: datetime) -> dict[int, str]:
        """Each member's report segment: the first of the spec's segments they match, else "other"; empty
        when the spec names none."""
        if not ctx.spec.segments or not member_ids:
            return {}
        return segment_of(s, ctx.program_id, ctx.spec.segments, member_ids, now=now)

    def _candidates(self, ctx: CampaignContext, step: str, m: _Member,
                    states: dict[str, dict[int, dict[str, str]]], tried: Sequence[str]) -> Any:
        order = ctx.order(step, ctx.variant_of(m.id))
        return candidates(order, topic=ctx.spec.topic, contacts=m.contacts,
                          states={c: states.get(c, {}).get(m.id, {}) for c in order}, tried=tried,
                          available=self._registry.available(ctx.program_id))

    def _route(self, ctx: CampaignContext, step: str, delivery_id: int, m: _Member,
               states: dict[str, dict[int, dict[str, str]]], attempts: Any,
               now: datetime) -> tuple[Target | None, datetime | None, str | None]:
        """(target, when, reason): where a planned row goes now. ``when`` is ``now`` to send now, a later
        time to wait for a window, None with a reason when no channel is left (suppressed)."""
        tried = tried_channels(attempts)
        choice = self._candidates(ctx, step, m, states, tried)
        if not choice.channels:
            return None, None, choice.reason
        channel, when = pick(choice.channels, now, lambda c: self._window_opens(ctx, m.time_zone, now, c, m.quiet))
        if channel is None:
            return None, None, NO_WINDOW
        variant = ctx.variant_of(m.id)
        target = Target(
            delivery_id=delivery_id, member_id=m.id, channel=channel, variant=variant,
            locale=self.locale_for(ctx, step, m.locale, channel, variant), context=m.context, step=step,
            address=m.addresses.get(channel, ""), addresses=m.addresses, push_tokens=m.push_tokens,
            session_open=m.whatsapp_open, candidates=choice.channels,
            attempts=tuple(a for a in (attempts or []) if isinstance(a, dict)), time_zone=m.time_zone,
            member_locale=m.locale, quiet=m.quiet)
        return target, when, None

    def _prepare(self, ctx: CampaignContext, inp: DeliverBatch, now: datetime,
                 tally: _Tally) -> tuple[Counter[str], list[Target]]:
        counts: Counter[str] = Counter()
        key = (Delivery.campaign_id == ctx.id, Delivery.step == inp.step, Delivery.occurrence == inp.occurrence,
               Delivery.member_id > inp.after, Delivery.member_id <= inp.upto)  # type: ignore[operator]
        who = (self._pending(ctx, inp.step, inp.occurrence) if inp.pending_only
               else self._recipients(ctx, inp.step, inp.occurrence, now))
        with session_scope(self._engine) as s:
            # reads first (on SQLite outside a transaction: pysqlite begins one at the first write)
            members = self._members(s, ctx, [who, Member.id > inp.after, Member.id <= inp.upto], now)  # type: ignore[operator]
            counts["audience"] = 0 if inp.pending_only else len(members)

            def existing_rows() -> dict[int, tuple[int, str, Any]]:
                return {m: (d, st, att) for d, m, st, att in s.execute(
                    select(Delivery.id, Delivery.member_id, Delivery.status, Delivery.attempts).where(*key))}

            existing = existing_rows()
            states = self._states(s, ctx, [m.id for m in members])
            segments = self.segments_of(s, ctx, [m.id for m in members if m.id not in existing], now)
            new_rows: list[dict[str, Any]] = []
            for m in members:
                if m.id in existing:
                    continue
                status, reason, channel, locale = self.initial_row(ctx, inp.step, m, states)
                new_rows.append({
                    "campaign_id": ctx.id, "member_id": m.id, "step": inp.step, "occurrence": inp.occurrence,
                    "status": status, "reason": reason, "channel": channel, "locale": locale,
                    "variant": ctx.variant_of(m.id) if status != DeliveryStatus.held_out else None,
                    "segment": segments.get(m.id), "created_at": utcnow(), "updated_at": utcnow(),
                })
            # the writes (the caller, _write, holds the turn). Rows a crashed attempt left `sending`: the provider
            # may have the message → in doubt
            interrupted = set(s.scalars(select(Delivery.member_id).where(
                *key, Delivery.status == DeliveryStatus.sending)))
            if interrupted:
                s.execute(update(Delivery).where(*key, Delivery.status == DeliveryStatus.sending)
                          .values(status=DeliveryStatus.in_doubt, reason="interrupted", updated_at=utcnow()))
                tally.add(DeliveryStatus.in_doubt, "interrupted", len(interrupted))
            if new_rows:
                s.execute(insert_ignore(s, Delivery.__table__, ["campaign_id", "member_id", "step", "occurrence"]),
                          new_rows)
            if new_rows or interrupted:
                existing = existing_rows()
            # counted after the first write: until then _write may run this again (SQLite was locked)
            for row in new_rows:
                if row["status"] != DeliveryStatus.planned:
                    tally.add(row["status"], row["reason"], channel=row["channel"])
            targets, gone, waiting = self._targets(
                ctx, inp, members, existing, new_ids={r["member_id"] for r in new_rows}, interrupted=interrupted,
                states=states, now=now, counts=counts)
            self._suppress(s, gone, tally)
            self._wait_for_windows(s, waiting, tally)
        return counts, targets

    def _targets(self, ctx: CampaignContext, inp: DeliverBatch, members: list[_Member],
                 existing: dict[int, tuple[int, str, Any]], *, new_ids: set[int], interrupted: set[int],
                 states: dict[str, dict[int, dict[str, str]]], now: datetime, counts: Counter[str],
                 ) -> tuple[list[Target], dict[str, list[int]], dict[datetime | None, list[int]]]:
        """A page's rows still planned, routed: (sent now, no channel left by reason, waiting by when the window
        opens)."""
        targets: list[Target] = []
        waiting: dict[datetime | None, list[int]] = {}
        gone: dict[str, list[int]] = {}
        for m in members:
            delivery_id, status, attempts = existing[m.id]
            if status in FINISHED:
                if m.id not in new_ids and m.id not in interrupted:
                    counts["already_done"] += 1
                continue
            if status != DeliveryStatus.planned:  # pragma: no cover - sending was turned in_doubt above
                continue
            target, when, reason = self._route(ctx, inp.step, delivery_id, m, states, attempts, now)
            if target is None:
                gone.setdefault(reason or NO_WINDOW, []).append(delivery_id)
            elif when != now:
                waiting.setdefault(when, []).append(delivery_id)
            else:
                targets.append(target)
        return targets, gone, waiting

    def _prepare_due(self, ctx: CampaignContext, inp: DeliverDue, now: datetime,
                     tally: _Tally) -> tuple[list[Target], bool, datetime | None]:
        # rows the budget missed are included: the workflow only asks again once the budget was changed
        due = (Delivery.due_at.is_(None)) | (Delivery.due_at <= now)  # type: ignore[union-attr,operator]
        base = (Delivery.campaign_id == ctx.id, Delivery.status == DeliveryStatus.planned)
        share = (Delivery.member_id % inp.partitions == inp.partition,) if inp.partitions > 1 else ()  # type: ignore[operator]
        with session_scope(self._engine) as s:
            rows = list(s.execute(
                # labelled: a bare `r.id` would be the delivery's id, not the member's
                select(Delivery.id.label("delivery_id"), Delivery.step, Delivery.occurrence,  # type: ignore[union-attr]
                       Delivery.attempts, Delivery.member_id.label("id"))  # type: ignore[attr-defined]
                .where(*base, *share, due).order_by(Delivery.id).limit(inp.limit + 1)))
            more = len(rows) > inp.limit
            rows = rows[:inp.limit]
            cancelled = self._cancelled_by_event(s, ctx, rows)
            if cancelled:
                s.execute(update(Delivery).where(Delivery.id.in_(cancelled))  # type: ignore[union-attr]
                          .values(status=DeliveryStatus.suppressed, reason=CANCELLED_BY_EVENT, updated_at=utcnow()))
                tally.add(DeliveryStatus.suppressed, CANCELLED_BY_EVENT, len(cancelled))
            repeated = self._already_reacted(s, ctx, [r for r in rows if r.delivery_id not in cancelled], now)
            if repeated:
                reason = ONCE_PER_MEMBER if ctx.spec.trigger and ctx.spec.trigger.once_per_member else COOLDOWN
                s.execute(update(Delivery).where(Delivery.id.in_(repeated))  # type: ignore[union-attr]
                          .values(status=DeliveryStatus.suppressed, reason=reason, updated_at=utcnow()))
                tally.add(DeliveryStatus.suppressed, reason, len(repeated))
                cancelled |= repeated
            live = [r for r in rows if r.delivery_id not in cancelled]
            events = self._trigger_events(s, ctx, [r.occurrence for r in live])
            members = {m.id: m for m in self._members(
                s, ctx, [Member.id.in_({r.id for r in live})], now)}  # type: ignore[attr-defined]
            states = self._states(s, ctx, list(members))
            targets: list[Target] = []
            waiting: dict[datetime | None, list[int]] = {}
            gone: dict[str, list[int]] = {}
            for r in live:
                m = members.get(r.id)
                if m is None:  # pragma: no cover - members are never deleted while deliveries point at them
                    continue
                target, when, reason = self._route(ctx, r.step, r.delivery_id, m, states, r.attempts, now)
                if target is None:
                    gone.setdefault(reason or NO_WINDOW, []).append(r.delivery_id)
                elif when != now:
                    waiting.setdefault(when, []).append(r.delivery_id)
                else:
                    if r.occurrence in events:  # the reaction's event: templates may say what was bought
                        target = replace(target, context={**target.context, "event": events[r.occurrence]})
                    targets.append(target)
            self._suppress(s, gone, tally)
            self._wait_for_windows(s, waiting, tally)
            next_due = s.scalar(select(func.min(Delivery.due_at)).where(*base, *share, Delivery.due_at > now))  # type: ignore[operator]
        return targets, more, _aware(next_due)

    def _suppress(self, s: Session, by_reason: dict[str, list[int]], tally: _Tally) -> None:
        """Planned rows whose member has no channel left (consent revoked, address gone since)."""
        for reason, ids in by_reason.items():
            s.execute(update(Delivery).where(Delivery.id.in_(ids),  # type: ignore[union-attr]
                                             Delivery.status == DeliveryStatus.planned)
                      .values(status=DeliveryStatus.suppressed, reason=reason, updated_at=utcnow()))
            tally.add(DeliveryStatus.suppressed, reason, len(ids))

    def _wait_for_windows(self, s: Session, waiting: dict[datetime | None, list[int]], tally: _Tally) -> None:
        """Rows outside their window stay planned until it opens (``due_at``); never-opening ones are dropped."""
        for opens, ids in waiting.items():
            if opens is None:
                s.execute(update(Delivery).where(Delivery.id.in_(ids))  # type: ignore[union-attr]
                          .values(status=DeliveryStatus.suppressed, reason=NO_WINDOW, updated_at=utcnow()))
                tally.add(DeliveryStatus.suppressed, NO_WINDOW, len(ids))
                continue
            self._defer_rows(s, ids, Deferral.outside_window, due_at=opens)
            tally.add(DeliveryStatus.planned, Deferral.outside_window, len(ids))

    def _trigger_events(self, s: Session, ctx: CampaignContext, occurrences: list[str]) -> dict[str, dict[str, Any]]:
        """The events that triggered these reactions (occurrence = the event's id), for the templates."""
        if ctx.spec.trigger is None or ctx.spec.trigger.event is None or not occurrences:
            return {}
        return {sid: {"id": sid, "type": typ, "occurred_at": at.isoformat(), **(payload or {})}
                for sid, typ, at, payload in s.execute(
                    select(Event.source_event_id, Event.type, Event.occurred_at, Event.payload).where(
                        Event.program_id == ctx.program_id,
                        Event.source_event_id.in_(occurrences)))}  # type: ignore[attr-defined]

    def _already_reacted(self, s: Session, ctx: CampaignContext, rows: Sequence[Any], now: datetime) -> set[int]:
        """Once-per-member and cooldown, checked again when a reaction is due: with cancel-if, several
        reactions of a member may wait at once (a newer one may cancel an older one); the first that is
        actually sent uses up "once" (or starts the cooldown), and the others are suppressed."""
        trigger = ctx.spec.trigger
        if trigger is None or not rows or not (trigger.once_per_member or trigger.cooldown is not None):
            return set()
        reached = select(Delivery.member_id).where(
            Delivery.campaign_id == ctx.id, Delivery.step == "main",
            Delivery.member_id.in_({r.id for r in rows}),  # type: ignore[attr-defined]
            Delivery.status.in_(REACHED))  # type: ignore[attr-defined]
        if not trigger.once_per_member and trigger.cooldown is not None:
            reached = reached.where(Delivery.sent_at > now - trigger.cooldown)  # type: ignore[operator]
        taken = set(s.scalars(reached))
        repeated: set[int] = set()
        for r in rows:  # oldest first: within this page, the first reaction of a member goes
            if r.id in taken:
                repeated.add(r.delivery_id)
            taken.add(r.id)
        return repeated

    def _cancelled_by_event(self, s: Session, ctx: CampaignContext, rows: Sequence[Any]) -> set[int]:
        """Pending reactions whose member had a newer event of the cancel-if type (e.g. bought again)."""
        trigger = ctx.spec.trigger
        if trigger is None or trigger.cancel_if is None or not rows:
            return set()
        from campaigns.triggers import event_conditions

        by_occurrence = {r.occurrence: r.delivery_id for r in rows}
        origin = Event.__table__.alias("origin")
        later = Event.__table__.alias("later")
        found = s.execute(
            select(origin.c.source_event_id)
            .where(origin.c.program_id == ctx.program_id, origin.c.source_event_id.in_(list(by_occurrence)))
            .where(select(later.c.id).where(
                later.c.member_id == origin.c.member_id, later.c.type == trigger.cancel_if.event,
                later.c.occurred_at > origin.c.occurred_at, later.c.id != origin.c.id,
                *event_conditions(later.c.payload, trigger.cancel_if.where)).exists()))
        return {by_occurrence[occ] for occ, in found}

    def _window_opens(self, ctx: CampaignContext, tz: str | None, now: datetime, channel: str,
                      member_quiet: Any = None) -> datetime | None:
        """``now`` when the member may be sent on ``channel`` now, else when its window opens (None: never).
        The member's own quiet hours add to the channel's, on the channels that reach them unasked."""
        periods = tuple(q for q in (ctx.quiet.get(channel),
                                    member_quiet if channel not in PULLED_CHANNELS else None) if q is not None)
        if ctx.window is None and not periods:
            return now
        return _next_allowed(now, tz or ctx.program_tz, ctx.window, periods)

    def locale_for(self, ctx: CampaignContext, step: str, member_locale: str | None, channel: str = "email",
                   variant: str | None = None) -> str:
        key = ("locale", step, member_locale, channel, variant)
        found = ctx.memo.get(key)
        if found is None:   # the campaign's templates are pinned: the same answer for as long as it runs
            name, version = ctx.template(step, variant)
            found = ctx.memo[key] = self._renderer.resolve_locale(
                name, member_locale, ctx.spec.locale_default or ctx.program_locale, channel=channel, version=version)
        return found

    def _defer(self, ids: list[int], reason: str) -> None:
        with write_scope(self._engine) as s:
            self._defer_rows(s, ids, reason)

    def _defer_rows(self, s: Session, ids: list[int], reason: str, due_at: datetime | None = None) -> None:
        if ids:
            s.execute(update(Delivery).where(Delivery.id.in_(ids),  # type: ignore[union-attr]
                                             Delivery.status == DeliveryStatus.planned)
                      .values(reason=reason, due_at=due_at, updated_at=utcnow()))

    def _claim(self, ctx: CampaignContext, items: Sequence[tuple[Target, OutboundMessage, Decimal]],
               now: datetime, tally: _Tally) -> list[tuple[Target, OutboundMessage, Decimal]]:
        """One transaction, the campaign row locked: consent re-checked, caps counted, budget reserved;
        the allowed rows become `sending` (committed)."""
        if not items:
            return []
        with write_scope(self._engine) as s:
            # lock the campaign row first: claims of one campaign serialize (budget), on SQLite all writers
            s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                      .values(budget_spent=Campaign.budget_spent))
            member_ids = [t.member_id for t, _, _ in items]
            if self._pg:  # caps across campaigns: one claimer per member at a time
                s.execute(select(Member.id).where(Member.id.in_(member_ids))  # type: ignore[union-attr]
                          .order_by(Member.id).with_for_update())
            # the rows still planned are ours: another attempt of this page (a timed-out one still running)
            # may have claimed some since we prepared them; claims of a campaign take turns on its row lock
            still = set(s.scalars(select(Delivery.id).where(
                Delivery.id.in_([t.delivery_id for t, _, _ in items]),  # type: ignore[union-attr]
                Delivery.status == DeliveryStatus.planned)))
            items = [item for item in items if item[0].delivery_id in still]
            states = {c: ledger.states_for(session=s, member_ids=member_ids, channel=c)
                      for c in {t.channel for t, _, _ in items}}
            capped = self._capped(s, ctx, member_ids, now)
            allowed, denied = [], []
            for item in items:
                t = item[0]
                decision = decide(states[t.channel].get(t.member_id, {}), topic=ctx.spec.topic, channel=t.channel)
                if not decision.allowed:
                    denied.append((t, str(decision.reason)))
                elif t.member_id in capped:
                    denied.append((t, CAPPED))
                else:
                    allowed.append(item)
            limit, spent = s.execute(select(Campaign.budget_limit, Campaign.budget_spent)
                                     .where(Campaign.id == ctx.id)).one()
            unreached: list[tuple[Target, OutboundMessage, Decimal]] = []
            if limit is not None:
                k = affordable([c for _, _, c in allowed], Decimal(limit) - Decimal(spent))
                allowed, unreached = allowed[:k], allowed[k:]
            reserved = sum((c for _, _, c in allowed), Decimal(0))
            if reserved:
                s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                          .values(budget_spent=Campaign.budget_spent + reserved))
            for t, reason in denied:
                s.execute(update(Delivery).where(Delivery.id == t.delivery_id,  # type: ignore[arg-type]
                                                 Delivery.status == DeliveryStatus.planned)
                          .values(status=DeliveryStatus.suppressed, reason=reason, channel=t.channel,
                                  updated_at=utcnow()))
                tally.add(DeliveryStatus.suppressed, reason, channel=t.channel)
            if unreached:
                self._defer_rows(s, [t.delivery_id for t, _, _ in unreached], Deferral.budget_exhausted)
                tally.add(DeliveryStatus.planned, Deferral.budget_exhausted, len(unreached))
                tally.exhausted = True
            # one UPDATE per (cost, channel), mostly one a chunk: an executemany costs a statement a row
            same: dict[tuple[Decimal, str], list[int]] = {}
            for t, _, c in allowed:
                same.setdefault((c, t.channel), []).append(t.delivery_id)
            table = Delivery.__table__
            for (cost, channel), ids in same.items():
                s.connection().execute(
                    update(table).where(table.c.id.in_(ids), table.c.status == DeliveryStatus.planned)
                    .values(status=DeliveryStatus.sending, reason=None, cost=cost, channel=channel, sent_at=now,
                            updated_at=utcnow()))
        return allowed

    def _denied_now(self, ctx: CampaignContext, targets: list[Target]) -> dict[int, str]:
        """Consent asked again right before a paced block goes: delivery id → why it may not (any longer)."""
        with Session(self._engine) as s:
            states = {c: ledger.states_for(session=s, member_ids=[t.member_id for t in targets], channel=c)
                      for c in {t.channel for t in targets}}
        denied = {}
        for t in targets:
            decision = decide(states[t.channel].get(t.member_id, {}), topic=ctx.spec.topic, channel=t.channel)
            if not decision.allowed:
                denied[t.delivery_id] = str(decision.reason)
        return denied

    def _capped(self, s: Session, ctx: CampaignContext, member_ids: list[int], now: datetime) -> set[int]:
        """Members at a frequency cap, counted from the deliveries ledger (sending, sent, in doubt)."""
        capped: set[int] = set()
        for cap in ctx.caps:
            q = (select(Delivery.member_id).where(
                    Delivery.member_id.in_(member_ids),  # type: ignore[attr-defined]
                    # no upper bound: a campaign running at the same time may have claimed with a later clock
                    Delivery.sent_at >= now - cap.per,  # type: ignore[operator]
                    Delivery.status.in_(COUNTED_BY_CAPS))  # type: ignore[attr-defined]
                 .group_by(Delivery.member_id).having(func.count() >= cap.max))
            if cap.scope == CapScope.campaign:
                q = q.where(Delivery.campaign_id == ctx.id)
            else:
                q = q.join(Campaign, Campaign.id == Delivery.campaign_id).where(Campaign.topic != SERVICE_TOPIC)
            capped.update(s.scalars(q))
        return capped

    def _record(self, ctx: CampaignContext, outcomes: Sequence[_Outcome]) -> None:
        """Outcomes of a chunk in one transaction (executemany); transient ones and fallbacks go back to
        `planned`. The cost reserved for a message that was not sent (failed, deferred) is given back.
        An address the provider says is dead is cut off in the consent ledger (a push token is deleted)."""
        from sqlalchemy import JSON

        table = Delivery.__table__
        stmt = (update(table).where(table.c.id == bindparam("b_id"),
                                    (table.c.status == DeliveryStatus.sending)
                                    | (table.c.status == DeliveryStatus.planned))
                .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
                        error_code=bindparam("b_code"), provider_message_id=bindparam("b_pmid"),
                        cost=bindparam("b_cost"), channel=bindparam("b_channel"), locale=bindparam("b_locale"),
                        attempts=bindparam("b_attempts", type_=JSON(none_as_null=True)), due_at=bindparam("b_due"),
                        updated_at=utcnow()))
        params = []
        for o in outcomes:
            charged = o.status in CHARGED
            params.append({"b_id": o.delivery_id, "b_status": str(o.status), "b_reason": o.reason,
                           "b_code": o.code, "b_pmid": o.provider_message_id,
                           "b_cost": o.cost if charged else None, "b_channel": o.channel, "b_locale": o.locale,
                           "b_attempts": list(o.attempts) if o.attempts else None, "b_due": o.due_at})
        with write_scope(self._engine) as s:
            # a write first: on SQLite it takes the write lock before the read below, on PostgreSQL the campaign
            # row (the refund below changes it anyway)
            s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                      .values(budget_spent=Campaign.budget_spent))
            # only a row still `sending` holds our reservation: one a retry of this page turned in_doubt meanwhile
            # is not ours to change, nor to refund
            mine_q = select(Delivery.id).where(Delivery.id.in_([o.delivery_id for o in outcomes]),  # type: ignore[union-attr]
                                               Delivery.status == DeliveryStatus.sending)
            mine = set(s.scalars(mine_q.with_for_update() if self._pg else mine_q)) if outcomes else set()
            refund = sum((o.cost for o in outcomes if o.delivery_id in mine and o.status not in CHARGED), Decimal(0))
            if params:
                s.connection().execute(stmt, params)
            if refund:
                s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                          .values(budget_spent=Campaign.budget_spent - refund))
            failed_channel = {o.delivery_id: (o.attempts[-1]["channel"] if o.fallback and o.attempts else o.channel)
                              for o in outcomes if o.revoke_address}
            ledger.record(session=s, program_id=ctx.program_id, acts=[
                ledger.ConsentAct(member_id=o.member_id, channel=failed_channel[o.delivery_id] or ctx.channel,
                                  topic=CHANNEL_WIDE, action=ConsentAction.suppressed,
                                  source=REVOKED_BY.get(failed_channel[o.delivery_id] or "", ConsentSource.provider),
                                  campaign_id=ctx.id)
                for o in outcomes if o.revoke_address and failed_channel[o.delivery_id] != "push"
            ])
            reported = {o.provider_message_id for o in outcomes if o.provider_message_id
                        and o.channel in REPORTING_CHANNELS and o.status in CHARGED}
            if reported:   # delivery reports that came before these ids were recorded
                apply_early(session=s, provider_message_ids=reported, channels=REPORTING_CHANNELS,
                            program_ids=[ctx.program_id], revoking_codes=REVOKING_CODES)
            for o in outcomes:
                if o.dead_tokens:
                    s.execute(delete(PushToken).where(PushToken.member_id == o.member_id,  # type: ignore[arg-type]
                                                      PushToken.token.in_(o.dead_tokens)))  # type: ignore[attr-defined]
