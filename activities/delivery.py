"""Delivery activities: the side effects of a broadcast. Thin: open storage and channels, call domain code.

``deliver_batch`` handles one page of the audience (member ids in ``(after, upto]``):

1. prepare (one transaction): rows a crashed attempt left ``sending`` become ``in_doubt`` (never
   resent); new members get a ``planned`` or ``suppressed(reason)`` row from the consent policy and
   their address; finished rows are left alone;
2. per chunk: re-check consent and claim the rows (``sending``, committed) → render → send →
   record ``sent`` / ``failed`` / ``in_doubt`` (committed) → heartbeat.

So a retried or re-run batch never sends a message twice, and a crash leaves at most one chunk in doubt.
This module is the one place that maps channel errors to Temporal ``ApplicationError``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from campaigns.audience import audience_clause
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
from consent.policy import CHANNEL_WIDE, Decision, SuppressReason, decide
from consent.tokens import UNSUBSCRIBE, UNSUBSCRIBE_TTL_S, Signer
from storage.db import insert_ignore, session_scope
from storage.tables import (
    Campaign,
    ChannelName,
    ConsentAction,
    ConsentSource,
    Delivery,
    DeliveryStatus,
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
    DeliverBatch,
    PageBounds,
    PagePlan,
    PlanPages,
    StatusChange,
)

FINISHED = {DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.failed,
            DeliveryStatus.suppressed, DeliveryStatus.held_out, DeliveryStatus.in_doubt}


@dataclass(frozen=True)
class _CampaignCtx:
    id: int
    program_id: int
    spec: CampaignSpec
    program: dict[str, Any]
    program_locale: str


@dataclass(frozen=True, slots=True)
class _Target:
    delivery_id: int
    member_id: int
    email: str
    locale: str
    context: dict[str, Any]


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
        self._campaigns: dict[int, _CampaignCtx] = {}

    async def aclose(self) -> None:
        await self._email.aclose()

    # --- small activities -------------------------------------------------------------------

    @activity.defn(name="count_audience")
    async def count_audience(self, ref: CampaignRef) -> AudienceCount:
        def run() -> int:
            ctx = self._campaign(ref.campaign_id)
            with Session(self._engine) as s:
                return s.scalar(select(func.count()).select_from(Member).where(
                    audience_clause(ctx.program_id, ctx.spec.audience))) or 0
        return AudienceCount(total=await asyncio.to_thread(run))

    @activity.defn(name="plan_pages")
    async def plan_pages(self, inp: PlanPages) -> PagePlan:
        def run() -> list[int]:
            ctx = self._campaign(inp.campaign_id)
            with Session(self._engine) as s:
                return list(s.scalars(
                    select(Member.id).where(audience_clause(ctx.program_id, ctx.spec.audience),
                                            Member.id > inp.after)  # type: ignore[operator]
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

    # --- the hot path -----------------------------------------------------------------------

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        ctx = await asyncio.to_thread(self._campaign, inp.campaign_id)
        counts, targets = await asyncio.to_thread(self._prepare, ctx, inp)
        tally: Counter[str] = Counter()
        transient: list[_Outcome] = []
        retry_after: float | None = None
        final = activity.info().attempt >= self._final_attempt
        for start in range(0, len(targets), self._chunk):
            chunk = await asyncio.to_thread(self._claim, ctx, targets[start:start + self._chunk], tally)
            outcomes: list[_Outcome] = []
            for o in await asyncio.gather(*(self._send_one(ctx, t) for t in chunk)):
                if o.status == DeliveryStatus.planned and final:  # deferred on every attempt: give up
                    o = _Outcome(o.delivery_id, o.member_id, DeliveryStatus.failed, "transient", o.code)
                if o.status == DeliveryStatus.planned:           # transient: nothing sent, try later
                    transient.append(o)
                    if o.retry_after:
                        retry_after = max(retry_after or 0.0, o.retry_after)
                else:
                    tally[o.status] += 1
                outcomes.append(o)
            await asyncio.to_thread(self._record, ctx, outcomes)
            self._after_chunk(inp, start + len(chunk))
            activity.heartbeat(start + len(chunk))
        if transient:
            raise ApplicationError(
                f"{len(transient)} message(s) deferred by the provider; the page will be retried",
                type="TransientDelivery",
                next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
            )
        return BatchResult(counts=Counts(
            audience=counts["audience"], sent=tally[DeliveryStatus.sent],
            suppressed=counts["suppressed"] + tally[DeliveryStatus.suppressed],
            failed=tally[DeliveryStatus.failed], in_doubt=counts["in_doubt"] + tally[DeliveryStatus.in_doubt],
            already_done=counts["already_done"],
        ))

    def _after_chunk(self, inp: DeliverBatch, handled: int) -> None:
        """Called after each chunk's outcomes are committed (a seam for fault-injection tests)."""

    # --- steps ------------------------------------------------------------------------------

    def _campaign(self, campaign_id: int) -> _CampaignCtx:
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
            ctx = _CampaignCtx(
                id=campaign_id, program_id=row.program_id, spec=CampaignSpec.model_validate(row.spec),
                program={"key": program.key, "name": program.name, "currency": program.currency},
                program_locale=program.default_locale,
            )
        self._campaigns[campaign_id] = ctx
        return ctx

    def _prepare(self, ctx: _CampaignCtx, inp: DeliverBatch) -> tuple[Counter[str], list[_Target]]:
        counts: Counter[str] = Counter()
        key = (Delivery.campaign_id == ctx.id, Delivery.step == inp.step, Delivery.occurrence == inp.occurrence,
               Delivery.member_id > inp.after, Delivery.member_id <= inp.upto)  # type: ignore[operator]
        with session_scope(self._engine) as s:
            members = list(s.execute(
                select(Member.id, Member.email, Member.locale, Member.first_name, Member.last_name,
                       Member.kind, Member.attributes)
                .where(audience_clause(ctx.program_id, ctx.spec.audience),
                       Member.id > inp.after, Member.id <= inp.upto)  # type: ignore[operator]
                .order_by(Member.id)))
            counts["audience"] = len(members)
            # rows a crashed attempt left `sending`: the provider may have the message → in doubt
            interrupted = set(s.scalars(select(Delivery.member_id).where(
                *key, Delivery.status == DeliveryStatus.sending)))
            if interrupted:
                s.execute(update(Delivery).where(*key, Delivery.status == DeliveryStatus.sending)
                          .values(status=DeliveryStatus.in_doubt, reason="interrupted", updated_at=utcnow()))
            counts["in_doubt"] = len(interrupted)
            existing = {m: (d, st) for d, m, st in s.execute(
                select(Delivery.id, Delivery.member_id, Delivery.status).where(*key))}
            states = ledger.states_for(session=s, member_ids=[m.id for m in members if m.id not in existing],
                                       channel=ChannelName.email)
            locales = {m.id: self._locale_for(ctx, m.locale) for m in members}
            new_rows: list[dict[str, Any]] = []
            for m in members:
                if m.id in existing:
                    continue
                decision = decide(states.get(m.id, {}), topic=ctx.spec.topic)
                if decision.allowed and not m.email:
                    decision = Decision(False, SuppressReason.no_address)
                locale = locales[m.id]
                new_rows.append({
                    "campaign_id": ctx.id, "member_id": m.id, "step": inp.step, "occurrence": inp.occurrence,
                    "status": DeliveryStatus.planned if decision.allowed else DeliveryStatus.suppressed,
                    "reason": None if decision.allowed else decision.reason, "channel": ChannelName.email,
                    "locale": locale, "created_at": utcnow(), "updated_at": utcnow(),
                })
                if not decision.allowed:
                    counts["suppressed"] += 1
            if new_rows:
                s.execute(insert_ignore(s, Delivery.__table__, ["campaign_id", "member_id", "step", "occurrence"]),
                          new_rows)
                existing = {m: (d, st) for d, m, st in s.execute(
                    select(Delivery.id, Delivery.member_id, Delivery.status).where(*key))}
        new_ids = {r["member_id"] for r in new_rows}
        targets: list[_Target] = []
        for m in members:
            delivery_id, status = existing[m.id]
            if status in FINISHED:
                if m.id not in new_ids and m.id not in interrupted:
                    counts["already_done"] += 1
                continue
            if status != DeliveryStatus.planned:  # pragma: no cover - sending was turned in_doubt above
                continue
            targets.append(_Target(
                delivery_id=delivery_id, member_id=m.id, email=m.email or "",
                locale=locales[m.id],
                context={"member": {**(m.attributes or {}), "first_name": m.first_name,
                                    "last_name": m.last_name, "kind": m.kind, "locale": m.locale}},
            ))
        return counts, targets

    def _claim(self, ctx: _CampaignCtx, chunk: Sequence[_Target], tally: Counter[str]) -> list[_Target]:
        """Consent checked again right before sending; the allowed rows become `sending` (committed)."""
        with session_scope(self._engine) as s:
            states = ledger.states_for(session=s, member_ids=[t.member_id for t in chunk],
                                       channel=ChannelName.email)
            allowed, denied = [], []
            for t in chunk:
                decision = decide(states.get(t.member_id, {}), topic=ctx.spec.topic)
                (allowed if decision.allowed else denied).append((t, decision.reason))
            for t, reason in denied:
                s.execute(update(Delivery).where(Delivery.id == t.delivery_id,  # type: ignore[arg-type]
                                                 Delivery.status == DeliveryStatus.planned)
                          .values(status=DeliveryStatus.suppressed, reason=reason, updated_at=utcnow()))
                tally[DeliveryStatus.suppressed] += 1
            claimed = set()
            if allowed:
                ids = [t.delivery_id for t, _ in allowed]
                s.execute(update(Delivery).where(Delivery.id.in_(ids),  # type: ignore[union-attr]
                                                 Delivery.status == DeliveryStatus.planned)
                          .values(status=DeliveryStatus.sending, updated_at=utcnow()))
                claimed = set(s.scalars(select(Delivery.id).where(
                    Delivery.id.in_(ids), Delivery.status == DeliveryStatus.sending)))  # type: ignore[union-attr]
        return [t for t, _ in allowed if t.delivery_id in claimed]

    async def _send_one(self, ctx: _CampaignCtx, t: _Target) -> _Outcome:
        try:
            msg = self._message(ctx, t)
        except TemplateProblem:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, "render_error")
        try:
            receipt = await self._email.send(msg)
        except PermanentChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.failed, "permanent", exc.code,
                            revoke_address=exc.revoke_address)
        except InDoubtChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.in_doubt, "connection_lost", exc.code)
        except RateLimited as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, "rate_limited", exc.code,
                            retry_after=exc.retry_after)
        except TransientChannelError as exc:
            return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.planned, "transient", exc.code)
        return _Outcome(t.delivery_id, t.member_id, DeliveryStatus.sent,
                        provider_message_id=receipt.provider_message_id)

    def _message(self, ctx: _CampaignCtx, t: _Target) -> OutboundMessage:
        token = self._signer.sign(UNSUBSCRIBE, {"d": t.delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
        url = f"{self._base_url}/u/{token}"
        rendered = self._renderer.render_email(
            ctx.spec.template, t.locale,
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

    def _locale_for(self, ctx: _CampaignCtx, member_locale: str | None) -> str:
        return self._renderer.resolve_locale(ctx.spec.template, member_locale,
                                             ctx.spec.locale_default or ctx.program_locale)

    def _record(self, ctx: _CampaignCtx, outcomes: Sequence[_Outcome]) -> None:
        """Outcomes of a chunk in one transaction (executemany); transient ones go back to `planned`."""
        now = utcnow()
        table = Delivery.__table__
        stmt = (update(table).where(table.c.id == bindparam("b_id"), table.c.status == DeliveryStatus.sending)
                .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
                        error_code=bindparam("b_code"), provider_message_id=bindparam("b_pmid"),
                        sent_at=bindparam("b_sent_at"), updated_at=now))
        params = [{"b_id": o.delivery_id, "b_status": str(o.status), "b_reason": o.reason, "b_code": o.code,
                   "b_pmid": o.provider_message_id,
                   "b_sent_at": now if o.status == DeliveryStatus.sent else None} for o in outcomes]
        with session_scope(self._engine) as s:
            if params:
                s.connection().execute(stmt, params)
            bounced = [o for o in outcomes if o.revoke_address]
            ledger.record(session=s, program_id=ctx.program_id, acts=[
                ledger.ConsentAct(member_id=o.member_id, channel=ChannelName.email, topic=CHANNEL_WIDE,
                                  action=ConsentAction.suppressed, source=ConsentSource.bounce,
                                  campaign_id=ctx.id)
                for o in bounced
            ])
