"""The same thing asked for twice at once, and a campaign paused and resumed over and over while it sends.

Real workflows and activities on the time-skipping server, a real SQLite file, the fault SMTP server on
127.0.0.1 counting what each address received.

- the same event posted twice (eight times), concurrently, through the HTTP API → one reaction: one
  delivery row, one message (storing it once is tests/api/test_events_api.py::
  test_concurrent_posts_of_the_same_event_store_one_row; this follows it to the member's inbox);
- the same campaign launched twice concurrently, as two API processes would (each its own database engine,
  its own Temporal connection) → one campaign row, one workflow run, each member one message;
- pause/resume ten times while pages are being sent, through the same call the API, the CLI and the
  dashboard make (app.campaigns.signal) → no message twice (the failure class of listmonk #2070 and
  Mautic #7226, where resuming restarted sending from a stale offset). The gated version with four cycles,
  each pause landing on a page held open: tests/workflows/test_broadcast.py::
  test_repeated_pause_resume_cycles_send_each_member_exactly_once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

import app.campaigns as campaigns_service
from app.api.main import create_app
from app.campaigns import launch
from app.errors import Conflict
from app.keys import create_key
from app.settings import Settings
from app.worker import stored_renderer
from campaigns.spec import parse_spec
from storage.db import make_engine
from storage.tables import Campaign, Delivery, Event, Role
from tests.factories import campaign_spec, make_campaign
from tests.faults.fake_smtp import FaultySmtp
from tests.workflows.conftest import (
    bulk_members,
    campaign_row,
    deliveries,
    email,
    settle,
    wait_for,
    wait_for_progress,
)
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput, Progress, RunState, TriggeredInput
from workflows.triggered import TriggeredCampaign

pytestmark = pytest.mark.asyncio(loop_scope="session")


def assert_adds_up(result: Progress, audience: int) -> None:
    c = result.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience == audience, c


# --- the same event, concurrently -------------------------------------------------------------------


async def test_the_same_event_posted_concurrently_gets_one_reaction(
        workers: Any, engine: Engine, smtp_server: FaultySmtp, tmp_path: Path) -> None:
    program, (m1, _) = bulk_members(engine, 2)
    cid = make_campaign(engine, program, key="thanks", kind="triggered", template="thank_you",
                        trigger={"event": "purchase"})
    api = create_app(Settings(_env_file=None, var_dir=tmp_path), engine=engine)  # type: ignore[call-arg]
    key = create_key(engine=engine, role=Role.core)
    at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    event = {"id": "receipt-77", "type": "purchase", "member": "M000001", "occurred_at": at,
             "payload": {"amount": 1200, "currency": "EUR"}}
    async with workers(engine=engine) as rig:
        handle = await rig.start_workflow(TriggeredCampaign.run, TriggeredInput(campaign_id=cid,
                                                                                poll_seconds=30 * 86400.0))
        await wait_for_progress(handle, lambda p: p.run_rounds >= 1, query=TriggeredCampaign.progress,
                                what="the first round")
        await settle(handle)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://clarion",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            posts = [client.post("/api/v1/events", params={"program": "shop"}, json=event) for _ in range(8)]
            answers = await asyncio.gather(*posts, handle.signal(TriggeredCampaign.wake))
        assert [a.status_code for a in answers[:8]] == [202] * 8
        assert sorted(a.json()["duplicate"] for a in answers[:8]) == [False] + [True] * 7
        with Session(engine) as s:
            event_id = s.scalar(select(Event.id).where(Event.source_event_id == "receipt-77"))
        await handle.signal(TriggeredCampaign.wake)
        await wait_for_progress(handle, lambda p: p.cursor >= (event_id or 0), query=TriggeredCampaign.progress,
                                what="the event examined")
        await wait_for(lambda: smtp_server.recipients() == [email(1)], what="the reaction")
        await settle(handle)
        await handle.signal(TriggeredCampaign.wake)   # another round: nothing new
        await settle(handle)
        await handle.signal(TriggeredCampaign.cancel)
        await rig.finish(handle)
    rows = deliveries(engine, cid)
    assert [(r.member_id, r.occurrence, r.status) for r in rows] == [(m1, "receipt-77", "sent")]
    assert smtp_server.received() == Counter({email(1): 1})


# --- the same campaign, launched twice at once --------------------------------------------------------


def _launch_in_thread(target: str, url: str, settings: Settings, barrier: threading.Barrier,
                      out: list[Any]) -> None:
    """One API process's launch: its own engine and Temporal connection, in its own thread and loop."""
    async def go() -> Any:
        client = await Client.connect(target)
        engine = make_engine(url)
        try:
            return await launch(engine=engine, client=client, settings=settings,
                                spec=parse_spec(campaign_spec(key="twice")),
                                renderer=stored_renderer(engine, settings))
        finally:
            engine.dispose()

    try:
        barrier.wait(10)
        out.append(asyncio.run(go()))
    except Exception as exc:  # noqa: BLE001 - the test reports it
        out.append(exc)


