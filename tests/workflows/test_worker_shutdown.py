"""A worker that is told to stop (SIGTERM, a deploy) lets the page it is sending finish within
CLARION_WORKER_SHUTDOWN_S instead of cancelling it half-way (app.worker.build_worker)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.delivery import DeliveryActivities
from app.settings import Settings
from app.worker import build_worker, delivery_activities
from tests.factories import make_campaign
from tests.workflows.conftest import bulk_members, deliveries
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BatchResult, BroadcastInput, DeliverBatch

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SlowPage(DeliveryActivities):
    """The real activity, entered (and announced) a moment before it starts sending."""

    started: asyncio.Event

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:  # type: ignore[override]
        self.started.set()
        await asyncio.sleep(0.5)
        return await super().deliver_batch(inp)


@pytest.mark.parametrize(("grace_s", "finished"), [(30.0, True), (0.0, False)])
async def test_a_stopping_worker_lets_the_page_in_flight_finish(
        spent_time_skipping_env: WorkflowEnvironment, engine: Engine, smtp_server: Any, tmp_path: Path,
        grace_s: float, finished: bool) -> None:
    # spent: the run is left on a task queue nobody polls any more (terminated, its cancelled page's retry
    # pending), which kept the next test's clock skip (test_confirmation_sender's sleep(61)) from returning
    time_skipping_env = spent_time_skipping_env
    queue = f"tq-{uuid.uuid4().hex}"
    settings = Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                        database_url=str(engine.url), temporal_task_queue=queue, worker_shutdown_s=grace_s)
    program, _ = bulk_members(engine, 3)
    cid = make_campaign(engine, program)
    acts = delivery_activities(settings, engine=engine, cls=SlowPage)
    acts.started = asyncio.Event()
    handle = None
    try:
        async with build_worker(time_skipping_env.client, settings, acts):
            handle = await time_skipping_env.client.start_workflow(
                BroadcastCampaign.run, BroadcastInput(campaign_id=cid), id=f"bc-{uuid.uuid4().hex}", task_queue=queue)
            await asyncio.wait_for(acts.started.wait(), 15)
        # the worker has stopped: with a grace period its page went out whole, without one it was cancelled
        sent = sorted(r.status for r in deliveries(engine, cid))
        assert (sent == ["sent"] * 3) is finished, sent
        assert len(smtp_server.recipients()) == (3 if finished else 0)
    finally:
        await acts.aclose()
        if handle is not None:                  # the worker is gone: end the run (it may have ended already)
            with contextlib.suppress(RPCError):
                await handle.terminate()
