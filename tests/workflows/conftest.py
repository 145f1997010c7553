"""A shared harness for the campaign-rule workflow tests: real workflows and activities on Temporal's
time-skipping server, a real database (SQLite file, or PostgreSQL), the fake SMTP server on 127.0.0.1.

``async with workers(engine=...) as h`` runs one or more workers on one task queue (each with its own
DeliveryActivities and, when asked, its own engine: separate processes in all but name). Helpers seed
members in bulk and steer the rows a marketer or the loyalty core would change (program settings,
budget limit, time zones, events, responses).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from app.settings import Settings
from app.worker import WORKFLOWS, activity_list, delivery_activities
from consent import ledger
from members.service import ensure_program
from storage.db import make_engine, session_scope
from storage.tables import (
    Campaign,
    ChannelName,
    ConsentAction,
    ConsentSource,
    Delivery,
    Event,
    Member,
    Program,
    Response,
    utcnow,
)
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput, Progress

# --- time ---------------------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll (real time) until predicate() is truthy; the time-skipping clock is not involved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_progress(handle: WorkflowHandle, predicate: Callable[[Progress], bool], *,
                            query: Any = BroadcastCampaign.progress, timeout: float = 10.0,
                            what: str = "progress") -> Progress:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    p = None
    while True:
        try:
            p = await handle.query(query)
            if predicate(p):
                return p
        except Exception:  # noqa: BLE001 - the first workflow task may not have run yet
            pass
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last progress {p}")
        await asyncio.sleep(0.02)


_WORKFLOW_TASK = (EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                  EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)


async def settle(handle: WorkflowHandle, *, timeout: float = 10.0) -> None:
    """Wait (real time) until the workflow is idle on a timer: its last history event is a timer started
    and no activity is pending. Signal a workflow only when it has settled: the time-skipping server
    strands a run whose workflow task cancels a timer that fired while the task was with the worker
    ("invalid history builder state for action", temporalio/sdk-java#3088), which a signal racing a
    due timer does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while True:
        desc = await handle.describe()
        if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
            return
        history = await handle.fetch_history()
        types = [e.event_type for e in history.events]
        last = next((t for t in reversed(types) if t not in _WORKFLOW_TASK), None)
        if (types and types[-1] in (EventType.EVENT_TYPE_TIMER_STARTED, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
                and last == EventType.EVENT_TYPE_TIMER_STARTED and not desc.raw_description.pending_activities):
            return
        if loop.time() > deadline:
            tail = [EventType.Name(e.event_type) for e in history.events[-8:]]
            raise AssertionError(f"the workflow did not settle on a timer; last events {tail}")
        await asyncio.sleep(0.02)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive (they are UTC)."""
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=UTC)


# --- the harness --------------------------------------------------------------------------------


@dataclass
class Rig:
    env: WorkflowEnvironment
    client: Client
    engine: Engine
    smtp: Any
    acts: list[DeliveryActivities]
    task_queue: str

    async def now(self) -> datetime:
        return await self.env.get_current_time()

    async def start(self, campaign_id: int, **kw: Any) -> WorkflowHandle:
        return await self.client.start_workflow(
            BroadcastCampaign.run, BroadcastInput(campaign_id=campaign_id, **kw),
            id=f"bc-{uuid.uuid4().hex}", task_queue=self.task_queue)

    async def start_workflow(self, run: Any, arg: Any) -> WorkflowHandle:
        return await self.client.start_workflow(run, arg, id=f"wf-{uuid.uuid4().hex}", task_queue=self.task_queue)

    async def finish(self, handle: WorkflowHandle) -> Any:
        """The workflow's result with the clock held: only the activities' real time passes, no timer
        fires by itself. (``handle.result()`` lets the server skip time while it waits, and when the
        workflow ends meanwhile the clock may leap to the next timer on the server, even a finished
        workflow's 10-year default run timeout: fine at the end of a test, not between two campaigns
        whose timing matters.)"""
        with self.env.auto_time_skipping_disabled():
            return await handle.result()

    def sent_to(self) -> list[str]:
        rcpts = self.smtp.recipients()
        dups = {a: c for a, c in Counter(rcpts).items() if c > 1}
        assert not dups, f"messages sent more than once: {dups}"
        return rcpts


@pytest.fixture
def workers(time_skipping_env: WorkflowEnvironment, smtp_server: Any, tmp_path: Path):
    """``async with workers(engine=e, url=u, n=2, chunk=3) as rig``: n workers on one task queue, each
    with its own activities (of ``cls``); with ``url`` each also gets its own engine (the first uses
    ``engine``)."""

    @asynccontextmanager
    async def _run(*, engine: Engine, url: str | None = None, n: int = 1, chunk: int | None = None,
                   max_concurrent_activities: int | None = None,
                   cls: type[DeliveryActivities] = DeliveryActivities) -> AsyncIterator[Rig]:
        settings = Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                            database_url=url or str(engine.url))
        queue = f"tq-{uuid.uuid4().hex}"
        client = time_skipping_env.client
        acts: list[DeliveryActivities] = []
        async with AsyncExitStack() as stack:
            for i in range(n):
                eng = engine if i == 0 or url is None else make_engine(url)
                if eng is not engine:
                    stack.callback(eng.dispose)  # after its worker has stopped
                a = delivery_activities(settings, engine=eng, cls=cls)
                if chunk is not None:
                    a._chunk = chunk
                acts.append(a)
                stack.push_async_callback(a.aclose)
                kw = {} if max_concurrent_activities is None else \
                    {"max_concurrent_activities": max_concurrent_activities}
                # the SDK refuses two workers of one task queue in one runtime: the others get their own
                # runtime and connection, as a second process would
                wclient = client if i == 0 else await Client.connect(
                    client.service_client.config.target_host, namespace=client.namespace,
                    runtime=Runtime(telemetry=TelemetryConfig()))
                await stack.enter_async_context(Worker(
                    wclient, task_queue=queue, workflows=WORKFLOWS, activities=activity_list(a), **kw))
            yield Rig(time_skipping_env, client, engine, smtp_server, acts, queue)

    return _run


# --- rows ---------------------------------------------------------------------------------------


def email(i: int) -> str:
    return f"m{i}@test.example"


def bulk_members(engine: Engine, n: int, *, program: str = "shop", consent: Callable[[int], bool] = lambda i: True,
                 time_zone: Callable[[int], str | None] = lambda i: None,
                 attributes: Callable[[int], dict[str, Any]] = lambda i: {}, start: int = 1,
                 topic: str = "promotions") -> tuple[int, list[int]]:
    """n members m{i}@test.example in one INSERT; members with ``consent(i)`` opt in to email/``topic``.
    Returns the program id and the member ids in the order of i."""
    prog = ensure_program(engine=engine, key=program, name="Shop & Co", default_locale="en")
    now = utcnow()
    rows = [{"program_id": prog.id, "external_id": f"M{i:06d}", "kind": "individual", "first_name": f"Name{i}",
             "locale": "en", "time_zone": time_zone(i), "email": email(i), "attributes": attributes(i),
             "created_at": now, "updated_at": now} for i in range(start, start + n)]
    with session_scope(engine) as s:
        s.execute(insert(Member.__table__), rows)
        ids = dict(s.execute(select(Member.external_id, Member.id).where(
            Member.program_id == prog.id)).all())
        ordered = [ids[f"M{i:06d}"] for i in range(start, start + n)]
        ledger.record(session=s, program_id=prog.id or 0, acts=[
            ledger.ConsentAct(member_id=mid, channel=ChannelName.email, topic=topic,
                              action=ConsentAction.granted, source=ConsentSource.import_)
            for i, mid in zip(range(start, start + n), ordered, strict=True) if consent(i)])
    return prog.id or 0, ordered


def set_program_settings(engine: Engine, program_id: int, settings: dict[str, Any]) -> None:
    with session_scope(engine) as s:
        s.execute(update(Program).where(Program.id == program_id).values(settings=settings))  # type: ignore[arg-type]


def set_budget(engine: Engine, campaign_id: int, limit: Decimal | str | None) -> None:
    """What app.campaigns.set_budget writes (the signal is the caller's)."""
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == campaign_id)  # type: ignore[arg-type]
                  .values(budget_limit=None if limit is None else Decimal(limit)))


def campaign_row(engine: Engine, campaign_id: int) -> Campaign:
    with Session(engine) as s:
        row = s.get(Campaign, campaign_id)
        assert row is not None
        return row


def deliveries(engine: Engine, campaign_id: int, *, step: str | None = None) -> list[Delivery]:
    with Session(engine) as s:
        q = select(Delivery).where(Delivery.campaign_id == campaign_id)
        if step is not None:
            q = q.where(Delivery.step == step)
        return list(s.scalars(q.order_by(Delivery.member_id, Delivery.id)))


def by_member(rows: Sequence[Delivery]) -> dict[int, Delivery]:
    out: dict[int, Delivery] = {}
    for r in rows:
        assert r.member_id not in out, f"two delivery rows for member {r.member_id}"
        out[r.member_id] = r
    return out


def emails_of(engine: Engine, member_ids: Sequence[int]) -> set[str]:
    with Session(engine) as s:
        return set(s.scalars(select(Member.email).where(Member.id.in_(list(member_ids)))))  # type: ignore[union-attr, arg-type]


def add_responses(engine: Engine, delivery_ids: Sequence[int], kind: str, at: datetime) -> None:
    with session_scope(engine) as s:
        s.execute(insert(Response.__table__), [
            {"delivery_id": d, "kind": kind, "at": at, "provider_event_id": f"{kind}-{d}-{uuid.uuid4().hex[:6]}"}
            for d in delivery_ids])


def add_events(engine: Engine, program_id: int, events: Sequence[tuple[str, int, str, datetime, dict[str, Any]]],
               ) -> int:
    """Store events (source id, member id, type, occurred_at, payload) as the ingest path does: once per
    (program, source id); ``received_at`` is the real clock, as the API writes it. Returns how many were new."""
    from storage.db import insert_ignore

    rows = [{"program_id": program_id, "source_event_id": sid, "member_id": mid, "type": typ,
             "occurred_at": at.astimezone(UTC), "payload": payload,
             "received_at": utcnow() - timedelta(minutes=1)} for sid, mid, typ, at, payload in events]
    with session_scope(engine) as s:
        return len(s.execute(insert_ignore(s, Event.__table__, ["program_id", "source_event_id"])
                             .returning(Event.__table__.c.id), rows).all())
