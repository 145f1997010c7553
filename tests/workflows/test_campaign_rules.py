"""Campaign rules end to end on Temporal's time-skipping server: budget, send windows across clock
changes, holdout, frequency caps, follow-up steps, end date.

Real BroadcastCampaign + real activities + a real database + the fake SMTP server on 127.0.0.1. The
workflow passes its own clock (``now``) to every activity, so windows, caps and due times follow
workflow time: days pass in milliseconds. Assertions are on what the SMTP server received and on the
``delivery`` / ``campaign`` rows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine
from temporalio import activity

from activities.delivery import DeliveryActivities
from campaigns.holdout import held_out
from storage.db import make_engine
from tests.factories import make_campaign
from tests.workflows.conftest import (
    add_events,
    add_responses,
    aware,
    bulk_members,
    by_member,
    campaign_row,
    deliveries,
    email,
    emails_of,
    set_budget,
    set_program_settings,
    wait_for,
    wait_for_progress,
)
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BatchResult, DeliverBatch, Progress, RunState, StepPlan

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sent_member_ids(engine: Engine, campaign_id: int, step: str = "main") -> list[int]:
    return [r.member_id for r in deliveries(engine, campaign_id, step=step) if r.status == "sent"]


# --- budget -------------------------------------------------------------------------------------


async def test_budget_stops_at_the_exact_member_and_a_raised_budget_sends_the_rest(workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 50)
    set_program_settings(engine, program, {"unit_costs": {"email": "0.10"}})
    cid = make_campaign(engine, program, budget="2.00")
    set_budget(engine, cid, "2.00")  # what launch() copies from the spec
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=7, concurrency=1)
        p = await wait_for_progress(handle, lambda p: p.state == RunState.budget_exhausted, what="budget exhausted")
        assert p.pending == {"budget_exhausted": 30}
        assert p.counts.sent == 20
        await wait_for(lambda: campaign_row(engine, cid).status == "budget_exhausted", what="row status")

        assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 21))  # the first 20 by member id
        assert sent_member_ids(engine, cid) == ids[:20]
        row = campaign_row(engine, cid)
        assert row.budget_spent == Decimal("2.00")
        rows = deliveries(engine, cid)
        assert Counter((r.status, r.reason) for r in rows) == {("sent", None): 20,
                                                               ("planned", "budget_exhausted"): 30}
        assert {r.cost for r in rows if r.status == "sent"} == {Decimal("0.10")}

        set_budget(engine, cid, "10.00")
        await handle.signal(BroadcastCampaign.budget_changed)
        result: Progress = await handle.result()

    assert result.state == RunState.completed
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 51))  # the rest, nobody twice
    assert result.counts.sent == 50 and result.pending == {}
    assert campaign_row(engine, cid).budget_spent == Decimal("5.00")
    assert campaign_row(engine, cid).status == "completed"
    assert {r.status for r in deliveries(engine, cid)} == {"sent"}


class RaiseBudgetWhenItRunsOut(DeliveryActivities):
    """The marketer raises the budget the moment a page runs out of it, while the first pass goes on."""

    raised = asyncio.Event()
    go_on = asyncio.Event()
    campaign_id = 0

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        result = await super().deliver_batch(inp)
        if result.budget_exhausted and not self.raised.is_set():
            set_budget(self._engine, self.campaign_id, "100.00")
            self.raised.set()
            await self.go_on.wait()  # the test signals budget_changed meanwhile
        return result


async def test_budget_raised_during_the_first_pass_reaches_the_members_it_had_missed(
        workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 30)
    set_program_settings(engine, program, {"unit_costs": {"email": "0.10"}})
    cid = make_campaign(engine, program)
    set_budget(engine, cid, "1.00")  # 10 messages: the third page of 5 runs out
    RaiseBudgetWhenItRunsOut.raised, RaiseBudgetWhenItRunsOut.go_on = asyncio.Event(), asyncio.Event()
    RaiseBudgetWhenItRunsOut.campaign_id = cid
    async with workers(engine=engine, cls=RaiseBudgetWhenItRunsOut) as rig:
        handle = await rig.start(cid, page_size=5, concurrency=1)
        await asyncio.wait_for(RaiseBudgetWhenItRunsOut.raised.wait(), 10)
        await handle.signal(BroadcastCampaign.budget_changed)  # recorded before the page completes
        RaiseBudgetWhenItRunsOut.go_on.set()
        p = await wait_for_progress(handle, lambda p: p.state != RunState.running, timeout=20, what="the end")
        assert (p.state, p.pending) == (RunState.completed, {}), "members the budget missed were stranded"
        result: Progress = await rig.finish(handle)
    assert result.state == RunState.completed and result.counts.sent == 30
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 31))
    assert campaign_row(engine, cid).budget_spent == Decimal("3.00")


async def test_budget_holds_exactly_with_two_workers_and_concurrent_pages(workers, any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    try:
        program, _ = bulk_members(engine, 100)
        set_program_settings(engine, program, {"unit_costs": {"email": "0.25"}})
        cid = make_campaign(engine, program)
        set_budget(engine, cid, "9.25")  # 37 messages
        async with workers(engine=engine, url=any_db_url, n=2, chunk=3, max_concurrent_activities=2) as rig:
            handle = await rig.start(cid, page_size=5, concurrency=4)
            p = await wait_for_progress(handle, lambda p: p.state == RunState.budget_exhausted,
                                        timeout=30, what="budget exhausted")
            assert p.counts.sent == 37
            assert p.pending == {"budget_exhausted": 63}
            assert len(rig.sent_to()) == 37
            row = campaign_row(engine, cid)
            assert row.budget_spent == row.budget_limit == Decimal("9.25")
            rows = deliveries(engine, cid)
            assert sum(r.cost or 0 for r in rows) == Decimal("9.25")
            assert Counter(r.status for r in rows) == {"sent": 37, "planned": 63}
            # both workers took part (otherwise this proves nothing about concurrency)
            assert all(cid in a._campaigns for a in rig.acts), "one worker did all the work"
            await handle.signal(BroadcastCampaign.cancel)
            result: Progress = await handle.result()
        assert result.state == RunState.cancelled
        assert Counter((r.status, r.reason) for r in deliveries(engine, cid)) == {
            ("sent", None): 37, ("suppressed", "cancelled"): 63}
        assert campaign_row(engine, cid).budget_spent == Decimal("9.25")
    finally:
        engine.dispose()


# --- send windows and quiet hours ----------------------------------------------------------------


def next_clock_change(tz: str, after: datetime) -> date:
    """The first local date after ``after`` on which the zone's UTC offset changes (DST starts or ends)."""
    zone = ZoneInfo(tz)
    d = after.astimezone(zone).date() + timedelta(days=1)
    for _ in range(400):
        if datetime.combine(d, time(12), zone).utcoffset() != datetime.combine(d - timedelta(days=1), time(12),
                                                                              zone).utcoffset():
            return d
        d += timedelta(days=1)
    raise AssertionError(f"{tz} has no clock change within a year")


