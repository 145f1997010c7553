"""Triggered campaigns: reactions to the loyalty core's events, and date rules on Temporal Schedules.

``TriggeredCampaign`` is one long-running workflow per campaign, running two loops side by side. The match
loop asks ``match_events`` to turn the events after its cursor into planned deliveries (one per event, due
after the trigger's delay), again at once while it finds more, else after the poll interval or a ``wake``
signal. The delivery loop asks ``deliver_due`` to send those whose time has come (re-checking cancel-if,
consent, caps, budget, windows), ``concurrency`` activities side by side each time, each for its share of
the members (member id mod concurrency); it goes again at once when the match loop planned something
meanwhile, else sleeps until the next delivery is due. As the first activity of a round comes back having sent
something (events are arriving), it asks the match loop to look now and waits for that match before its next
round (MATCH_AHEAD): under a steady stream an event waits for the end of the round it arrived in, not for the
poll, whose timer Temporal may fire up to a second late. So Temporal's overhead is per batch of events, never
per event or per member, and an event waits for one match and one delivery, not for rounds that wait for
both. Runs started before the two loops (no PIPELINED marker in their history) replay the old rounds.

``ScheduledTriggerRun`` is started by a Temporal Schedule (hourly) for birthday, inactivity and
points-expiring campaigns: it matches the date rule, then delivers what is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
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


# a marker in the history of runs that match and send in two loops (TriggeredCampaign._pipelined)
PIPELINED = "triggered-pipelined-loops"
# a marker in the history of runs whose delivery loop asks for a match while a busy round ends (_deliver_loop)
MATCH_AHEAD = "triggered-match-ahead"


async def _deliver_due(campaign_id: int, limit: int, partitions: int = 1,
                       first_done: Callable[[DueResult], None] | None = None) -> DueResult:
    """What is due, sent by ``partitions`` activities side by side (each its share of the members);
    ``first_done`` is told the first partition's answer as soon as it comes, while the others still run."""
    now = workflow.now().isoformat()
    to_tell = [first_done] if first_done else []    # emptied by the first partition that comes back

    async def part(p: int) -> DueResult:
        result: DueResult = await workflow.execute_activity(
            "deliver_due", DeliverDue(campaign_id=campaign_id, now=now, limit=limit, partition=p,
                                      partitions=partitions),
            result_type=DueResult, start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE,
            heartbeat_timeout=retry.DELIVERY_HEARTBEAT, retry_policy=retry.DELIVERY)
        if to_tell:
            to_tell.pop()(result)
        return result

    return merge_due(await asyncio.gather(*(part(p) for p in range(partitions))))


def merge_due(results: Sequence[DueResult]) -> DueResult:
    """One round's answer from its partitions' answers."""
    counts = Counts()
    for r in results:
        counts = counts + r.counts
    nexts = [r.next_due for r in results if r.next_due]
    return DueResult(counts=counts, more=any(r.more for r in results),
                     next_due=min(nexts, key=datetime.fromisoformat) if nexts else None,
                     budget_exhausted=any(r.budget_exhausted for r in results))


