"""Triggered campaigns end to end on Temporal's time-skipping server: reactions to purchases (condition,
delay, cancel-if, once per member, cooldown, duplicate events) and date rules (birthday, inactivity).

Real TriggeredCampaign / ScheduledTriggerRun + real activities + a real SQLite file + the fake SMTP server.
Events are stored as the ingest path stores them (one row per source id); the workflow is woken by its
``wake`` signal, and hours pass with ``env.sleep`` (workflow time), so a 2-hour delay takes milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from storage.tables import Delivery, Event
from tests.factories import make_campaign
from tests.workflows.conftest import (
    Rig,
    add_events,
    aware,
    bulk_members,
    by_member,
    campaign_row,
    deliveries,
    email,
    wait_for,
    set_budget,
    set_program_settings,
    settle,
    wait_for_progress,
)
from workflows.contracts import Counts, Progress, RunState, ScheduledRunInput, TriggeredInput
from workflows.triggered import ScheduledTriggerRun, TriggeredCampaign

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The workflow looks for events this often unless woken: every round here is a `wake` or a due message,
# so the only timers are due times, and no clock skip lands next to one (see conftest.settle).
POLL = 30 * 86400.0


def triggered(**trigger: Any) -> dict[str, Any]:
    return {"kind": "triggered", "template": "thank_you", "trigger": trigger}


def purchase(sid: str, member: int, at: datetime, amount: float) -> tuple[str, int, str, datetime, dict[str, Any]]:
    return (sid, member, "purchase", at, {"amount": amount, "currency": "EUR"})


def event_row_id(engine: Engine, sid: str) -> int:
    with Session(engine) as s:
        found = s.scalar(select(Event.id).where(Event.source_event_id == sid))
        assert found is not None
        return found


def rows(engine: Engine, campaign_id: int) -> list[Delivery]:
    return deliveries(engine, campaign_id)


async def start_triggered(rig: Rig, campaign_id: int, **kw: Any):  # noqa: ANN201
    handle = await rig.start_workflow(TriggeredCampaign.run,
                                      TriggeredInput(campaign_id=campaign_id, poll_seconds=POLL, **kw))
    await wait_for_progress(handle, lambda p: p.run_rounds >= 1, query=TriggeredCampaign.progress,
                            what="the first round")
    await settle(handle)
    return handle


async def seen(handle: Any, engine: Engine, sid: str) -> Progress:
    """Wake the workflow and wait until its cursor has passed the event ``sid``."""
    target = event_row_id(engine, sid)
    await handle.signal(TriggeredCampaign.wake)
    p = await wait_for_progress(handle, lambda p: p.cursor >= target, query=TriggeredCampaign.progress,
                                what=f"event {sid} examined")
    await settle(handle)
    return p


async def skip(rig: Rig, delta: timedelta, *handles: Any) -> None:
    """Let ``delta`` of workflow time pass, then wait for the workflows to settle."""
    await rig.env.sleep(delta)
    for h in handles:
        await settle(h)


async def stop(rig: Rig, handle: Any) -> Progress:
    await handle.signal(TriggeredCampaign.cancel)
    return await rig.finish(handle)


# --- event reactions ----------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3], ids=["one-deliverer", "three-deliverers"])
async def test_purchase_reaction_condition_delay_cancel_if_and_duplicate_events(workers, engine: Engine,
                                                                              concurrency: int) -> None:
    program, (m1, m2, m3, m4, m5) = bulk_members(engine, 5)
    cid = make_campaign(engine, program, key="thanks", **triggered(
        event="purchase", where=[{"field": "amount", "op": "gte", "value": 1000}], delay="2h",
        cancel_if={"event": "purchase"}))
    async with workers(engine=engine) as rig:
        handle = await start_triggered(rig, cid, concurrency=concurrency)
        t0 = await rig.now()
        assert add_events(engine, program, [
            purchase("e1", m1, t0, 1500),          # a big purchase: thanked 2 h later
            purchase("e2", m2, t0, 500),           # too small: nothing
            purchase("e3", m3, t0, 1500),          # buys again within 2 h: the thank-you is cancelled
            purchase("e4", m4, t0, 1000),          # exactly the threshold
            purchase("e4", m4, t0, 1000),          # the same event id again: stored once
        ]) == 4
        assert add_events(engine, program, [purchase("e4", m4, t0, 1000)]) == 0  # sent again later: a duplicate
        await seen(handle, engine, "e4")

        planned = by_member(rows(engine, cid))
        assert set(planned) == {m1, m3, m4}
        for r in planned.values():
            assert (r.status, r.occurrence[:1]) == ("planned", "e")
            assert aware(r.due_at) == t0 + timedelta(hours=2)
        assert rig.smtp.recipients() == []

        await skip(rig, timedelta(hours=1), handle)
        assert rig.smtp.recipients() == []  # not before the delay
        add_events(engine, program, [purchase("e3-again", m3, t0 + timedelta(hours=1), 200)])
        await seen(handle, engine, "e3-again")
        await skip(rig, timedelta(hours=1, minutes=1), handle)
        await wait_for(lambda: {r.status for r in rows(engine, cid)} <= {"sent", "suppressed"},
                       what="the reactions delivered")
        assert sorted(rig.sent_to()) == sorted([email(1), email(4)])  # once each

        done = by_member(rows(engine, cid))
        assert (done[m3].status, done[m3].reason) == ("suppressed", "cancelled_by_event")
        for m in (m1, m4):
            assert done[m].status == "sent"
            assert t0 + timedelta(hours=2) <= aware(done[m].sent_at) < t0 + timedelta(hours=2, minutes=2)  # type: ignore[operator]
        # a day later, nothing more happens
        await skip(rig, timedelta(days=1), handle)
        await handle.signal(TriggeredCampaign.wake)
        p = await wait_for_progress(handle, lambda p: p.counts.sent == 2, query=TriggeredCampaign.progress)
        assert p.counts.reasons == {"cancelled_by_event": 1}
        assert len(rows(engine, cid)) == 3 and len(rig.sent_to()) == 2
        result = await stop(rig, handle)
    assert result.state == RunState.cancelled
    assert campaign_row(engine, cid).status == "cancelled"


async def test_once_per_member_and_cooldown(workers, engine: Engine) -> None:
    program, (m1, m2) = bulk_members(engine, 2)
    once = make_campaign(engine, program, key="once", **triggered(event="purchase", once_per_member=True))
    cool = make_campaign(engine, program, key="cool", **triggered(event="purchase", cooldown="1d"))
    async with workers(engine=engine) as rig:
        h_once, h_cool = await start_triggered(rig, once), await start_triggered(rig, cool)
        t0 = await rig.now()
        # two purchases in one batch: once-per-member and the cooldown both take only the first
        add_events(engine, program, [purchase("a1", m1, t0, 10), purchase("a2", m1, t0, 20),
                                     purchase("b1", m2, t0, 10)])
        for h in (h_once, h_cool):
            await seen(h, engine, "b1")
        await wait_for(lambda: Counter(r.status for r in rows(engine, once) + rows(engine, cool)) == {"sent": 4},
                       what="the first reactions")

        await skip(rig, timedelta(hours=5), h_once, h_cool)
        add_events(engine, program, [purchase("a3", m1, t0 + timedelta(hours=5), 30)])  # within the cooldown
        for h in (h_once, h_cool):
            await seen(h, engine, "a3")
        await skip(rig, timedelta(days=1), h_once, h_cool)
        add_events(engine, program, [purchase("a4", m1, t0 + timedelta(days=1, hours=5), 40)])  # after it
        for h in (h_once, h_cool):
            await seen(h, engine, "a4")
        await wait_for(lambda: len(rows(engine, cool)) == 3 and rows(engine, cool)[-1].status == "sent",
                       what="the reaction after the cooldown")

        assert {(r.member_id, r.occurrence) for r in rows(engine, once)} == {(m1, "a1"), (m2, "b1")}
        assert {(r.member_id, r.occurrence) for r in rows(engine, cool)} == {(m1, "a1"), (m2, "b1"), (m1, "a4")}
        assert Counter(rig.smtp.recipients()) == {email(1): 3, email(2): 2}
        for h in (h_once, h_cool):
            await stop(rig, h)


@pytest.mark.parametrize("concurrency", [1, 3], ids=["one-deliverer", "three-deliverers"])
async def test_once_per_member_with_cancel_if_thanks_the_purchase_that_was_not_followed_by_another(
        workers, engine: Engine, concurrency: int) -> None:
    """A reaction cancelled by a newer purchase does not use up "once": the newer one is thanked, once."""
    program, (m1,) = bulk_members(engine, 1)
    cid = make_campaign(engine, program, key="once-cancel", **triggered(
        event="purchase", delay="2h", cancel_if={"event": "purchase"}, once_per_member=True))
    async with workers(engine=engine) as rig:
        handle = await start_triggered(rig, cid, concurrency=concurrency)
        t0 = await rig.now()
        add_events(engine, program, [purchase("x1", m1, t0, 100)])
        await seen(handle, engine, "x1")
        await skip(rig, timedelta(hours=1), handle)
        add_events(engine, program, [purchase("x2", m1, t0 + timedelta(hours=1), 100)])
        await seen(handle, engine, "x2")
        await skip(rig, timedelta(hours=2, minutes=1), handle)
        await wait_for(lambda: {r.status for r in rows(engine, cid)} == {"sent", "suppressed"},
                       what="the reactions delivered")
        done = {r.occurrence: (r.status, r.reason) for r in rows(engine, cid)}
        assert done == {"x1": ("suppressed", "cancelled_by_event"), "x2": ("sent", None)}
        # later purchases: once means once
        await skip(rig, timedelta(days=1), handle)
        add_events(engine, program, [purchase("x3", m1, t0 + timedelta(days=1, hours=3), 100)])
        await seen(handle, engine, "x3")
        await skip(rig, timedelta(hours=2, minutes=1), handle)
        await wait_for(lambda: all(r.status != "planned" for r in rows(engine, cid)), what="x3 handled")
        assert rig.sent_to() == [email(1)]
        await stop(rig, handle)


@pytest.mark.parametrize("concurrency", [1, 3], ids=["one-deliverer", "three-deliverers"])
async def test_reactions_the_budget_missed_go_out_when_it_is_raised(workers, engine: Engine, concurrency: int) -> None:
    program, (m1, m2, m3) = bulk_members(engine, 3)
    set_program_settings(engine, program, {"unit_costs": {"email": "0.10"}})
    cid = make_campaign(engine, program, key="thanks", **triggered(event="purchase"))
    set_budget(engine, cid, "0.20")
    async with workers(engine=engine) as rig:
        handle = await start_triggered(rig, cid, concurrency=concurrency)
        t0 = await rig.now()
        add_events(engine, program, [purchase("p1", m1, t0, 10), purchase("p2", m2, t0, 10),
                                     purchase("p3", m3, t0, 10)])
        await seen(handle, engine, "p3")
        p = await wait_for_progress(handle, lambda p: p.state == RunState.budget_exhausted,
                                    query=TriggeredCampaign.progress, what="budget exhausted")
        first = sorted(rig.sent_to())
        if concurrency == 1:   # one deliverer: oldest first; side by side, any two of the three win the budget
            assert first == [email(1), email(2)]
        assert p.counts.sent == 2 and len(set(first)) == 2
        waiting = [(r.member_id, r.status, r.reason) for r in rows(engine, cid) if r.status != "sent"]
        assert len(waiting) == 1 and waiting[0][1:] == ("planned", "budget_exhausted")
        assert email([m1, m2, m3].index(waiting[0][0]) + 1) not in first
        await wait_for(lambda: campaign_row(engine, cid).status == "budget_exhausted", what="row status")

        set_budget(engine, cid, "1.00")
        await handle.signal(TriggeredCampaign.budget_changed)
        await wait_for(lambda: len(rig.smtp.recipients()) == 3, what="the third reaction")
        await settle(handle)
        p = await handle.query(TriggeredCampaign.progress)
        assert p.state == RunState.running and p.counts.sent == 3
        assert campaign_row(engine, cid).budget_spent == Decimal("0.30")
        await stop(rig, handle)
    assert sorted(rig.sent_to()) == [email(1), email(2), email(3)]


async def test_reaction_due_at_night_waits_for_the_members_send_window(workers, engine: Engine) -> None:
    kal = "Europe/Kaliningrad"  # UTC+2
    program, (m1,) = bulk_members(engine, 1, time_zone=lambda i: kal)
    cid = make_campaign(engine, program, key="thanks", send_window={"from": "10:00", "to": "12:00"},
                        **triggered(event="purchase", delay="1h"))
    async with workers(engine=engine) as rig:
        handle = await start_triggered(rig, cid)
        now = await rig.now()
        night = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(0, 30), UTC)  # 02:30 local
        await skip(rig, night - now, handle)
        add_events(engine, program, [purchase("p1", m1, night, 10)])
        await seen(handle, engine, "p1")
        await skip(rig, timedelta(hours=2), handle)  # due at 03:30 local: deferred to 10:00 local
        [row] = rows(engine, cid)
        opens = datetime.combine(night.date(), time(8, 0), UTC)
        assert (row.status, row.reason, aware(row.due_at)) == ("planned", "outside_window", opens)
        assert rig.smtp.recipients() == []
        await skip(rig, opens - await rig.now() + timedelta(minutes=1), handle)
        await wait_for(lambda: rows(engine, cid)[0].status == "sent", what="sent when the window opened")
        await stop(rig, handle)
    assert opens <= aware(rows(engine, cid)[0].sent_at) < opens + timedelta(minutes=1)  # type: ignore[operator]
    assert rig.sent_to() == [email(1)]


async def test_reaction_still_waiting_at_the_end_date_is_dropped(workers, engine: Engine) -> None:
    program, (m1,) = bulk_members(engine, 1)
    cid = make_campaign(engine, program, key="late", **triggered(event="purchase", delay="3h"))
    async with workers(engine=engine) as rig:
        t0 = await rig.now()
        handle = await start_triggered(rig, cid, end_at=(t0 + timedelta(hours=1)).isoformat())
        add_events(engine, program, [purchase("p1", m1, t0, 100)])
        await seen(handle, engine, "p1")
        result: Progress = await handle.result()  # the end date comes before the message is due
    assert result.state == RunState.completed
    assert rig.smtp.recipients() == []
    assert [(r.status, r.reason) for r in rows(engine, cid)] == [("suppressed", "campaign_ended")]
    assert campaign_row(engine, cid).status == "completed"


async def test_matching_and_sending_go_on_across_continue_as_new_and_a_pause(workers, engine: Engine) -> None:
    """The two loops hand over to a new run (continue-as-new after every other match here) with the cursor and the
    counts, and a pause holds both: nothing is sent while paused, everything once resumed, nothing twice."""
    program, members = bulk_members(engine, 6)
    cid = make_campaign(engine, program, key="thanks", **triggered(event="purchase"))
    async with workers(engine=engine) as rig:
        handle = await start_triggered(rig, cid, rounds_per_run=2)   # a new run after every other match
        t0 = await rig.now()
        for i, m in enumerate(members[:3]):
            add_events(engine, program, [purchase(f"a{i}", m, t0, 100)])
            await seen(handle, engine, f"a{i}")
        await wait_for(lambda: len(rig.smtp.recipients()) == 3, what="three reactions across runs")
        await settle(handle)
        await handle.signal(TriggeredCampaign.pause)
        await wait_for(lambda: campaign_row(engine, cid).status == "paused", what="paused")
        add_events(engine, program, [purchase(f"b{i}", m, t0, 100) for i, m in enumerate(members[3:])])
        await handle.signal(TriggeredCampaign.wake)
        await asyncio.sleep(0.5)
        assert len(rig.smtp.recipients()) == 3        # paused: not matched, not sent
        await handle.signal(TriggeredCampaign.resume)
        await wait_for(lambda: len(rig.smtp.recipients()) == 6, what="the reactions held by the pause")
        await settle(handle)
        p = await handle.query(TriggeredCampaign.progress)
        assert p.counts.sent == 6 and p.total == 6
        assert (await handle.describe()).run_id != handle.first_execution_run_id    # it did continue as new
        result = await stop(rig, handle)
    assert result.counts.sent == 6
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 7))     # once each
    assert campaign_row(engine, cid).status == "cancelled"


async def test_a_run_started_before_the_two_loops_replays_as_it_ran() -> None:
    """A history recorded by the workflow before PIPELINED (one round matched and sent side by side; a
    reaction an hour after its purchase, then cancelled) replays against today's code without a
    non-determinism error: runs in flight when a worker is upgraded go on."""
    history = WorkflowHistory.from_json("triggered-in-rounds",
                                        (Path(__file__).parent / "histories" / "triggered_in_rounds.json").read_text())
    await Replayer(workflows=[TriggeredCampaign]).replay_workflow(history)


async def test_a_run_started_before_the_match_ahead_replays_as_it_ran() -> None:
    """A history recorded by the two loops before MATCH_AHEAD (two deliverers; two rounds that sent, each
    woken by a signal, then cancelled): its rounds asked the match loop for nothing, and replay must not
    either (a match it asked for would be a command the history does not have)."""
    history = WorkflowHistory.from_json("triggered-pipelined",
                                        (Path(__file__).parent / "histories" / "triggered_pipelined.json").read_text())
    await Replayer(workflows=[TriggeredCampaign]).replay_workflow(history)


# --- date rules ---------------------------------------------------------------------------------


async def run_scheduled(rig: Rig, campaign_id: int) -> Counts:
    handle = await rig.start_workflow(ScheduledTriggerRun.run, ScheduledRunInput(campaign_id=campaign_id))
    return await rig.finish(handle)


async def noon_tomorrow(rig: Rig) -> datetime:
    """Move the clock to 12:00 UTC tomorrow and return it."""
    now = await rig.now()
    at = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(12), UTC)
    await rig.env.sleep(at - now)
    return at


def born(d: date, year: int = 1990) -> str:
    return d.replace(year=year).isoformat() if not (d.month == 2 and d.day == 29) else f"{year}-02-28"


async def test_birthday_three_days_ahead_in_member_time_once_a_year(workers, engine: Engine) -> None:
    kiritimati = "Pacific/Kiritimati"  # UTC+14: at 12:00 UTC its date is already tomorrow
    async with workers(engine=engine) as rig:
        at = await noon_tomorrow(rig)
        today = at.date()
        plan = {  # i: (time zone, birthday)
            1: (None, born(today + timedelta(days=3))),            # program zone (UTC): in 3 days → yes
            2: (None, born(today + timedelta(days=2))),            # no
            3: (None, born(today + timedelta(days=4))),            # no (tomorrow it is)
            4: (kiritimati, born(today + timedelta(days=4))),      # its local today is tomorrow → yes
            5: (kiritimati, born(today + timedelta(days=3))),      # no
            6: (None, None),                                       # no birthday on file
        }
        program, ids = bulk_members(engine, 6, time_zone=lambda i: plan[i][0],
                                    attributes=lambda i: {"birthday": plan[i][1]} if plan[i][1] else {})
        cid = make_campaign(engine, program, key="birthday", **triggered(on="birthday", days=3))

        first = await run_scheduled(rig, cid)
        assert sorted(rig.sent_to()) == sorted([email(1), email(4)])
        assert first.sent == 2
        assert {r.occurrence for r in rows(engine, cid)} == {f"birthday-{(today + timedelta(days=3)).year}",
                                                            f"birthday-{(today + timedelta(days=4)).year}"}

        await rig.env.sleep(timedelta(hours=1))  # the hourly schedule runs again the same day
        again = await run_scheduled(rig, cid)
        assert again.sent == 0 and again.audience == 0
        assert len(rig.sent_to()) == 2

        await rig.env.sleep(timedelta(days=1))  # the next day: member 3's turn, nobody greeted twice
        await run_scheduled(rig, cid)
    assert sorted(rig.sent_to()) == sorted([email(1), email(3), email(4)])
    assert Counter(r.member_id for r in rows(engine, cid)) == {ids[0]: 1, ids[2]: 1, ids[3]: 1}


async def test_inactivity_after_thirty_days_without_a_purchase(workers, engine: Engine) -> None:
    async with workers(engine=engine) as rig:
        at = await noon_tomorrow(rig)
        program, (a, b, c, d) = bulk_members(engine, 4)
        add_events(engine, program, [
            purchase("a-old", a, at - timedelta(days=40), 10),     # lapsed 40 days ago → yes
            purchase("b-recent", b, at - timedelta(days=10), 10),  # bought 10 days ago → no
            purchase("c-old", c, at - timedelta(days=60), 10),
            purchase("c-recent", c, at - timedelta(days=5), 10),   # the last purchase counts → no
        ])                                                         # d never bought: not "inactive"
        cid = make_campaign(engine, program, key="winback", **triggered(on="inactivity", days=30))
        first = await run_scheduled(rig, cid)
        assert first.sent == 1 and rig.sent_to() == [email(1)]
        await rig.env.sleep(timedelta(hours=1))
        again = await run_scheduled(rig, cid)  # still inactive, same lapse: not again
        assert again.sent == 0
        await rig.env.sleep(timedelta(days=21))  # b's last purchase is now 31 days old
        third = await run_scheduled(rig, cid)
    assert third.sent == 1
    assert sorted(rig.sent_to()) == sorted([email(1), email(2)])
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Delivery).where(Delivery.campaign_id == cid)) == 2