def local(dt: datetime | None, tz: str) -> datetime:
    assert dt is not None
    return aware(dt).astimezone(ZoneInfo(tz))  # type: ignore[union-attr]


async def test_send_window_in_member_time_across_a_clock_change(workers, engine: Engine) -> None:
    ny, berlin = "America/New_York", "Europe/Berlin"
    program, ids = bulk_members(engine, 20, time_zone=lambda i: ny if i <= 10 else berlin)
    cid = make_campaign(engine, program, send_window={"from": "10:00", "to": "12:00"})
    async with workers(engine=engine) as rig:
        switch = next_clock_change(ny, await rig.now())
        # Saturday-ish evening in New York, the night the clocks change: both groups are outside the window
        start = datetime.combine(switch - timedelta(days=1), time(20, 0), ZoneInfo(ny))
        handle = await rig.start(cid, start_at=start.isoformat(), page_size=5, concurrency=2)
        result: Progress = await handle.result()

    assert result.state == RunState.completed
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 21))
    rows = by_member(deliveries(engine, cid))
    ny_offsets = set()
    for i, mid in enumerate(ids, start=1):
        row = rows[mid]
        tz = ny if i <= 10 else berlin
        at = local(row.sent_at, tz)
        assert row.status == "sent", (i, row.status, row.reason)
        # sent when the window opened: 10:00 local on the day of the change, not an hour off
        assert at.date() == switch, (i, at)
        assert time(10, 0) <= at.time() < time(10, 1), (i, at)
        if tz == ny:
            ny_offsets.add(at.utcoffset())
    pre = datetime.combine(switch - timedelta(days=1), time(12), ZoneInfo(ny)).utcoffset()
    assert ny_offsets and pre not in ny_offsets  # the New York group went out on the new offset