def _recheck(inp: TriggeredInput) -> timedelta:
    """How long the idle delivery loop waits at most: it is woken by what the match loop plans and by the next
    due time, so this only bounds what nothing announces (rows planned by hand)."""
    return timedelta(seconds=max(60.0, inp.poll_seconds))


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
        self._found = 0            # match rounds that planned something (the delivery loop watches it)
        self._matches_started = 0  # match_events activities the match loop started, and finished
        self._matches_done = 0
        self._match_wanted = 0     # the delivery loop wants match number this (counting from 1) to run
        self._handover = False     # a continue-as-new is due: the loops stop

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
        if workflow.patched(PIPELINED):
            await self._pipelined(inp)
        else:   # runs started before the two loops replay as they ran
            await self._in_rounds(inp)

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

    async def _in_rounds(self, inp: TriggeredInput) -> None:
        """Before PIPELINED: each round matched and sent side by side and waited for both."""
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

    # --- matching and sending as two loops (PIPELINED) ----------------------------------------------------

    def _halted(self) -> bool:
        """The loops stop: cancelled, the end date passed, or a continue-as-new is due."""
        return self._cancelled or self._handover or (self._end_at is not None and workflow.now() >= self._end_at)

    def _until_end(self, timeout: timedelta) -> timedelta:
        return timeout if self._end_at is None else max(timedelta(0), min(timeout, self._end_at - workflow.now()))

    async def _pipelined(self, inp: TriggeredInput) -> None:
        """Matching and sending run as two loops side by side: a new match starts as soon as the last one is done,
        and a delivery as soon as the last one is done and there is something to send. In rounds that waited
        for both, an event waited for the slower of the two twice (bench/README.md)."""
        self._handover = False
        await asyncio.gather(self._match_loop(inp), self._deliver_loop(inp))
        if self._handover and not self._cancelled:
            workflow.continue_as_new(replace(
                inp, cursor=self._cursor, counts=self._counts, matched=self._matched, paused=self._paused,
                end_at=self._end_at.isoformat() if self._end_at else None))

    async def _match_loop(self, inp: TriggeredInput) -> None:
        while not self._halted():
            if self._paused:
                await _set_status(inp.campaign_id, "paused")
                await workflow.wait_condition(lambda: not self._paused or self._halted())
                if not self._halted():
                    await _set_status(inp.campaign_id, "running")
                continue
            wakes = self._wakes
            self._matches_started += 1
            match: MatchResult = await workflow.execute_activity(
                "match_events", MatchEvents(campaign_id=inp.campaign_id, after=self._cursor,
                                            now=workflow.now().isoformat(), limit=inp.batch_size * 2),
                result_type=MatchResult, start_to_close_timeout=retry.DB_QUICK_TIMEOUT,
                retry_policy=retry.DB_QUICK)
            self._matches_done += 1
            self._cursor, self._matched = match.cursor, self._matched + match.matched
            self._rounds += 1
            if match.matched:
                self._found += 1
            if self._should_continue_as_new(inp):
                self._handover = True
                return
            if match.more:
                continue
            try:
                await workflow.wait_condition(lambda: self._halted() or self._paused or self._wakes != wakes
                                              or self._match_wanted > self._matches_started,
                                              timeout=self._until_end(timedelta(seconds=inp.poll_seconds)))
            except TimeoutError:
                pass

    def _ask_match(self, result: DueResult) -> None:
        """A delivery round's first partition is done and sent something (events are arriving): have the match
        loop look now, so the next round finds what arrived during this one without waiting for the poll."""
        if result.counts != Counts():
            self._match_wanted = max(self._match_wanted, self._matches_started + 1)

    async def _deliver_loop(self, inp: TriggeredInput) -> None:
        # its waits are not cut at the end date: the match loop's are, and its timer firing there ends this
        # wait too (_halted); two timers due at the same instant, one cancelled as the other fires, is what
        # the time-skipping test server cannot take (see tests/workflows/conftest.settle)
        exhausted_at = -1   # the budget-change count when the budget ran out (-1: not exhausted)
        ahead = self._ask_match if workflow.patched(MATCH_AHEAD) else None
        while not self._halted():
            if self._paused:
                await workflow.wait_condition(lambda: not self._paused or self._halted())
                continue
            if exhausted_at >= 0:
                if exhausted_at == self._budget_changes:    # wait for a new budget
                    try:
                        await workflow.wait_condition(
                            lambda: self._budget_changes != exhausted_at or self._halted() or self._paused,
                            timeout=_recheck(inp))
                    except TimeoutError:
                        pass
                    continue
                exhausted_at = -1
                self._state = RunState.running
                await _set_status(inp.campaign_id, "running")
            if self._match_wanted > self._matches_done:    # asked for by the last round, not done yet
                await workflow.wait_condition(lambda: self._matches_done >= self._match_wanted
                                              or self._halted() or self._paused)
                continue
            found, budget = self._found, self._budget_changes
            due = await _deliver_due(inp.campaign_id, inp.batch_size, max(1, inp.concurrency), ahead)
            self._counts = self._counts + due.counts
            self._next_due = due.next_due
            if due.budget_exhausted:    # a budget raised while this one ran is tried at once
                exhausted_at = budget
                self._state = RunState.budget_exhausted
                await _set_status(inp.campaign_id, "budget_exhausted")
                continue
            if due.more or self._found != found:
                continue
            # idle until something was matched or the next reaction is due (and look again now and then)
            timeout = _recheck(inp)
            if self._next_due:
                timeout = min(timeout, max(timedelta(0), datetime.fromisoformat(self._next_due) - workflow.now()))
            if timeout <= timedelta(0):
                continue
            try:
                await workflow.wait_condition(
                    lambda: self._found != found or self._halted() or self._paused
                    or self._budget_changes != budget, timeout=timeout)
            except TimeoutError:
                pass

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
