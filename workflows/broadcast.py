"""BroadcastCampaign: wait for the start, page the audience, deliver pages with bounded concurrency,
then send what was deferred (send windows, exhausted budget) when it may go, then the follow-up steps.

Deterministic orchestration only: no I/O, no database, no clock but ``workflow.now()``. Every side
effect is an activity of ``activities.delivery``; pages are keyset ranges of member ids, so Temporal's
overhead is per page of members, never per message. Each activity gets the workflow's clock (``now``)
so that windows, caps and due times follow workflow time (and the time-skipping test server).

A step runs in two phases: ``pages`` (every recipient gets a delivery row; those outside their window
or beyond the budget stay planned) and ``pending`` (wait until the earliest window opens or the budget
is raised, then page over the planned rows again), until nothing is planned or the end date passes.
With direct mail among the campaign's channels (``hand_over``), the step's queued letters are then handed
over as a print-ready batch (``activities.direct_mail``) and count as sent; also when the campaign stops
early (cancel, end date): those letters were rendered and paid for.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows import retry
    from workflows.controls import CampaignControls
    from workflows.contracts import (
        AudienceCount,
        BatchResult,
        BroadcastInput,
        CampaignRef,
        Counts,
        Deferral,
        DeliverBatch,
        ExpirePending,
        HandOver,
        HandOverResult,
        PagePlan,
        PendingSummary,
        PlanPages,
        Progress,
        RunState,
        StatusChange,
    )

HAND_OVER_PATCH = "direct-mail-hand-over"


@workflow.defn
class BroadcastCampaign(CampaignControls):
    def __init__(self) -> None:
        super().__init__()
        self._state = RunState.waiting
        self._exhausted_at: int | None = None  # the budget-change count a batch last ran out of budget under
        self._counts = Counts()
        self._total: int | None = None
        self._cursor = 0
        self._rounds = 0
        self._step = "main"
        self._pending: dict[str, int] = {}
        self._next_open: str | None = None

    @workflow.query
    def progress(self) -> Progress:
        state = self._state
        if state == RunState.running and self._paused:
            state = RunState.paused
        return Progress(state=state, total=self._total, counts=self._counts, cursor=self._cursor,
                        run_rounds=self._rounds, step=self._step, next_open=self._next_open,
                        pending=dict(self._pending))

    # --- orchestration ---------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: BroadcastInput) -> Progress:
        self._counts, self._cursor, self._total = inp.counts, inp.cursor, inp.total
        self._paused = self._paused or inp.paused
        if self._end_at is None and inp.end_at:
            self._end_at = datetime.fromisoformat(inp.end_at)
        occurrence = inp.occurrence or self._occurrence(inp)
        inp = replace(inp, occurrence=occurrence)
        ref = CampaignRef(campaign_id=inp.campaign_id, occurrence=occurrence)

        if not inp.started:
            await self._wait_until(datetime.fromisoformat(inp.start_at) if inp.start_at else None)
            if self._cancelled:
                return await self._finish(ref, RunState.cancelled, inp)
            self._total = await self._count(replace(ref, step=inp.steps[0].name))
            await self._set_status(ref, "running")
            inp = replace(inp, started=True)
        self._state = RunState.running

        for index in range(inp.step_index, len(inp.steps)):
            step = inp.steps[index]
            self._step = step.name
            sref = replace(ref, step=step.name)
            if inp.phase == "pages":
                if index > 0 and inp.cursor == 0 and inp.step_done_at:
                    self._state = RunState.waiting
                    await self._wait_until(datetime.fromisoformat(inp.step_done_at)
                                           + timedelta(seconds=step.after_s))
                    self._state = RunState.running
                    if self._cancelled or self._ended():
                        break
                    self._total = (self._total or 0) + await self._count(sref)
                if not await self._pages(inp, sref, index):
                    await self._hand_over(inp, sref)
                    break
                inp = replace(inp, phase="pending", cursor=0)
            drained = await self._drain_pending(inp, sref)
            await self._hand_over(inp, sref)
            if not drained:
                break
            inp = replace(inp, phase="pages", cursor=0, step_done_at=workflow.now().isoformat(),
                          step_index=index + 1)
            self._cursor = 0

        if self._cancelled:
            return await self._finish(ref, RunState.cancelled, inp)
        return await self._finish(ref, RunState.completed, inp)

    def _occurrence(self, inp: BroadcastInput) -> str:
        if not inp.recurring:
            return "wave-1"
        return "wave-" + workflow.info().start_time.strftime("%Y%m%dT%H%M")

    async def _pages(self, inp: BroadcastInput, ref: CampaignRef, index: int) -> bool:
        """First pass over the step's recipients. False when the campaign stopped (cancel, end)."""
        while True:
            if not await self._unless_paused(ref) or self._ended():
                await self._expire(ref)
                return False
            now = workflow.now().isoformat()
            plan = await workflow.execute_activity(
                "plan_pages",
                PlanPages(campaign_id=inp.campaign_id, after=self._cursor, page_size=inp.page_size,
                          pages=inp.concurrency, step=ref.step, occurrence=ref.occurrence, now=now),
                result_type=PagePlan,
                start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
            )
            if not plan.pages:
                return True
            await self._deliver(inp, ref, plan, now, pending_only=False)
            self._cursor = plan.pages[-1].upto
            self._rounds += 1
            if not self._cancelled and self._should_continue_as_new(inp):
                workflow.continue_as_new(self._carry(inp, step_index=index, phase="pages"))

    async def _drain_pending(self, inp: BroadcastInput, ref: CampaignRef) -> bool:
        """Send what the first pass deferred, when it may go. False when the campaign stopped.

        Members the budget did not reach are tried again once the budget changed after it ran out (a
        change while the first pass still ran counts), or once after a continue-as-new."""
        while True:
            summary = await workflow.execute_activity(
                "pending_summary", ref, result_type=PendingSummary,
                start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
            )
            self._pending, self._next_open = summary.by_reason, summary.next_open
            if not summary.by_reason:
                return True
            if self._cancelled or self._ended():
                await self._expire(ref)
                return False
            seen_budget_changes = self._budget_changes
            if summary.by_reason.get(Deferral.budget_exhausted) and self._exhausted_at == seen_budget_changes:
                self._state = RunState.budget_exhausted
                await self._set_status(ref, "budget_exhausted")
                await self._wait_until(self._end_at, lambda: self._budget_changes != seen_budget_changes)
                self._state = RunState.running
                if self._cancelled or self._ended():
                    await self._expire(ref)
                    return False
                await self._set_status(ref, "running")
            elif summary.next_open and set(summary.by_reason) == {Deferral.outside_window}:
                await self._wait_until(datetime.fromisoformat(summary.next_open),
                                       lambda: self._budget_changes != seen_budget_changes)
                if self._cancelled or self._ended():
                    await self._expire(ref)
                    return False
            if not await self._unless_paused(ref):
                await self._expire(ref)
                return False
            self._cursor = 0
            while True:
                now = workflow.now().isoformat()
                plan = await workflow.execute_activity(
                    "plan_pages",
                    PlanPages(campaign_id=inp.campaign_id, after=self._cursor, page_size=inp.page_size,
                              pages=inp.concurrency, step=ref.step, occurrence=ref.occurrence,
                              pending_only=True, now=now),
                    result_type=PagePlan,
                    start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
                )
                if not plan.pages:
                    break
                exhausted = await self._deliver(inp, ref, plan, now, pending_only=True)
                self._cursor = plan.pages[-1].upto
                self._rounds += 1
                if exhausted:
                    break

    async def _deliver(self, inp: BroadcastInput, ref: CampaignRef, plan: PagePlan, now: str,
                       pending_only: bool) -> bool:
        budget_changes = self._budget_changes
        results = await asyncio.gather(*(
            workflow.execute_activity(
                "deliver_batch",
                DeliverBatch(campaign_id=inp.campaign_id, after=page.after, upto=page.upto, step=ref.step,
                             occurrence=ref.occurrence, now=now, pending_only=pending_only),
                result_type=BatchResult,
                start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE,
                heartbeat_timeout=retry.DELIVERY_HEARTBEAT,
                retry_policy=retry.DELIVERY,
            )
            for page in plan.pages
        ))
        for result in results:
            self._counts = self._counts + result.counts
        exhausted = any(r.budget_exhausted for r in results)
        if exhausted:  # under the budget as it was when these batches started
            self._exhausted_at = budget_changes
        return exhausted

    def _carry(self, inp: BroadcastInput, *, step_index: int, phase: str) -> BroadcastInput:
        return replace(
            inp, cursor=self._cursor, counts=self._counts, total=self._total, paused=self._paused,
            started=True, step_index=step_index, phase=phase,
            end_at=self._end_at.isoformat() if self._end_at else None,
        )

    def _should_continue_as_new(self, inp: BroadcastInput) -> bool:
        if inp.rounds_per_run is not None and self._rounds >= inp.rounds_per_run:
            return True
        return workflow.info().is_continue_as_new_suggested()

    def _ended(self) -> bool:
        return self._end_at is not None and workflow.now() >= self._end_at

    async def _unless_paused(self, ref: CampaignRef) -> bool:
        """Wait while paused. False when cancelled."""
        if self._paused and not self._cancelled:
            await self._set_status(ref, "paused")
            await workflow.wait_condition(lambda: not self._paused or self._cancelled)
            if not self._cancelled:
                await self._set_status(ref, "running")
        return not self._cancelled

    async def _wait_until(self, at: datetime | None, also: object = None) -> None:
        """Sleep until ``at``, waking early on cancel, a new end date or ``also()``. With ``also`` and no
        ``at``, wait for ``also()`` (or the end date); with neither, do not wait."""
        if at is None and also is None:
            return
        end_seen = self._end_at

        def wake() -> bool:
            return self._cancelled or self._end_at != end_seen or bool(also and also())  # type: ignore[operator]

        while not wake():
            deadline = at
            if self._end_at is not None and (deadline is None or self._end_at < deadline):
                deadline = self._end_at
            if deadline is None:
                await workflow.wait_condition(wake)
                return
            delay = deadline - workflow.now()
            if delay.total_seconds() <= 0:
                return
            try:
                await workflow.wait_condition(wake, timeout=delay)
            except TimeoutError:
                return

    async def _count(self, ref: CampaignRef) -> int:
        return (await workflow.execute_activity(
            "count_audience", replace(ref, now=workflow.now().isoformat()), result_type=AudienceCount,
            start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
        )).total

    async def _expire(self, ref: CampaignRef) -> None:
        reason = "cancelled" if self._cancelled else "campaign_ended"
        dropped = await workflow.execute_activity(
            "expire_pending", ExpirePending(campaign_id=ref.campaign_id, step=ref.step,
                                            occurrence=ref.occurrence, reason=reason),
            result_type=Counts, start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
        )
        self._counts = self._counts + dropped
        self._pending = {}

    async def _hand_over(self, inp: BroadcastInput, ref: CampaignRef) -> None:
        """Direct mail: the step's queued letters become print-ready batches (numbered parts when there are
        many), and move from ``queued`` to ``sent`` in the counts. Not held by a pause: the letters are
        already made. A batch that cannot be printed as configured leaves its letters queued (the
        ``clarion direct-mail hand-over`` command takes them up once it is fixed); the campaign goes on."""
        if not inp.hand_over or not workflow.patched(HAND_OVER_PATCH):
            return
        counted = 0
        while True:
            try:
                result = await workflow.execute_activity(
                    "hand_over_letters",
                    HandOver(campaign_id=ref.campaign_id, step=ref.step, occurrence=ref.occurrence,
                             now=workflow.now().isoformat()),
                    result_type=HandOverResult,
                    start_to_close_timeout=retry.HAND_OVER_START_TO_CLOSE,
                    heartbeat_timeout=retry.HAND_OVER_HEARTBEAT, retry_policy=retry.HAND_OVER,
                )
            except ActivityError as exc:
                workflow.logger.warning("direct mail of step %s not handed over: %s", ref.step, exc.cause or exc)
                return
            # the step's total so far, whoever handed it over (a lost result, the CLI): never counted twice
            moved = result.handed_over - counted
            if moved:
                # letters a lost page result counted as already done (a retried page) were never queued here
                from_queued = max(0, min(moved, self._counts.queued))
                self._counts = self._counts + Counts(queued=-from_queued, sent=moved,
                                                     already_done=-(moved - from_queued))
            counted = result.handed_over
            if not result.more:
                return

    async def _set_status(self, ref: CampaignRef, status: str) -> None:
        await workflow.execute_activity(
            "set_campaign_status", StatusChange(campaign_id=ref.campaign_id, status=status),
            start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
        )

    async def _finish(self, ref: CampaignRef, state: RunState, inp: BroadcastInput) -> Progress:
        # a recurring campaign waits for its next wave; its schedule decides when it is over
        status = "scheduled" if inp.recurring and state == RunState.completed else state.value
        await self._set_status(ref, status)
        self._state = state
        return self.progress()