async def test_same_instant_one_zone_sent_now_the_other_when_its_window_opens(workers, engine: Engine) -> None:
    vlad, kal = "Asia/Vladivostok", "Europe/Kaliningrad"  # UTC+10 and UTC+2, no DST
    program, ids = bulk_members(engine, 12, time_zone=lambda i: vlad if i % 2 else kal)
    cid = make_campaign(engine, program, send_window={"from": "10:00", "to": "12:00"})
    async with workers(engine=engine) as rig:
        day = (await rig.now()).astimezone(UTC).date() + timedelta(days=1)
        start = datetime.combine(day, time(0, 30), UTC)  # 10:30 in Vladivostok, 02:30 in Kaliningrad
        handle = await rig.start(cid, start_at=start.isoformat(), page_size=4, concurrency=2)
        await rig.env.sleep(start - await rig.now() + timedelta(minutes=1))
        p = await wait_for_progress(handle, lambda p: p.pending.get("outside_window") == 6, timeout=20,
                                    what="Kaliningrad deferred")
        assert p.counts.sent == 6
        assert p.next_open == datetime.combine(day, time(8, 0), UTC).isoformat()
        assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 13, 2))
        result: Progress = await handle.result()

    assert result.state == RunState.completed and result.counts.sent == 12
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 13))  # nobody skipped, nobody twice
    rows = by_member(deliveries(engine, cid))
    for i, mid in enumerate(ids, start=1):
        sent_at = aware(rows[mid].sent_at)
        assert sent_at is not None
        if i % 2:
            assert start <= sent_at < start + timedelta(minutes=1), (i, sent_at)
        else:
            opens = datetime.combine(day, time(8, 0), UTC)  # 10:00 in Kaliningrad
            assert opens <= sent_at < opens + timedelta(minutes=1), (i, sent_at)
            assert local(sent_at, kal).time() >= time(10, 0)


async def test_email_has_no_quiet_hours_by_default_but_a_program_may_set_them(workers, engine: Engine) -> None:
    vlad = "Asia/Vladivostok"
    program, ids = bulk_members(engine, 4, time_zone=lambda i: vlad)
    first = make_campaign(engine, program, key="night-1")
    second = make_campaign(engine, program, key="night-2")
    async with workers(engine=engine) as rig:
        day = (await rig.now()).astimezone(UTC).date() + timedelta(days=1)
        night = datetime.combine(day, time(23, 30), ZoneInfo(vlad))
        await (await rig.start(first, start_at=night.isoformat())).result()  # the clock may leap after this
        assert len(rig.sent_to()) == 4
        for row in deliveries(engine, first):
            assert row.status == "sent" and local(row.sent_at, vlad).time() >= time(23, 30)  # at night: fine

        set_program_settings(engine, program, {"quiet_hours": {"email": {"from": "21:00", "to": "09:00"}}})
        rig.smtp.clear()
        day2 = (await rig.now()).astimezone(UTC).date() + timedelta(days=1)
        night2 = datetime.combine(day2, time(23, 30), ZoneInfo(vlad))
        await (await rig.start(second, start_at=night2.isoformat())).result()
    assert len(rig.sent_to()) == 4
    for row in deliveries(engine, second):
        at = local(row.sent_at, vlad)
        assert row.status == "sent"
        assert at.date() == night2.date() + timedelta(days=1) and time(9, 0) <= at.time() < time(9, 1), at


# --- holdout ------------------------------------------------------------------------------------


