"""BroadcastCampaign end to end on Temporal's time-skipping test server.

The REAL workflow and the REAL DeliveryActivities run against a real SQLite file and a fake SMTP
server (aiosmtpd on 127.0.0.1). Assertions are on what the SMTP server received and on the
``delivery`` / ``campaign`` tables, never on mocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from app.settings import Settings
from app.worker import WORKFLOWS, activity_list, delivery_activities
from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.db import session_scope
from storage.tables import Campaign, ChannelName, ConsentAction, ConsentSource, ConsentState, Delivery, Member
from tests.factories import make_campaign, seed_members
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput, DeliverBatch, Progress, RunState

pytestmark = pytest.mark.asyncio(loop_scope="session")

# --- helpers ------------------------------------------------------------------------------------


def email(i: int) -> str:
    return f"m{i}@test.example"


def consenting(n: int, every: int) -> set[str]:
    """The addresses seed_members(n, consent_every=every) gave an email/promotions opt-in."""
    return {email(i) for i in range(1, n + 1) if i % every == 0}


def deliveries(engine: Engine, campaign_id: int) -> list[Delivery]:
    with Session(engine) as s:
        return list(s.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)))


def rows_by_email(engine: Engine, campaign_id: int) -> dict[str, Delivery]:
    with Session(engine) as s:
        pairs = s.execute(select(Member.email, Delivery).join(Member, Member.id == Delivery.member_id)
                          .where(Delivery.campaign_id == campaign_id)).all()
    out: dict[str, Delivery] = {}
    for addr, row in pairs:
        assert addr not in out, f"two delivery rows for {addr}"
        out[addr] = row
    return out


def campaign_status(engine: Engine, campaign_id: int) -> str:
    with Session(engine) as s:
        row = s.get(Campaign, campaign_id)
        assert row is not None
        return row.status


def member_ids(engine: Engine, addresses: list[str]) -> list[int]:
    with Session(engine) as s:
        return list(s.scalars(select(Member.id).where(Member.email.in_(addresses))))  # type: ignore[union-attr]


def revoke(engine: Engine, program_id: int, ids: list[int], *, topic: str = "promotions") -> None:
    with session_scope(engine) as s:
        ledger.record(session=s, program_id=program_id, acts=[
            ledger.ConsentAct(member_id=m, channel=ChannelName.email, topic=topic,
                              action=ConsentAction.revoked, source=ConsentSource.web)
            for m in ids
        ])


def assert_no_duplicates(smtp: Any) -> list[str]:
    rcpts = smtp.recipients()
    dups = {a: c for a, c in Counter(rcpts).items() if c > 1}
    assert not dups, f"messages sent more than once: {dups}"
    return rcpts


def assert_counts_add_up(p: Progress) -> None:
    c = p.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience, c


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll (real time) until predicate() is truthy; the time-skipping clock is not involved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_query(handle: WorkflowHandle, predicate: Callable[[Progress], bool], *,
                         timeout: float = 10.0, what: str = "progress") -> Progress:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            p = await handle.query(BroadcastCampaign.progress)
            if predicate(p):
                return p
        except Exception:  # noqa: BLE001 - the first workflow task may not have run yet
            p = None
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last progress {p}")
        await asyncio.sleep(0.02)


class Gate:
    """Lets a test hold deliver_batch calls at their start and release them (asyncio, same loop)."""

    def __init__(self, open_: bool = False) -> None:
        self.opened = asyncio.Event()
        if open_:
            self.opened.set()
        self.entered = 0

    async def pass_through(self) -> None:
        self.entered += 1
        await self.opened.wait()

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.clear()


class GatedActivities(DeliveryActivities):
    gate: Gate

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch):  # type: ignore[override]  # noqa: ANN201
        await self.gate.pass_through()
        return await super().deliver_batch(inp)


@dataclass
class Harness:
    env: WorkflowEnvironment
    client: Client
    engine: Engine
    smtp: Any
    acts: DeliveryActivities
    task_queue: str

    async def start(self, campaign_id: int, **kw: Any) -> WorkflowHandle:
        return await self.client.start_workflow(
            BroadcastCampaign.run, BroadcastInput(campaign_id=campaign_id, **kw),
            id=f"bc-{uuid.uuid4().hex}", task_queue=self.task_queue)


@pytest.fixture
def settings(tmp_path: Path, smtp_server: Any, db_url: str) -> Settings:
    return Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                    database_url=db_url)


@pytest.fixture
def run_broadcast(time_skipping_env: WorkflowEnvironment, settings: Settings, engine: Engine,
                  smtp_server: Any):
    """``async with run_broadcast(cls=..., chunk=...) as h``: a worker with real activities."""

    @asynccontextmanager
    async def _run(cls: type[DeliveryActivities] = DeliveryActivities, chunk: int | None = None,
                   **attrs: Any) -> AsyncIterator[Harness]:
        acts = delivery_activities(settings, engine=engine, cls=cls)
        if chunk is not None:
            acts._chunk = chunk
        for k, v in attrs.items():
            setattr(acts, k, v)
        queue = f"tq-{uuid.uuid4().hex}"
        client = time_skipping_env.client
        try:
            async with Worker(client, task_queue=queue, workflows=WORKFLOWS,
                              activities=activity_list(acts)):
                yield Harness(time_skipping_env, client, engine, smtp_server, acts, queue)
        finally:
            await acts.aclose()

    return _run


# --- 1. completes -------------------------------------------------------------------------------


async def test_broadcast_mails_each_consenting_member_once_and_suppresses_the_rest(
        run_broadcast, engine: Engine) -> None:
    n, every = 120, 3
    program = seed_members(engine, n, consent_every=every)
    cid = make_campaign(engine, program)
    async with run_broadcast() as h:
        handle = await h.start(cid, page_size=25, concurrency=2)
        result: Progress = await handle.result()

    rcpts = assert_no_duplicates(h.smtp)
    expected = consenting(n, every)
    assert set(rcpts) == expected

    rows = rows_by_email(engine, cid)
    assert len(rows) == n
    for addr, row in rows.items():
        if addr in expected:
            assert (row.status, row.reason) == ("sent", None), addr
            assert row.sent_at is not None
        else:
            assert (row.status, row.reason) == ("suppressed", "no_consent"), addr

    assert result.state == RunState.completed
    assert result.total == n
    assert result.counts.audience == n
    assert result.counts.sent == len(expected)
    assert result.counts.suppressed == n - len(expected)
    assert result.counts.failed == result.counts.in_doubt == result.counts.already_done == 0
    assert_counts_add_up(result)
    assert campaign_status(engine, cid) == "completed"


# --- 2. pause / resume --------------------------------------------------------------------------


async def test_pause_stops_new_pages_until_resume_and_sends_no_duplicates(
        run_broadcast, engine: Engine) -> None:
    n = 200
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=2)
        await wait_for(lambda: gate.entered >= 1, what="the first page to start")
        await handle.signal(BroadcastCampaign.pause)
        p = await wait_for_query(handle, lambda p: p.state == RunState.paused, what="paused")
        assert p.state == RunState.paused
        gate.open()  # the page in flight finishes; no new one may start

        await wait_for(lambda: campaign_status(engine, cid) == "paused", what="campaign row paused")
        sent_while_paused = len(h.smtp.recipients())
        assert 0 < sent_while_paused < n
        await h.env.sleep(timedelta(hours=6))  # time-skipping: hours pass, the workflow stays parked
        await asyncio.sleep(0.3)               # and a little real time for any stray activity
        assert len(h.smtp.recipients()) == sent_while_paused
        assert (await handle.query(BroadcastCampaign.progress)).state == RunState.paused
        assert campaign_status(engine, cid) == "paused"

        await handle.signal(BroadcastCampaign.resume)
        result: Progress = await handle.result()

    assert result.state == RunState.completed
    rcpts = assert_no_duplicates(h.smtp)
    assert set(rcpts) == consenting(n, 1)
    assert result.counts.sent == n
    assert_counts_add_up(result)
    assert {r.status for r in deliveries(engine, cid)} == {"sent"}
    assert campaign_status(engine, cid) == "completed"


async def test_repeated_pause_resume_cycles_send_each_member_exactly_once(
        run_broadcast, engine: Engine) -> None:
    n = 150
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=1)
        counts_seen = []
        for cycle in range(4):
            await wait_for(lambda c=cycle: gate.entered >= c + 1, what=f"a page to start (cycle {cycle})")
            await handle.signal(BroadcastCampaign.pause)
            await wait_for_query(handle, lambda p: p.state == RunState.paused, what="paused")
            gate.open()
            await wait_for(lambda: campaign_status(engine, cid) == "paused", what="campaign row paused")
            before = len(h.smtp.recipients())
            gate.close()  # the next page (after resume) waits again
            await h.env.sleep(timedelta(minutes=30))
            assert len(h.smtp.recipients()) == before
            counts_seen.append(before)
            await handle.signal(BroadcastCampaign.resume)
            await wait_for(lambda: campaign_status(engine, cid) == "running", what="campaign row running")
        gate.open()
        result: Progress = await handle.result()

    assert counts_seen == sorted(counts_seen) and len(set(counts_seen)) == len(counts_seen), counts_seen
    rcpts = assert_no_duplicates(h.smtp)
    assert set(rcpts) == consenting(n, 1)
    assert result.state == RunState.completed
    assert result.counts.sent == n
    assert_counts_add_up(result)
    assert len(deliveries(engine, cid)) == n


# --- 3. cancel ----------------------------------------------------------------------------------


async def test_cancel_mid_way_stops_the_broadcast_without_duplicates(run_broadcast, engine: Engine) -> None:
    n = 200
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=2)
        await wait_for(lambda: gate.entered >= 1, what="the first page to start")
        await handle.signal(BroadcastCampaign.cancel)
        gate.open()
        result: Progress = await handle.result()

    assert result.state == RunState.cancelled
    assert campaign_status(engine, cid) == "cancelled"
    rcpts = assert_no_duplicates(h.smtp)
    assert 0 < len(rcpts) < n
    assert result.counts.sent == len(rcpts)
    rows = deliveries(engine, cid)
    assert len(rows) < n
    assert sum(r.status == "sent" for r in rows) == len(rcpts)
    with Session(engine) as s:
        row = s.get(Campaign, cid)
        assert row is not None and row.finished_at is not None


async def test_cancel_while_paused_ends_the_broadcast_without_sending_more(
        run_broadcast, engine: Engine) -> None:
    n = 100
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=1)
        await wait_for(lambda: gate.entered >= 1, what="the first page to start")
        await handle.signal(BroadcastCampaign.pause)
        gate.open()
        await wait_for(lambda: campaign_status(engine, cid) == "paused", what="campaign row paused")
        sent = len(h.smtp.recipients())
        await handle.signal(BroadcastCampaign.cancel)
        result: Progress = await handle.result()
    assert result.state == RunState.cancelled
    assert campaign_status(engine, cid) == "cancelled"
    assert len(assert_no_duplicates(h.smtp)) == sent == 10
    assert len(deliveries(engine, cid)) == 10


async def test_cancel_before_the_start_time_sends_nothing(run_broadcast, engine: Engine) -> None:
    program = seed_members(engine, 30)
    cid = make_campaign(engine, program)
    async with run_broadcast() as h:
        start_at = (await h.env.get_current_time()) + timedelta(days=2)
        handle = await h.start(cid, start_at=start_at.isoformat(), page_size=10)
        await wait_for_query(handle, lambda p: p.state == RunState.waiting, what="waiting")
        await handle.signal(BroadcastCampaign.cancel)
        result: Progress = await handle.result()
    assert result.state == RunState.cancelled
    assert h.smtp.recipients() == []
    assert deliveries(engine, cid) == []
    assert campaign_status(engine, cid) == "cancelled"


# --- 4. continue-as-new -------------------------------------------------------------------------


async def _continued_as_new(client: Client, workflow_id: str, run_id: str) -> bool:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
               for e in history.events)


async def test_continue_as_new_carries_cursor_and_counts_across_runs(run_broadcast, engine: Engine) -> None:
    n, every = 60, 2
    program = seed_members(engine, n, consent_every=every)
    cid = make_campaign(engine, program)
    async with run_broadcast() as h:
        handle = await h.start(cid, page_size=10, concurrency=2, rounds_per_run=1)
        first_run = handle.first_execution_run_id or handle.result_run_id
        assert first_run
        result: Progress = await handle.result()  # follows the chain of runs
        latest = await h.client.get_workflow_handle(handle.id).describe()
        assert await _continued_as_new(h.client, handle.id, first_run)

    assert latest.run_id != first_run
    assert result.state == RunState.completed
    assert result.total == n
    assert result.counts.audience == n
    assert result.counts.sent == n // every
    assert result.counts.suppressed == n - n // every
    assert_counts_add_up(result)
    assert set(assert_no_duplicates(h.smtp)) == consenting(n, every)
    assert len(deliveries(engine, cid)) == n
    assert campaign_status(engine, cid) == "completed"


async def test_pause_survives_continue_as_new(run_broadcast, engine: Engine) -> None:
    n = 60
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=1, rounds_per_run=1)
        first_run = handle.first_execution_run_id or handle.result_run_id
        await wait_for(lambda: gate.entered >= 1, what="the first page to start")
        await handle.signal(BroadcastCampaign.pause)
        gate.open()
        await wait_for(lambda: campaign_status(engine, cid) == "paused", what="campaign row paused")
        # the paused run is a later one (the first run continued as new after its one round)
        latest = h.client.get_workflow_handle_for(BroadcastCampaign.run, handle.id)
        assert (await latest.describe()).run_id != first_run
        assert (await latest.query(BroadcastCampaign.progress)).state == RunState.paused
        sent = len(h.smtp.recipients())
        assert sent == 10
        await h.env.sleep(timedelta(hours=1))
        assert len(h.smtp.recipients()) == sent
        await latest.signal(BroadcastCampaign.resume)
        result: Progress = await latest.result()
    assert result.state == RunState.completed
    assert set(assert_no_duplicates(h.smtp)) == consenting(n, 1)
    assert_counts_add_up(result)
    assert result.counts.sent == n


async def test_cancel_received_just_before_continue_as_new_is_not_lost(
        run_broadcast, engine: Engine) -> None:
    n = 60
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    gate = Gate()
    async with run_broadcast(cls=GatedActivities, gate=gate) as h:
        handle = await h.start(cid, page_size=10, concurrency=1, rounds_per_run=1)
        await wait_for(lambda: gate.entered >= 1, what="the first page to start")
        await handle.signal(BroadcastCampaign.cancel)
        gate.open()
        result: Progress = await h.client.get_workflow_handle_for(BroadcastCampaign.run, handle.id).result()
    assert result.state == RunState.cancelled
    assert len(h.smtp.recipients()) == 10
    assert campaign_status(engine, cid) == "cancelled"


# --- 5. retries never send twice ----------------------------------------------------------------


class FailAfterFirstChunk(DeliveryActivities):
    """The first attempt of every page dies after its first chunk was sent and recorded."""

    failures = 0

    def _after_chunk(self, inp: DeliverBatch, handled: int) -> None:
        if activity.info().attempt == 1:
            type(self).failures += 1
            raise RuntimeError(f"injected crash after {handled} message(s) of page {inp.after}..{inp.upto}")


async def test_retried_page_skips_members_already_sent(run_broadcast, engine: Engine) -> None:
    n, every = 80, 2
    program = seed_members(engine, n, consent_every=every)
    cid = make_campaign(engine, program)
    FailAfterFirstChunk.failures = 0
    async with run_broadcast(cls=FailAfterFirstChunk, chunk=5) as h:
        handle = await h.start(cid, page_size=20, concurrency=2)
        result: Progress = await handle.result()

    assert FailAfterFirstChunk.failures == n // 20  # every page failed once, then succeeded
    rcpts = assert_no_duplicates(h.smtp)
    assert set(rcpts) == consenting(n, every)
    rows = rows_by_email(engine, cid)
    assert len(rows) == n
    assert Counter(r.status for r in rows.values()) == {"sent": n // every, "suppressed": n - n // every}
    assert result.state == RunState.completed
    assert result.counts.audience == n
    # the first chunk of each page (5 sent) and the page's suppressed rows were done by attempt 1
    assert result.counts.sent == n // every - 5 * (n // 20)
    assert result.counts.already_done == 5 * (n // 20) + (n - n // every)
    assert result.counts.in_doubt == 0
    assert_counts_add_up(result)


class CrashBeforeRecord(DeliveryActivities):
    """The first attempt of every page dies after sending its first chunk, before recording it."""

    crashed: set[int] = set()

    def _record(self, ctx, outcomes) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
        if activity.info().attempt == 1:
            type(self).crashed.update(o.member_id for o in outcomes)
            raise RuntimeError("injected crash between send and record")
        super()._record(ctx, outcomes)


async def test_crash_between_claim_and_record_leaves_rows_in_doubt_and_never_resends(
        run_broadcast, engine: Engine) -> None:
    n, every = 60, 1
    program = seed_members(engine, n, consent_every=every)
    cid = make_campaign(engine, program)
    CrashBeforeRecord.crashed = set()
    async with run_broadcast(cls=CrashBeforeRecord, chunk=5) as h:
        handle = await h.start(cid, page_size=20, concurrency=3)
        result: Progress = await handle.result()

    pages = n // 20
    assert len(CrashBeforeRecord.crashed) == 5 * pages
    rcpts = assert_no_duplicates(h.smtp)  # in-doubt members got their one message, not a second
    assert set(rcpts) == consenting(n, every)
    rows = deliveries(engine, cid)
    assert len(rows) == n
    in_doubt = {r.member_id for r in rows if r.status == "in_doubt"}
    assert in_doubt == CrashBeforeRecord.crashed
    assert {r.reason for r in rows if r.status == "in_doubt"} == {"interrupted"}
    assert all(r.status == "sent" for r in rows if r.member_id not in in_doubt)
    assert result.state == RunState.completed
    assert result.counts.audience == n
    assert result.counts.in_doubt == 5 * pages
    assert result.counts.sent == n - 5 * pages


async def test_counts_after_a_crash_between_claim_and_record_add_up_to_the_audience(
        run_broadcast, engine: Engine) -> None:
    n = 40
    program = seed_members(engine, n, consent_every=2)
    cid = make_campaign(engine, program)
    CrashBeforeRecord.crashed = set()
    async with run_broadcast(cls=CrashBeforeRecord, chunk=5) as h:
        handle = await h.start(cid, page_size=20, concurrency=2)
        result: Progress = await handle.result()
    assert len(CrashBeforeRecord.crashed) == 10
    assert result.counts.in_doubt == 10
    assert result.counts.already_done == n // 2  # the suppressed rows written by attempt 1, only
    assert_counts_add_up(result)


# --- 6. start in the future ---------------------------------------------------------------------


async def test_scheduled_start_sends_nothing_before_the_start_time(run_broadcast, engine: Engine) -> None:
    n, every = 40, 2
    program = seed_members(engine, n, consent_every=every)
    cid = make_campaign(engine, program)
    async with run_broadcast() as h:
        start_at = (await h.env.get_current_time()) + timedelta(days=3)
        handle = await h.start(cid, start_at=start_at.isoformat(), page_size=10, concurrency=2)
        p = await wait_for_query(handle, lambda p: p.state == RunState.waiting, what="waiting")
        assert p.total is None
        await h.env.sleep(timedelta(days=2))   # skip most of the wait: still nothing
        await asyncio.sleep(0.2)
        assert (await handle.query(BroadcastCampaign.progress)).state == RunState.waiting
        assert h.smtp.recipients() == []
        assert deliveries(engine, cid) == []
        assert campaign_status(engine, cid) == "scheduled"

        result: Progress = await handle.result()  # time skipping jumps to the start
        assert await h.env.get_current_time() >= start_at

    assert result.state == RunState.completed
    assert set(assert_no_duplicates(h.smtp)) == consenting(n, every)
    assert result.counts.sent == n // every
    assert_counts_add_up(result)
    with Session(engine) as s:
        row = s.get(Campaign, cid)
        assert row is not None and row.status == "completed" and row.started_at is not None


# --- 7. consent revoked -------------------------------------------------------------------------


async def test_member_who_revoked_before_launch_is_suppressed_as_revoked(
        run_broadcast, engine: Engine) -> None:
    n = 40
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    revoked = [email(i) for i in (3, 17, 28)]
    revoke(engine, program, member_ids(engine, revoked))
    channel_off = [email(9)]  # a channel-wide opt-out beats the topic opt-in
    revoke(engine, program, member_ids(engine, channel_off), topic=CHANNEL_WIDE)
    async with run_broadcast() as h:
        handle = await h.start(cid, page_size=10, concurrency=2)
        result: Progress = await handle.result()

    rcpts = assert_no_duplicates(h.smtp)
    assert set(rcpts) == consenting(n, 1) - set(revoked) - set(channel_off)
    rows = rows_by_email(engine, cid)
    for addr in revoked + channel_off:
        assert (rows[addr].status, rows[addr].reason) == ("suppressed", "revoked"), addr
    assert result.counts.suppressed == 4
    assert result.counts.sent == n - 4
    assert_counts_add_up(result)


class RevokeAfterPrepare(DeliveryActivities):
    """Members revoke right after the page was prepared (rows `planned`), before the chunk is claimed."""

    revoke_emails: set[str] = set()
    program_id = 0

    def _prepare(self, ctx, inp, *args):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
        counts, targets = super()._prepare(ctx, inp, *args)
        ids = [t.member_id for t in targets if t.address in self.revoke_emails]
        if ids:
            revoke(self._engine, self.program_id, ids)
        return counts, targets


async def test_consent_is_rechecked_when_a_chunk_is_claimed(run_broadcast, engine: Engine) -> None:
    n = 40
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    late = {email(i) for i in (2, 11, 25, 40)}
    async with run_broadcast(cls=RevokeAfterPrepare, chunk=5, revoke_emails=late, program_id=program) as h:
        handle = await h.start(cid, page_size=10, concurrency=2)
        result: Progress = await handle.result()

    rcpts = assert_no_duplicates(h.smtp)
    assert set(rcpts) == consenting(n, 1) - late
    rows = rows_by_email(engine, cid)
    for addr in late:
        assert (rows[addr].status, rows[addr].reason) == ("suppressed", "revoked"), addr
    assert result.counts.suppressed == len(late)
    assert result.counts.sent == n - len(late)
    assert_counts_add_up(result)


# --- 8. provider outcomes ------------------------------------------------------------------------


async def test_hard_bounce_fails_that_member_suppresses_the_address_and_spares_the_others(
        run_broadcast, engine: Engine) -> None:
    n = 30
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    async with run_broadcast() as h:
        h.smtp.refuse[email(7)] = 550
        result: Progress = await (await h.start(cid, page_size=10, concurrency=2)).result()

    assert sorted(assert_no_duplicates(h.smtp)) == sorted(email(i) for i in range(1, n + 1) if i != 7)
    row = rows_by_email(engine, cid)[email(7)]
    assert (row.status, row.reason, row.error_code) == ("failed", "permanent", "550")
    assert result.counts.failed == 1 and result.counts.sent == n - 1
    with Session(engine) as s:
        state = s.get(ConsentState, (row.member_id, "email", "*"))
    assert state is not None and state.status == "suppressed"


async def test_deferred_recipient_is_retried_then_failed_without_resending_the_others(
        run_broadcast, engine: Engine) -> None:
    n = 20
    program = seed_members(engine, n)
    cid = make_campaign(engine, program)
    async with run_broadcast(_final_attempt=3) as h:
        h.smtp.refuse[email(4)] = 451
        result: Progress = await (await h.start(cid, page_size=10, concurrency=2)).result()

    assert sorted(assert_no_duplicates(h.smtp)) == sorted(email(i) for i in range(1, n + 1) if i != 4)
    row = rows_by_email(engine, cid)[email(4)]
    assert (row.status, row.reason, row.error_code) == ("failed", "transient", "451")
    assert result.counts.failed == 1
