"""OpenTelemetry tracing through temporalio's TracingInterceptor, wired by app.observability: a worker
built by app.worker.build_worker with tracing on, and a campaign started by a traced client, give one
trace (start → workflow → delivery activities) to the process's tracer provider; spans are read back
from an in-memory exporter (opentelemetry-sdk comes with the test extra through `clarion[otel]`)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from app.observability import TracingUnavailable, configure_tracing, traced
from app.settings import Settings
from app.worker import build_worker, delivery_activities
from tests.factories import make_campaign
from tests.workflows.conftest import bulk_members
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once per process) with an in-memory exporter added."""
    found = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(found))
    return found


async def run_campaign(env: WorkflowEnvironment, engine: Engine, smtp: Any, tmp_path: Path, *,
                       tracing: bool) -> None:
    queue = f"tq-{uuid.uuid4().hex}"
    settings = Settings(var_dir=tmp_path, smtp_host=smtp.host, smtp_port=smtp.port, database_url=str(engine.url),
                        temporal_task_queue=queue, otel_enabled=tracing)
    configure_tracing(settings, "worker")        # keeps the provider already set (the exporter's)
    program, _ = bulk_members(engine, 2)
    cid = make_campaign(engine, program)
    acts = delivery_activities(settings, engine=engine)
    try:
        async with build_worker(env.client, settings, acts):
            client = traced(env.client, settings)
            handle = await client.start_workflow(BroadcastCampaign.run, BroadcastInput(campaign_id=cid),
                                                 id=f"bc-{uuid.uuid4().hex}", task_queue=queue)
            with env.auto_time_skipping_disabled():
                result = await handle.result()
    finally:
        await acts.aclose()
    assert result.counts.sent == 2


async def test_with_tracing_on_a_campaign_is_one_trace_from_its_start_to_its_deliveries(
        exporter: InMemorySpanExporter, time_skipping_env: WorkflowEnvironment, engine: Engine, smtp_server: Any,
        tmp_path: Path) -> None:
    exporter.clear()
    await run_campaign(time_skipping_env, engine, smtp_server, tmp_path, tracing=True)
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    for expected in ("StartWorkflow:BroadcastCampaign", "RunWorkflow:BroadcastCampaign",
                     "StartActivity:deliver_batch", "RunActivity:deliver_batch"):
        assert expected in names, sorted(names)
    start = next(s for s in spans if s.name == "StartWorkflow:BroadcastCampaign")
    delivered = [s for s in spans if s.name == "RunActivity:deliver_batch"]
    assert {s.context.trace_id for s in delivered} == {start.context.trace_id}


async def test_with_tracing_off_nothing_is_traced_and_the_client_is_left_as_it_was(
        exporter: InMemorySpanExporter, time_skipping_env: WorkflowEnvironment, engine: Engine, smtp_server: Any,
        tmp_path: Path) -> None:
    exporter.clear()
    assert traced(time_skipping_env.client, Settings(var_dir=tmp_path)) is time_skipping_env.client
    await run_campaign(time_skipping_env, engine, smtp_server, tmp_path, tracing=False)
    assert exporter.get_finished_spans() == ()


async def test_tracing_on_without_the_otel_extra_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "temporalio.contrib.opentelemetry", None)   # as if not installed
    with pytest.raises(TracingUnavailable, match="install clarion's otel extra"):
        traced(object(), Settings(var_dir=tmp_path, otel_enabled=True))  # type: ignore[arg-type]