async def test_holdout_keeps_a_tenth_out_deterministically_and_never_mails_it(workers, engine: Engine) -> None:
    n = 10_000
    program, ids = bulk_members(engine, n, consent=lambda i: i % 10 == 0)
    cid = make_campaign(engine, program, key="holdout-a", holdout=0.1)
    async with workers(engine=engine) as rig:
        result: Progress = await (await rig.start(cid, page_size=1000, concurrency=4)).result()
        rows = by_member(deliveries(engine, cid))
        held = {m for m, r in rows.items() if r.status == "held_out"}
        assert len(rows) == n
        assert abs(len(held) / n - 0.1) <= 0.01, len(held)
        assert held == {m for m in ids if held_out("holdout-a", m, 0.1)}  # a pure function of key and member
        consenting = {m for i, m in enumerate(ids, start=1) if i % 10 == 0}
        # the uplift's control group: held-out members the campaign could have reached (consent, address)
        assert {m for m in held if rows[m].reason == "control"} == held & consenting
        assert {m for m in held if rows[m].reason == "control_unreachable"} == held - consenting
        mailed = set(rig.sent_to())
        assert not mailed & emails_of(engine, list(held))
        assert mailed == emails_of(engine, list(consenting - held))
        assert result.counts.held_out == len(held)
        assert result.counts.sent == len(consenting - held)

        # a re-run of the same campaign changes nobody's group and sends nothing
        again: Progress = await (await rig.start(cid, page_size=1000, concurrency=4)).result()
        assert again.counts.sent == 0 and again.counts.already_done == n
        assert {m for m, r in by_member(deliveries(engine, cid)).items() if r.status == "held_out"} == held
        assert len(rig.sent_to()) == len(mailed)

    # another campaign draws its own control group: about 10% of it overlaps this one, by chance only
    other = {m for m in ids if held_out("holdout-b", m, 0.1)}
    assert abs(len(other) / n - 0.1) <= 0.01
    assert 0.05 < len(held & other) / len(held) < 0.15


# --- frequency caps -----------------------------------------------------------------------------


async def test_program_cap_suppresses_a_second_campaign_but_not_service_messages(workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 10)
    set_program_settings(engine, program, {"caps": [{"max": 1, "per": "7d"}]})
    service = make_campaign(engine, program, key="receipt-info", topic="service")
    a = make_campaign(engine, program, key="promo-a")
    b = make_campaign(engine, program, key="promo-b")
    c = make_campaign(engine, program, key="service-2", topic="service")
    async with workers(engine=engine) as rig:
        # a service message first: it neither is capped nor counts towards the marketing cap
        await rig.finish(await rig.start(service, page_size=5))
        assert len(rig.sent_to()) == 10
        rig.smtp.clear()
        ra: Progress = await rig.finish(await rig.start(a, page_size=5))
        assert ra.counts.sent == 10 and sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 11))
        rig.smtp.clear()
        await rig.env.sleep(timedelta(hours=1))
        rb: Progress = await rig.finish(await rig.start(b, page_size=5))
        assert rig.smtp.recipients() == []
        assert rb.counts.suppressed == 10 and rb.counts.reasons == {"frequency_cap": 10}
        assert {(r.status, r.reason) for r in deliveries(engine, b)} == {("suppressed", "frequency_cap")}
        rc: Progress = await rig.finish(await rig.start(c, page_size=5))  # service: never capped
        assert rc.counts.sent == 10 and len(rig.sent_to()) == 10
        rig.smtp.clear()
        # a week after campaign A, the cap has room again
        await rig.env.sleep(timedelta(days=7))
        d = make_campaign(engine, program, key="promo-d")
        rd: Progress = await rig.finish(await rig.start(d, page_size=5))
    assert rd.counts.sent == 10 and len(rig.sent_to()) == 10


class HoldOneCampaign(DeliveryActivities):
    """Holds the pages of one campaign at their start (their ``now`` already fixed), like a slow page."""

    campaign_id = 0
    entered = asyncio.Event()
    release = asyncio.Event()

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        if inp.campaign_id == self.campaign_id:
            self.entered.set()
            await self.release.wait()
        return await super().deliver_batch(inp)


