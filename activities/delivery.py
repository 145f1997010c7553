"""Delivery activities: the side effects of a campaign. Thin: open storage and channels, call domain code.

``deliver_batch`` handles one page of a step's recipients (member ids in ``(after, upto]``);
``deliver_due`` handles the planned deliveries of a triggered campaign whose time has come.

1. prepare (one transaction): rows a crashed attempt left ``sending`` become ``in_doubt`` (never
   resent); new members get a row: ``held_out`` (the control group), ``suppressed(reason)`` (consent,
   no address) or ``planned``; a planned row outside the member's send window or the channel's quiet
   hours stays planned with reason ``outside_window`` and ``due_at`` = when the window opens;
2. per chunk: render → claim (one transaction, the campaign row locked: consent re-checked, frequency
   caps counted from the ledger, the budget reserved atomically; allowed rows become ``sending``,
   committed) → send → record ``sent`` / ``failed`` / ``in_doubt`` (committed; the cost of a message
   not sent is given back) → heartbeat.

So a retried or re-run batch never sends a message twice, spent never exceeds the limit with any
number of workers, and a crash leaves at most one chunk in doubt. Members the budget does not reach
stay ``planned`` with reason ``budget_exhausted``: raising the budget sends them.
This module is the one place that maps channel errors to Temporal ``ApplicationError``.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from campaigns import schedule
from campaigns.audience import audience_clause
from campaigns.costs import affordable, message_cost, unit_costs
from campaigns.followups import followup_clause
from campaigns.holdout import held_out
from campaigns.rules import CapScope, FrequencyCap, daily_window, program_rules, quiet_hours_for
from campaigns.spec import CampaignSpec
from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
)
from channels.email_smtp import SmtpEmailChannel
from consent import ledger
from consent.policy import CHANNEL_WIDE, SERVICE_TOPIC, Decision, SuppressReason, decide
from consent.tokens import UNSUBSCRIBE, UNSUBSCRIBE_TTL_S, Signer
from storage.db import insert_ignore, session_scope
from storage.tables import (
    Campaign,
    ConsentAction,
    ConsentSource,
    Delivery,
    DeliveryStatus,
    Event,
    Member,
    Program,
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

FINISHED = {DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.failed,
            DeliveryStatus.suppressed, DeliveryStatus.held_out, DeliveryStatus.in_doubt}
COUNTED_BY_CAPS = (DeliveryStatus.sending, DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.in_doubt)
CONTROL = "control"
CAPPED = "frequency_cap"
CANCELLED_BY_EVENT = "cancelled_by_event"
ONCE_PER_MEMBER = "once_per_member"
COOLDOWN = "cooldown"
REACHED = (DeliveryStatus.sending, DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.in_doubt)
NO_WINDOW = "no_window"    # the send window and quiet hours never overlap for the member's time zone


# a page's members share a few time zones and one `now`: the window math (~0.3 ms) runs once per zone
_next_allowed = functools.lru_cache(maxsize=4096)(schedule.next_allowed)


def parse_now(text: str | None) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC) if text else utcnow()


@dataclass(frozen=True)
class CampaignContext:
    id: int
    key: str
    program_id: int
    spec: CampaignSpec
    program: dict[str, Any]
    program_locale: str
    program_tz: str
    channel: str
    costs: dict[str, Decimal]
    window: Any                      # schedule.DailyWindow | None
    quiet: Any                       # schedule.QuietHours | None
    caps: tuple[FrequencyCap, ...]


@dataclass(frozen=True, slots=True)
class _Target:
    delivery_id: int
    member_id: int
    email: str
    locale: str
    context: dict[str, Any]
    step: str = "main"


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


@dataclass
class _Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)  # left planned, by reason (not an outcome)
    cost: Decimal = Decimal(0)
    exhausted: bool = False

    def add(self, status: str, reason: str | None, n: int = 1) -> None:
        if status == DeliveryStatus.planned:
            self.deferred[reason or "planned"] += n
            return
        self.statuses[status] += n
        if reason:
            self.reasons[reason] += n

    def counts(self, *, audience: int = 0, already_done: int = 0) -> Counts:
        """Outcomes only: what is deferred is counted again when it is finally handled."""
        st = self.statuses
        return Counts(audience=audience, sent=st[DeliveryStatus.sent], suppressed=st[DeliveryStatus.suppressed],
                      failed=st[DeliveryStatus.failed], in_doubt=st[DeliveryStatus.in_doubt],
                      already_done=already_done, held_out=st[DeliveryStatus.held_out],
                      cost=str(self.cost), reasons=dict(self.reasons))


@dataclass
class _Claim:
    allowed: list[tuple[Any, Decimal]]
    denied: list[tuple[Any, str]]
    unreached: list[Any]


class DeliveryActivities:
    def __init__(self, *, engine: Engine, renderer: Renderer, email: SmtpEmailChannel, signer: Signer,
                 base_url: str, unsubscribe_mailto: str, chunk_size: int = 100,
                 final_attempt: int = 10) -> None:
        self._engine = engine
        self._renderer = renderer
        self._email = email
        self._signer = signer
        self._base_url = base_url.rstrip("/")
        self._mailto = unsubscribe_mailto
        self._chunk = chunk_size
        self._final_attempt = final_attempt
        self._campaigns: dict[int, CampaignContext] = {}
        self._pg = engine.dialect.name == "postgresql"

    async def aclose(self) -> None:
        await self._email.aclose()

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
        counts, targets = await asyncio.to_thread(self._prepare, ctx, inp, now, tally)
        await self._process(ctx, targets, now, tally, progress=lambda done: self._after_chunk(inp, done))
        return BatchResult(counts=tally.counts(audience=counts["audience"], already_done=counts["already_done"]),
                           budget_exhausted=tally.exhausted, deferred=dict(tally.deferred))

    @activity.defn(name="deliver_due")
    async def deliver_due(self, inp: DeliverDue) -> DueResult:
        """Planned deliveries of a triggered campaign whose due time has come (oldest first)."""
        now = parse_now(inp.now)
        ctx = await asyncio.to_thread(self.campaign, inp.campaign_id)
        tally = _Tally()
        targets, more, next_due = await asyncio.to_thread(self._prepare_due, ctx, inp, now, tally)
        await self._process(ctx, targets, now, tally, progress=lambda done: None)
        return DueResult(counts=tally.counts(), more=more and not tally.exhausted,
                         next_due=next_due.isoformat() if next_due else None, budget_exhausted=tally.exhausted)

    async def _process(self, ctx: CampaignContext, targets: list[_Target], now: datetime, tally: _Tally,
                       progress: Any) -> None:
        transient: list[_Outcome] = []
        retry_after: float | None = None
        final = activity.info().attempt >= self._final_attempt
        for start in range(0, len(targets), self._chunk):
            chunk = targets[start:start + self._chunk]
            if tally.exhausted:
                await asyncio.to_thread(self._defer, [t.delivery_id for t in chunk], Deferral.budget_exhausted)
                tally.add(DeliveryStatus.planned, Deferral.budget_exhausted, len(chunk))
                continue
            rendered: list[tuple[_Target, OutboundMessage, Decimal]] = []
            outcomes: list[_Outcome] = []
            for t in chunk:
                try:
                    msg = self._message(ctx, t)
                except TemplateProblem:
                    outcomes.append(_Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, "render_error"))
                    continue
                rendered.append((t, msg, message_cost(ctx.channel, ctx.costs)))
            claimed = await asyncio.to_thread(self._claim, ctx, rendered, now, tally)
            for o in await asyncio.gather(*(self._send_one(t, msg, cost) for t, msg, cost in claimed)):
                if o.status == DeliveryStatus.planned and final:  # deferred on every attempt: give up
                    o = _Outcome(o.delivery_id, o.member_id, DeliveryStatus.failed, "transient", o.code,
                                 cost=o.cost)
                if o.status == DeliveryStatus.planned:           # transient: nothing sent, try later
                    transient.append(o)
                    if o.retry_after:
                        retry_after = max(retry_after or 0.0, o.retry_after)
                outcomes.append(o)
            for o in outcomes:
                if o.status != DeliveryStatus.planned:
                    tally.add(o.status, o.reason if o.status != DeliveryStatus.sent else None)
                if o.status in (DeliveryStatus.sent, DeliveryStatus.in_doubt):
                    tally.cost += o.cost
            await asyncio.to_thread(self._record, ctx, outcomes)
            progress(start + len(chunk))
            activity.heartbeat(start + len(chunk))
        if transient:
            raise ApplicationError(
                f"{len(transient)} message(s) deferred by the provider; the page will be retried",
                type="TransientDelivery",
                next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
            )

    def _after_chunk(self, inp: DeliverBatch, handled: int) -> None:
        """Called after each chunk's outcomes are committed (a seam for fault-injection tests)."""

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
            channel = spec.channels[0].value
            caps = [*spec.caps]
            if spec.topic != SERVICE_TOPIC:
                caps += [c for c in rules.caps if c.scope == CapScope.program]
            ctx = CampaignContext(
                id=campaign_id, key=row.key, program_id=row.program_id, spec=spec,
                program={"key": program.key, "name": program.name, "currency": program.currency},
                program_locale=program.default_locale, program_tz=program.time_zone, channel=channel,
                costs=unit_costs(rules.unit_costs), window=daily_window(spec.send_window),
                quiet=quiet_hours_for(rules, channel), caps=tuple(caps),
            )
        self._campaigns[campaign_id] = ctx
        return ctx

    def _prepare(self, ctx: CampaignContext, inp: DeliverBatch, now: datetime,
                 tally: _Tally) -> tuple[Counter[str], list[_Target]]:
        counts: Counter[str] = Counter()
        key = (Delivery.campaign_id == ctx.id, Delivery.step == inp.step, Delivery.occurrence == inp.occurrence,
               Delivery.member_id > inp.after, Delivery.member_id <= inp.upto)  # type: ignore[operator]
        who = (self._pending(ctx, inp.step, inp.occurrence) if inp.pending_only
               else self._recipients(ctx, inp.step, inp.occurrence, now))
        with session_scope(self._engine) as s:
            members = list(s.execute(
                select(Member.id, Member.email, Member.locale, Member.first_name, Member.last_name,
                       Member.kind, Member.time_zone, Member.attributes)
                .where(who, Member.id > inp.after, Member.id <= inp.upto)  # type: ignore[operator]
                .order_by(Member.id)))
            counts["audience"] = 0 if inp.pending_only else len(members)
            # rows a crashed attempt left `sending`: the provider may have the message → in doubt
            interrupted = set(s.scalars(select(Delivery.member_id).where(
                *key, Delivery.status == DeliveryStatus.sending)))
            if interrupted:
                s.execute(update(Delivery).where(*key, Delivery.status == DeliveryStatus.sending)
                          .values(status=DeliveryStatus.in_doubt, reason="interrupted", updated_at=utcnow()))
                tally.add(DeliveryStatus.in_doubt, "interrupted", len(interrupted))
            existing = {m: (d, st) for d, m, st in s.execute(
                select(Delivery.id, Delivery.member_id, Delivery.status).where(*key))}
            states = ledger.states_for(session=s, member_ids=[m.id for m in members if m.id not in existing],
                                       channel=ctx.channel)
            locales = {m.id: self.locale_for(ctx, inp.step, m.locale) for m in members}
            new_rows: list[dict[str, Any]] = []
            for m in members:
                if m.id in existing:
                    continue
                status, reason = self.first_decision(ctx, m, states.get(m.id, {}))
                new_rows.append({
                    "campaign_id": ctx.id, "member_id": m.id, "step": inp.step, "occurrence": inp.occurrence,
                    "status": status, "reason": reason, "channel": ctx.channel,
                    "locale": locales[m.id], "created_at": utcnow(), "updated_at": utcnow(),
                })
                if status != DeliveryStatus.planned:
                    tally.add(status, reason)
            if new_rows:
                s.execute(insert_ignore(s, Delivery.__table__, ["campaign_id", "member_id", "step", "occurrence"]),
                          new_rows)
                existing = {m: (d, st) for d, m, st in s.execute(
                    select(Delivery.id, Delivery.member_id, Delivery.status).where(*key))}
            new_ids = {r["member_id"] for r in new_rows}
            targets: list[_Target] = []
            waiting: dict[datetime | None, list[int]] = {}
            for m in members:
                delivery_id, status = existing[m.id]
                if status in FINISHED:
                    if m.id not in new_ids and m.id not in interrupted:
                        counts["already_done"] += 1
                    continue
                if status != DeliveryStatus.planned:  # pragma: no cover - sending was turned in_doubt above
                    continue
                opens = self._window_opens(ctx, m.time_zone, now)
                if opens != now:
                    waiting.setdefault(opens, []).append(delivery_id)
                    continue
                targets.append(self._target(ctx, inp.step, delivery_id, m, locales[m.id]))
            self._wait_for_windows(s, waiting, tally)
        return counts, targets

    def _prepare_due(self, ctx: CampaignContext, inp: DeliverDue, now: datetime,
                     tally: _Tally) -> tuple[list[_Target], bool, datetime | None]:
        # rows the budget missed are included: the workflow only asks again once the budget was changed
        due = (Delivery.due_at.is_(None)) | (Delivery.due_at <= now)  # type: ignore[union-attr,operator]
        base = (Delivery.campaign_id == ctx.id, Delivery.status == DeliveryStatus.planned)
        with session_scope(self._engine) as s:
            rows = list(s.execute(
                # labelled: a bare `r.id` would be the delivery's id, not the member's
                select(Delivery.id.label("delivery_id"), Delivery.step, Delivery.occurrence,  # type: ignore[union-attr]
                       Member.id.label("id"), Member.email, Member.locale,  # type: ignore[union-attr]
                       Member.first_name, Member.last_name, Member.kind, Member.time_zone, Member.attributes)
                .join(Member, Member.id == Delivery.member_id)
                .where(*base, due).order_by(Delivery.id).limit(inp.limit + 1)))
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
            events = self._trigger_events(s, ctx, [r.occurrence for r in rows if r.delivery_id not in cancelled])
            targets: list[_Target] = []
            waiting: dict[datetime | None, list[int]] = {}
            for r in rows:
                if r.delivery_id in cancelled:
                    continue
                opens = self._window_opens(ctx, r.time_zone, now)
                if opens != now:
                    waiting.setdefault(opens, []).append(r.delivery_id)
                    continue
                target = self._target(ctx, r.step, r.delivery_id, r, self.locale_for(ctx, r.step, r.locale))
                if r.occurrence in events:  # the reaction's event: templates may say what was bought
                    target.context["event"] = events[r.occurrence]
                targets.append(target)
            self._wait_for_windows(s, waiting, tally)
            next_due = s.scalar(select(func.min(Delivery.due_at)).where(*base, Delivery.due_at > now))  # type: ignore[operator]
        if next_due is not None and next_due.tzinfo is None:
            next_due = next_due.replace(tzinfo=UTC)
        return targets, more, next_due

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

    def first_decision(self, ctx: CampaignContext, m: Any, states: dict[str, str]) -> tuple[str, str | None]:
        if ctx.spec.holdout and held_out(ctx.key, m.id, ctx.spec.holdout):
            return DeliveryStatus.held_out, CONTROL
        decision = decide(states, topic=ctx.spec.topic)
        if decision.allowed and not m.email:
            decision = Decision(False, SuppressReason.no_address)
        if decision.allowed:
            return DeliveryStatus.planned, None
        return DeliveryStatus.suppressed, decision.reason

    def _window_opens(self, ctx: CampaignContext, tz: str | None, now: datetime) -> datetime | None:
        """``now`` when the member may be sent now, else when their window opens (None: never)."""
        if ctx.window is None and ctx.quiet is None:
            return now
        return _next_allowed(now, tz or ctx.program_tz, ctx.window, ctx.quiet)

    def _target(self, ctx: CampaignContext, step: str, delivery_id: int, m: Any, locale: str) -> _Target:
        return _Target(
            delivery_id=delivery_id, member_id=m.id, email=m.email or "", locale=locale, step=step,
            context={"member": {**(m.attributes or {}), "first_name": m.first_name,
                                "last_name": m.last_name, "kind": m.kind, "locale": m.locale}},
        )

    def _defer(self, ids: list[int], reason: str) -> None:
        with session_scope(self._engine) as s:
            self._defer_rows(s, ids, reason)

    def _defer_rows(self, s: Session, ids: list[int], reason: str, due_at: datetime | None = None) -> None:
        if ids:
            s.execute(update(Delivery).where(Delivery.id.in_(ids),  # type: ignore[union-attr]
                                             Delivery.status == DeliveryStatus.planned)
                      .values(reason=reason, due_at=due_at, updated_at=utcnow()))

    def _claim(self, ctx: CampaignContext, items: Sequence[tuple[_Target, OutboundMessage, Decimal]],
               now: datetime, tally: _Tally) -> list[tuple[_Target, OutboundMessage, Decimal]]:
        """One transaction, the campaign row locked: consent re-checked, caps counted, budget reserved;
        the allowed rows become `sending` (committed)."""
        if not items:
            return []
        with session_scope(self._engine) as s:
            # lock the campaign row first: claims of one campaign serialize (budget), on SQLite all writers
            s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                      .values(budget_spent=Campaign.budget_spent))
            member_ids = [t.member_id for t, _, _ in items]
            if self._pg:  # caps across campaigns: one claimer per member at a time
                s.execute(select(Member.id).where(Member.id.in_(member_ids))  # type: ignore[union-attr]
                          .order_by(Member.id).with_for_update())
            states = ledger.states_for(session=s, member_ids=member_ids, channel=ctx.channel)
            capped = self._capped(s, ctx, member_ids, now)
            allowed, denied = [], []
            for item in items:
                t = item[0]
                decision = decide(states.get(t.member_id, {}), topic=ctx.spec.topic)
                if not decision.allowed:
                    denied.append((t, str(decision.reason)))
                elif t.member_id in capped:
                    denied.append((t, CAPPED))
                else:
                    allowed.append(item)
            limit, spent = s.execute(select(Campaign.budget_limit, Campaign.budget_spent)
                                     .where(Campaign.id == ctx.id)).one()
            unreached: list[tuple[_Target, OutboundMessage, Decimal]] = []
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
                          .values(status=DeliveryStatus.suppressed, reason=reason, updated_at=utcnow()))
                tally.add(DeliveryStatus.suppressed, reason)
            if unreached:
                self._defer_rows(s, [t.delivery_id for t, _, _ in unreached], Deferral.budget_exhausted)
                tally.add(DeliveryStatus.planned, Deferral.budget_exhausted, len(unreached))
                tally.exhausted = True
            claimed: set[int] = set()
            if allowed:
                table = Delivery.__table__
                s.connection().execute(
                    update(table).where(table.c.id == bindparam("b_id"), table.c.status == DeliveryStatus.planned)
                    .values(status=DeliveryStatus.sending, reason=None, cost=bindparam("b_cost"),
                            sent_at=now, updated_at=utcnow()),
                    [{"b_id": t.delivery_id, "b_cost": c} for t, _, c in allowed])
                ids = [t.delivery_id for t, _, _ in allowed]
                claimed = set(s.scalars(select(Delivery.id).where(
                    Delivery.id.in_(ids), Delivery.status == DeliveryStatus.sending)))  # type: ignore[union-attr]
                lost = sum((c for t, _, c in allowed if t.delivery_id not in claimed), Decimal(0))
                if lost:  # claimed by someone else meanwhile: give the reservation back
                    s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                              .values(budget_spent=Campaign.budget_spent - lost))
        return [item for item in allowed if item[0].delivery_id in claimed]

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

    async def _send_one(self, t: _Target, msg: OutboundMessage, cost: Decimal) -> _Outcome:
        try:
            receipt = await self._email.send(msg)
        except PermanentChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, "permanent", exc.code,
                            revoke_address=exc.revoke_address, cost=cost)
        except InDoubtChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.in_doubt, "connection_lost", exc.code,
                            cost=cost)
        except RateLimited as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, "rate_limited", exc.code,
                            retry_after=exc.retry_after, cost=cost)
        except TransientChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, "transient", exc.code, cost=cost)
        return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.sent,
                        provider_message_id=receipt.provider_message_id, cost=cost)

    def _message(self, ctx: CampaignContext, t: _Target) -> OutboundMessage:
        token = self._signer.sign(UNSUBSCRIBE, {"d": t.delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
        url = f"{self._base_url}/u/{token}"
        rendered = self._renderer.render_email(
            ctx.spec.template_for(t.step), t.locale,
            {**t.context, "program": ctx.program, "campaign": {"key": ctx.spec.key, "name": ctx.spec.name},
             "unsubscribe_url": url},
        )
        return OutboundMessage(
            delivery_id=t.delivery_id, to=t.email, subject=rendered.subject, text=rendered.text,
            html=rendered.html, message_id=f"<d{t.delivery_id}.c{ctx.id}@{self._email_domain()}>",
            headers={
                "List-Unsubscribe": f"<{url}>, <mailto:{self._mailto}?subject=unsubscribe%20{token}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Clarion-Campaign": ctx.spec.key,
            },
        )

    def _email_domain(self) -> str:
        return self._mailto.rsplit("@", 1)[-1]

    def locale_for(self, ctx: CampaignContext, step: str, member_locale: str | None) -> str:
        return self._renderer.resolve_locale(ctx.spec.template_for(step), member_locale,
                                             ctx.spec.locale_default or ctx.program_locale)

    def _record(self, ctx: CampaignContext, outcomes: Sequence[_Outcome]) -> None:
        """Outcomes of a chunk in one transaction (executemany); transient ones go back to `planned`.
        The cost reserved for a message that was not sent (failed, deferred) is given back."""
        table = Delivery.__table__
        stmt = (update(table).where(table.c.id == bindparam("b_id"),
                                    (table.c.status == DeliveryStatus.sending)
                                    | (table.c.status == DeliveryStatus.planned))
                .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
                        error_code=bindparam("b_code"), provider_message_id=bindparam("b_pmid"),
                        cost=bindparam("b_cost"), updated_at=utcnow()))
        params, refund = [], Decimal(0)
        for o in outcomes:
            charged = o.status in (DeliveryStatus.sent, DeliveryStatus.in_doubt)
            if not charged:
                refund += o.cost
            params.append({"b_id": o.delivery_id, "b_status": str(o.status), "b_reason": o.reason,
                           "b_code": o.code, "b_pmid": o.provider_message_id,
                           "b_cost": o.cost if charged else None})
        with session_scope(self._engine) as s:
            if params:
                s.connection().execute(stmt, params)
            if refund:
                s.execute(update(Campaign).where(Campaign.id == ctx.id)  # type: ignore[arg-type]
                          .values(budget_spent=Campaign.budget_spent - refund))
            bounced = [o for o in outcomes if o.revoke_address]
            ledger.record(session=s, program_id=ctx.program_id, acts=[
                ledger.ConsentAct(member_id=o.member_id, channel=ctx.channel, topic=CHANNEL_WIDE,
                                  action=ConsentAction.suppressed, source=ConsentSource.bounce,
                                  campaign_id=ctx.id)
                for o in bounced
            ])
