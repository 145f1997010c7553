"""Triggered campaigns: reactions to the loyalty core's events, and date rules on Temporal Schedules.

``TriggeredCampaign`` is one long-running workflow per campaign. Each round it asks ``match_events``
to turn the events after its cursor into planned deliveries (one per event, due after the trigger's
delay) and ``deliver_due`` to send those whose time has come (re-checking cancel-if, consent, caps,
budget, windows). So Temporal's overhead is per round of events, never per event or per member:
hundreds of events a second cost a few activities a second. ``concurrency`` deliver_due activities run
side by side each round, each for its share of the members (member id mod concurrency). Idle, it sleeps until the next delivery
is due or the poll interval passes; a ``wake`` signal shortens the wait.

``ScheduledTriggerRun`` is started by a Temporal Schedule (hourly) for birthday, inactivity and
points-expiring campaigns: it matches the date rule, then delivers what is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import retry
    from workflows.controls import CampaignControls
    from workflows.contracts import (
        Counts,
        DeliverDue,
        DueResult,
        ExpirePending,
        MatchEvents,
        MatchResult,
        Progress,
        RunState,
        ScheduledRunInput,
        StatusChange,
        TriggeredInput,
    )


async def _deliver_due(campaign_id: int, limit: int, partitions: int = 1) -> DueResult:
    """What is due, sent by ``partitions`` activities side by side (each its share of the members)."""
    now = workflow.now().isoformat()
    results = await asyncio.gather(*(workflow.execute_activity(
        "deliver_due", DeliverDue(campaign_id=campaign_id, now=now, limit=limit, partition=p, partitions=partitions),
        result_type=DueResult, start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE,
        heartbeat_timeout=retry.DELIVERY_HEARTBEAT, retry_policy=retry.DELIVERY,
    ) for p in range(partitions)))
    return merge_due(results)


def merge_due(results: Sequence[DueResult]) -> DueResult:
    """One round's answer from its partitions' answers."""
    counts = Counts()
    for r in results:
        counts = counts + r.counts
    nexts = [r.next_due for r in results if r.next_due]
    return DueResult(counts=counts, more=any(r.more for r in results),
                     next_due=min(nexts, key=datetime.fromisoformat) if nexts else None,
                     budget_exhausted=any(r.budget_exhausted for r in results))


async def _set_status(campaign_id: int, status: str) -> None:
    await workflow.execute_activity(
        "set_campaign_status", StatusChange(campaign_id=campaign_id, status=status),
        start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
    )


@workflow.defn
class TriggeredCampaign(CampaignControls):
    def __init__(self) -> None:
        super().__init__()
        self._state = RunState.running
        self._wakes = 0
        self._counts = Counts()
        self._cursor = 0
        self._matched = 0
        self._rounds = 0
        self._next_due: str | None = None

    @workflow.signal
    def wake(self) -> None:
        """New events were stored: look now rather than at the next poll."""
        self._wakes += 1

    @workflow.query
    def progress(self) -> Progress:
        state = RunState.paused if self._state == RunState.running and self._paused else self._state
        return Progress(state=state, total=self._matched, counts=self._counts, cursor=self._cursor,
                        run_rounds=self._rounds, next_open=self._next_due)

    @workflow.run
    async def run(self, inp: TriggeredInput) -> Progress:
        self._counts, self._cursor, self._matched = inp.counts, inp.cursor, inp.matched
        self._paused = self._paused or inp.paused
        if self._end_at is None and inp.end_at:
            self._end_at = datetime.fromisoformat(inp.end_at)
        await _set_status(inp.campaign_id, "paused" if self._paused else "running")
        exhausted_at = -1  # the budget-change count when the budget ran out (-1: not exhausted)

        while not self._cancelled:
            if self._end_at is not None and workflow.now() >= self._end_at:
                break
            if self._paused:
                await _set_status(inp.campaign_id, "paused")
                await workflow.wait_condition(lambda: not self._paused or self._cancelled)
                if self._cancelled:
                    break
                await _set_status(inp.campaign_id, "running")
            # what the round has seen: a signal arriving while its activities run must still wake the idle wait
            marks = (self._wakes, self._budget_changes, self._paused, self._end_at)

            # matching new events and sending what is due run side by side: a round costs the longer of the
            # two, not their sum (what this round matches is sent by the next one, which follows at once)
            matching = workflow.execute_activity(
                "match_events", MatchEvents(campaign_id=inp.campaign_id, after=self._cursor,
                                            now=workflow.now().isoformat(), limit=inp.batch_size * 2),
                result_type=MatchResult, start_to_close_timeout=retry.DB_QUICK_TIMEOUT,
                retry_policy=retry.DB_QUICK,
            )
            more_due = False
            if exhausted_at != self._budget_changes or exhausted_at < 0:
                if exhausted_at >= 0:  # the budget was changed: try again
                    exhausted_at = -1
                    self._state = RunState.running
                    await _set_status(inp.campaign_id, "running")
                match, due = await asyncio.gather(
                    matching, _deliver_due(inp.campaign_id, inp.batch_size, max(1, inp.concurrency)))
                self._counts = self._counts + due.counts
                self._next_due, more_due = due.next_due, due.more
                if due.budget_exhausted:  # a budget raised while this round ran is tried next round
                    exhausted_at = marks[1]
                    self._state = RunState.budget_exhausted
                    await _set_status(inp.campaign_id, "budget_exhausted")
            else:
                match = await matching
            self._cursor, self._matched = match.cursor, self._matched + match.matched
            self._rounds += 1

            if self._should_continue_as_new(inp):
                workflow.continue_as_new(replace(
                    inp, cursor=self._cursor, counts=self._counts, matched=self._matched, paused=self._paused,
                    end_at=self._end_at.isoformat() if self._end_at else None))
            if match.more or more_due or (match.matched and exhausted_at < 0):
                continue
            await self._idle(inp, exhausted_at, marks)

        # reactions still waiting for their delay or window will not be sent: say so, as a broadcast does
        dropped: Counts = await workflow.execute_activity(
            "expire_pending", ExpirePending(campaign_id=inp.campaign_id, step="main", occurrence="",
                                            reason="cancelled" if self._cancelled else "campaign_ended",
                                            every_occurrence=True),
            result_type=Counts, start_to_close_timeout=retry.DB_QUICK_TIMEOUT, retry_policy=retry.DB_QUICK,
        )
        self._counts = self._counts + dropped
        self._next_due = None
        await _set_status(inp.campaign_id, "cancelled" if self._cancelled else "completed")
        self._state = RunState.cancelled if self._cancelled else RunState.completed
        return self.progress()

    async def _idle(self, inp: TriggeredInput, exhausted_at: int,
                    marks: tuple[int, int, bool, datetime | None]) -> None:
        wakes, budget, paused, end = marks
        timeout = timedelta(seconds=inp.poll_seconds)
        if self._next_due and exhausted_at < 0:
            until_due = datetime.fromisoformat(self._next_due) - workflow.now()
            timeout = max(timedelta(0), min(timeout, until_due))
        if self._end_at is not None:
            timeout = max(timedelta(0), min(timeout, self._end_at - workflow.now()))
        if timeout <= timedelta(0):
            return
        try:
            await workflow.wait_condition(
                lambda: self._cancelled or self._wakes != wakes or self._budget_changes != budget
                or self._paused != paused or self._end_at != end, timeout=timeout)
        except TimeoutError:
            pass

    def _should_continue_as_new(self, inp: TriggeredInput) -> bool:
        if inp.rounds_per_run is not None and self._rounds >= inp.rounds_per_run:
            return True
        return workflow.info().is_continue_as_new_suggested()


@workflow.defn
class ScheduledTriggerRun:
    """One run of a date rule (birthday, inactivity, points expiring), started by a Temporal Schedule."""

    @workflow.run
    async def run(self, inp: ScheduledRunInput) -> Counts:
        match: MatchResult = await workflow.execute_activity(
            "match_scheduled", MatchEvents(campaign_id=inp.campaign_id, after=0, now=workflow.now().isoformat()),
            result_type=MatchResult, start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE,
            retry_policy=retry.DB_QUICK,
        )
        counts = Counts(audience=match.matched)
        while True:
            due = await _deliver_due(inp.campaign_id, inp.batch_size)
            counts = counts + due.counts
            if not due.more:
                return counts