async def test_program_cap_holds_between_campaigns_running_at_once(workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 5)
    set_program_settings(engine, program, {"caps": [{"max": 1, "per": "7d"}]})
    slow = make_campaign(engine, program, key="slow")
    fast = make_campaign(engine, program, key="fast")
    HoldOneCampaign.campaign_id, HoldOneCampaign.entered, HoldOneCampaign.release = slow, asyncio.Event(), \
        asyncio.Event()
    async with workers(engine=engine, cls=HoldOneCampaign) as rig:
        h_slow = await rig.start(slow, page_size=5)
        await asyncio.wait_for(HoldOneCampaign.entered.wait(), 10)  # its page started: `now` is fixed
        await rig.env.sleep(timedelta(seconds=1))  # (the clock runs at real pace while a page is held)
        r_fast: Progress = await rig.finish(await rig.start(fast, page_size=5))  # mails everyone meanwhile
        assert r_fast.counts.sent == 5
        HoldOneCampaign.release.set()
        r_slow: Progress = await rig.finish(h_slow)
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 6))  # one marketing message each
    assert r_slow.counts.reasons == {"frequency_cap": 5}


async def test_campaign_cap_limits_its_own_steps_only(workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 6)
    other = make_campaign(engine, program, key="other")
    capped = make_campaign(engine, program, key="capped", caps=[{"max": 1, "per": "7d", "scope": "campaign"}],
                           follow_ups=[{"step": "reminder", "after": "2d", "to": "not_clicked"}])
    async with workers(engine=engine) as rig:
        await rig.finish(await rig.start(other, page_size=3))  # another campaign's message does not count
        result: Progress = await (await rig.start(capped, page_size=3, steps=_steps("reminder", days=2))).result()
    assert Counter(r.status for r in deliveries(engine, capped, step="main")) == {"sent": 6}
    assert {(r.status, r.reason) for r in deliveries(engine, capped, step="reminder")} == {
        ("suppressed", "frequency_cap")}
    assert result.counts.sent == 6 and result.counts.reasons == {"frequency_cap": 6}
    assert len(rig.smtp.recipients()) == 12  # 6 from "other", 6 from the main step


def _steps(name: str, *, days: float) -> list[StepPlan]:
    return [StepPlan("main", 0.0), StepPlan(name, days * 86400)]


# --- follow-ups ---------------------------------------------------------------------------------


async def test_reminder_goes_three_days_later_only_to_those_who_did_not_click(workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 12)
    cid = make_campaign(engine, program, follow_ups=[{"step": "reminder", "after": "3d", "to": "not_clicked"}])
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=5, concurrency=2, steps=_steps("reminder", days=3))
        p = await wait_for_progress(handle, lambda p: p.step == "reminder" and p.state == RunState.waiting,
                                    what="waiting for the reminder")
        assert p.counts.sent == 12
        main = by_member(deliveries(engine, cid, step="main"))
        clickers = ids[:4]
        now = await rig.now()
        add_responses(engine, [main[m].id for m in clickers], "clicked", now)  # type: ignore[misc]
        add_responses(engine, [main[ids[5]].id], "opened", now)  # type: ignore[list-item]  # opened only
        assert deliveries(engine, cid, step="reminder") == []
        result: Progress = await handle.result()

    assert result.state == RunState.completed
    reminders = by_member(deliveries(engine, cid, step="reminder"))
    assert set(reminders) == set(ids) - set(clickers)
    assert {r.status for r in reminders.values()} == {"sent"}
    main_done = max(aware(r.sent_at) for r in main.values())  # type: ignore[type-var]
    for r in reminders.values():
        assert aware(r.sent_at) >= main_done + timedelta(days=3)  # type: ignore[operator]
        assert aware(r.sent_at) < main_done + timedelta(days=3, minutes=1)  # type: ignore[operator]
    got = Counter(rig.smtp.recipients())
    assert got == Counter({email(i): 1 for i in range(1, 5)} | {email(i): 2 for i in range(5, 13)})
    assert result.counts.sent == 12 + 8