async def test_the_same_campaign_launched_twice_at_once_is_one_run(
        workers: Any, engine: Engine, db_url: str, smtp_server: FaultySmtp, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bulk_members(engine, 30)
    # both launches have looked for the campaign row, found none, and are about to write it: the race two
    # API processes (or two marketers' clicks) run into. Forced: neither writes before both have looked.
    both_looked = threading.Barrier(2)
    real_scope = campaigns_service.session_scope

    @contextmanager
    def racing_scope(eng: Engine) -> Iterator[Any]:
        with real_scope(eng) as s:
            real_add = s.add

            def add(obj: Any, *args: Any, **kw: Any) -> None:
                if isinstance(obj, Campaign):
                    try:
                        both_looked.wait(5)
                    except threading.BrokenBarrierError:    # the other one found the row: no race this time
                        pass
                real_add(obj, *args, **kw)

            s.add = add  # type: ignore[method-assign]
            yield s

    monkeypatch.setattr(campaigns_service, "session_scope", racing_scope)
    async with workers(engine=engine) as rig:
        settings = Settings(_env_file=None, var_dir=tmp_path, database_url=db_url,  # type: ignore[call-arg]
                            temporal_task_queue=rig.task_queue, page_size=10)
        target = rig.client.service_client.config.target_host
        start, out = threading.Barrier(2), []
        threads = [threading.Thread(target=_launch_in_thread, args=(target, db_url, settings, start, out))
                   for _ in range(2)]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join(60) for t in threads])
        errors = [o for o in out if isinstance(o, Exception)]
        assert not errors, errors
        assert len(out) == 2 and out[0].workflow_id == out[1].workflow_id
        monkeypatch.setattr(campaigns_service, "session_scope", real_scope)
        handle = rig.client.get_workflow_handle_for(BroadcastCampaign.run, out[0].workflow_id)
        result = await rig.finish(handle)
        again = None
        try:
            await launch(engine=engine, client=rig.client, settings=settings, spec=parse_spec(campaign_spec(key="twice")),
                         renderer=stored_renderer(engine, settings))
        except Conflict as exc:
            again = exc
    with Session(engine) as s:
        [cid] = s.scalars(select(Campaign.id).where(Campaign.key == "twice")).all()        # one row
        per_member = set(s.scalars(select(func.count()).select_from(Delivery).where(Delivery.campaign_id == cid)
                                   .group_by(Delivery.member_id)))
    assert result.state == RunState.completed and result.counts.sent == 30
    assert per_member == {1} and smtp_server.received() == Counter({email(i): 1 for i in range(1, 31)})
    assert again is not None and "already ran" in str(again)       # and after it ran: not again
    assert campaign_row(engine, cid).status == "completed"


# --- pause / resume, ten times, while sending -----------------------------------------------------------


async def test_pausing_and_resuming_ten_times_while_sending_sends_nobody_twice(
        workers: Any, engine: Engine, smtp_server: FaultySmtp, tmp_path: Path) -> None:
    n = 300                                       # a cycle lets up to two pages (20) finish: 10 cycles fit
    program, _ = bulk_members(engine, n)
    cid = make_campaign(engine, program, key="toggled")
    smtp_server.pace(0.01)                        # ~100 messages/s over 4 connections: the send lasts a while
    async with workers(engine=engine) as rig:
        handle = await rig.client.start_workflow(
            BroadcastCampaign.run, BroadcastInput(campaign_id=cid, page_size=10, concurrency=2),
            id=campaign_row(engine, cid).workflow_id, task_queue=rig.task_queue)     # as launch names it
        seen = 0
        for cycle in range(10):
            await wait_for(lambda s=seen: len(smtp_server.recipients()) > s + 2, what=f"sending (cycle {cycle})")
            await campaigns_service.signal(engine=engine, client=rig.client, program="shop", key="toggled", action="pause")
            await asyncio.sleep(0.05 * (cycle % 3))
            await campaigns_service.signal(engine=engine, client=rig.client, program="shop", key="toggled", action="resume")
            seen = len(smtp_server.recipients())
        assert seen < n, "the campaign ended before the tenth resume: make it slower"
        result = await rig.finish(handle)
    got = smtp_server.received()
    assert result.state == RunState.completed
    assert got == Counter({email(i): 1 for i in range(1, n + 1)}), {a: c for a, c in got.items() if c != 1}
    assert set(smtp_server.message_ids().values()) == {1}
    assert {r.status for r in deliveries(engine, cid)} == {"sent"} and len(deliveries(engine, cid)) == n
    assert result.counts.sent == n
    assert_adds_up(result, n)
