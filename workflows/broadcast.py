"""BroadcastCampaign: wait for the start, page the audience, deliver pages with bounded concurrency.

Deterministic orchestration only: no I/O, no database, no clock but ``workflow.now()``. Every side
effect is an activity of ``activities.delivery``; pages are keyset ranges of member ids, so Temporal's
overhead is per page of members, never per message.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import retry
    from workflows.contracts import (
        AudienceCount,
        BatchResult,
        BroadcastInput,
        CampaignRef,
        Counts,
        DeliverBatch,
        PagePlan,
        PlanPages,
        Progress,
        RunState,
        StatusChange,
    )


@workflow.defn
class BroadcastCampaign:
    def __init__(self) -> None:
        self._state = RunState.waiting
        self._paused = False
        self._cancelled = False
        self._counts = Counts()
        self._total: int | None = None
        self._cursor = 0
        self._rounds = 0

    # --- controls --------------------------------------------------------------------------

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancelled = True

    @workflow.query
    def progress(self) -> Progress:
        state = self._state
        if state == RunState.running and self._paused:
            state = RunState.paused
        return Progress(state=state, total=self._total, counts=self._counts, cursor=self._cursor,
                        run_rounds=self._rounds)

    # --- orchestration ---------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: BroadcastInput) -> Progress:
        self._counts, self._cursor, self._total = inp.counts, inp.cursor, inp.total
        self._paused = self._paused or inp.paused
        ref = CampaignRef(campaign_id=inp.campaign_id)

        if not inp.started:
            await self._wait_for_start(inp.start_at)
            if self._cancelled:
                return await self._finish(ref, RunState.cancelled)
            self._total = (await workflow.execute_activity(
                "count_audience", ref, result_type=AudienceCount,
                start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
            )).total
            await self._set_status(ref, "running")
        self._state = RunState.running

        while True:
            if self._paused:
                await self._set_status(ref, "paused")
                await workflow.wait_condition(lambda: not self._paused or self._cancelled)
                if not self._cancelled:
                    await self._set_status(ref, "running")
            if self._cancelled:
                return await self._finish(ref, RunState.cancelled)

            plan = await workflow.execute_activity(
                "plan_pages",
                PlanPages(campaign_id=inp.campaign_id, after=self._cursor, page_size=inp.page_size,
                          pages=inp.concurrency),
                result_type=PagePlan,
                start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
            )
            if not plan.pages:
                return await self._finish(ref, RunState.completed)

            results = await asyncio.gather(*(
                workflow.execute_activity(
                    "deliver_batch",
                    DeliverBatch(campaign_id=inp.campaign_id, after=page.after, upto=page.upto),
                    result_type=BatchResult,
                    start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE,
                    heartbeat_timeout=retry.DELIVERY_HEARTBEAT,
                    retry_policy=retry.DELIVERY,
                )
                for page in plan.pages
            ))
            for result in results:
                self._counts = self._counts + result.counts
            self._cursor = plan.pages[-1].upto
            self._rounds += 1

            if not self._cancelled and self._should_continue_as_new(inp):
                workflow.continue_as_new(replace(
                    inp, cursor=self._cursor, counts=self._counts, total=self._total,
                    paused=self._paused, started=True,
                ))

    def _should_continue_as_new(self, inp: BroadcastInput) -> bool:
        if inp.rounds_per_run is not None and self._rounds >= inp.rounds_per_run:
            return True
        return workflow.info().is_continue_as_new_suggested()

    async def _wait_for_start(self, start_at: str | None) -> None:
        if not start_at:
            return
        delay = datetime.fromisoformat(start_at) - workflow.now()
        if delay.total_seconds() <= 0:
            return
        try:
            await workflow.wait_condition(lambda: self._cancelled, timeout=delay)
        except TimeoutError:
            pass

    async def _set_status(self, ref: CampaignRef, status: str) -> None:
        await workflow.execute_activity(
            "set_campaign_status", StatusChange(campaign_id=ref.campaign_id, status=status),
            start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
        )

    async def _finish(self, ref: CampaignRef, state: RunState) -> Progress:
        await self._set_status(ref, state.value)
        self._state = state
        return self.progress()