async def test_a_second_follow_up_goes_to_reminder_recipients_who_did_not_buy_since(
        workers, engine: Engine) -> None:
    program, ids = bulk_members(engine, 6)
    cid = make_campaign(engine, program, follow_ups=[
        {"step": "reminder", "after": "3d", "to": "not_clicked"},
        {"step": "last-call", "after": "1d", "to": "not_bought"}])
    steps = [*_steps("reminder", days=3), StepPlan("last-call", 86400.0)]
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=5, steps=steps)
        await wait_for_progress(handle, lambda p: p.step == "reminder" and p.state == RunState.waiting)
        main = by_member(deliveries(engine, cid, step="main"))
        add_responses(engine, [main[ids[0]].id], "clicked", await rig.now())  # type: ignore[list-item]
        await rig.env.sleep(timedelta(days=3, hours=1))
        await wait_for_progress(handle, lambda p: p.step == "last-call" and p.state == RunState.waiting,
                                what="waiting for the last call")
        reminded = by_member(deliveries(engine, cid, step="reminder"))
        assert set(reminded) == set(ids[1:])
        now = await rig.now()
        before = aware(reminded[ids[2]].sent_at) - timedelta(hours=1)  # type: ignore[operator]
        add_events(engine, program, [
            ("buy-2", ids[1], "purchase", now, {"amount": 10}),      # bought after the reminder
            ("buy-3", ids[2], "purchase", before, {"amount": 10}),   # bought before it: still a target
        ])
        result: Progress = await handle.result()
    last = by_member(deliveries(engine, cid, step="last-call"))
    assert set(last) == set(ids[2:])
    assert result.counts.sent == 6 + 5 + 4


# --- end date -----------------------------------------------------------------------------------


async def test_members_still_deferred_at_the_end_date_are_dropped_as_campaign_ended(
        workers, engine: Engine) -> None:
    vlad, kal = "Asia/Vladivostok", "Europe/Kaliningrad"
    program, ids = bulk_members(engine, 8, time_zone=lambda i: vlad if i % 2 else kal)
    cid = make_campaign(engine, program, send_window={"from": "10:00", "to": "12:00"})
    async with workers(engine=engine) as rig:
        day = (await rig.now()).astimezone(UTC).date() + timedelta(days=1)
        start = datetime.combine(day, time(0, 30), UTC)     # Vladivostok in its window, Kaliningrad not
        end = datetime.combine(day, time(6, 0), UTC)        # before Kaliningrad's window opens (08:00 UTC)
        handle = await rig.start(cid, start_at=start.isoformat(), end_at=end.isoformat(), page_size=4)
        result: Progress = await handle.result()

    assert result.state == RunState.completed
    assert sorted(rig.sent_to()) == sorted(email(i) for i in range(1, 9, 2))
    rows = by_member(deliveries(engine, cid))
    assert {(rows[m].status, rows[m].reason) for m in ids[1::2]} == {("suppressed", "campaign_ended")}
    assert result.counts.reasons == {"campaign_ended": 4} and result.counts.sent == 4
    assert result.pending == {}
    assert campaign_row(engine, cid).status == "completed"


async def test_an_end_date_set_while_waiting_for_windows_drops_the_rest(workers, engine: Engine) -> None:
    kal = "Europe/Kaliningrad"
    program, ids = bulk_members(engine, 4, time_zone=lambda i: kal)
    cid = make_campaign(engine, program, send_window={"from": "10:00", "to": "12:00"})
    async with workers(engine=engine) as rig:
        day = (await rig.now()).astimezone(UTC).date() + timedelta(days=1)
        start = datetime.combine(day, time(0, 30), UTC)
        handle = await rig.start(cid, start_at=start.isoformat(), page_size=4)
        await rig.env.sleep(start - await rig.now() + timedelta(minutes=5))
        await wait_for_progress(handle, lambda p: p.pending.get("outside_window") == 4, what="deferred")
        await handle.signal(BroadcastCampaign.set_end, (start + timedelta(hours=1)).isoformat())
        result: Progress = await handle.result()
    assert rig.smtp.recipients() == []
    assert {(r.status, r.reason) for r in deliveries(engine, cid)} == {("suppressed", "campaign_ended")}
    assert result.counts.reasons == {"campaign_ended": 4}
