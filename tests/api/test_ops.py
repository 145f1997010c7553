"""Operations endpoints: /healthz, /readyz (database and Temporal, each within a timeout), /metrics on the
API port (no key; CLARION_API_METRICS=false turns it off), the metrics port of a worker process and the
Temporal SDK's own metrics port."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from app.api.main import create_app
from app.observability import start_metrics_server
from app.settings import Settings
from storage.db import make_engine
from tests.conftest import free_port

session_loop = pytest.mark.asyncio(loop_scope="session")


def asgi(app) -> httpx.AsyncClient:   # in the test's loop, where the Temporal client lives
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://clarion.test")


@session_loop
async def test_readyz_is_200_naming_what_it_checked_when_the_database_and_temporal_answer(
        engine, tmp_path: Path, time_skipping_env: WorkflowEnvironment) -> None:
    app = create_app(Settings(var_dir=tmp_path), engine=engine, client=time_skipping_env.client)
    async with asgi(app) as api:
        r = await api.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["down"] == []
        assert set(body["checks"]) == {"database", "temporal"}
        assert all(c["ok"] and c["ms"] >= 0 for c in body["checks"].values())
        assert (await api.get("/healthz")).json() == {"status": "ok"}


@session_loop
async def test_readyz_is_503_naming_temporal_when_it_cannot_be_reached(engine, tmp_path: Path) -> None:
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), ready_timeout_s=2),
                     engine=engine)
    async with asgi(app) as api:
        started = time.monotonic()
        r = await api.get("/readyz")
    assert time.monotonic() - started < 5
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["down"] == ["temporal"]
    assert body["checks"]["database"]["ok"] is True
    # what failed, by type: never a message, which could carry the server's address or a password
    assert body["checks"]["temporal"] == {"ok": False, "error": "TemporalUnavailable"}


@session_loop
async def test_readyz_is_503_naming_the_database_when_it_does_not_answer(
        tmp_path: Path, time_skipping_env: WorkflowEnvironment) -> None:
    gone = make_engine(f"postgresql+psycopg://clarion@127.0.0.1:{free_port()}/clarion")   # nobody listens
    app = create_app(Settings(var_dir=tmp_path), engine=gone, client=time_skipping_env.client)
    async with asgi(app) as api:
        r = await api.get("/readyz")
    assert r.status_code == 503
    assert r.json()["down"] == ["database"]
    assert r.json()["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert r.json()["checks"]["temporal"]["ok"] is True


@session_loop
async def test_metrics_count_requests_by_route_template_never_by_path(engine, tmp_path: Path) -> None:
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    async with asgi(app) as api:
        assert (await api.get("/api/v1/members/SECRET-M-4711", params={"program": "shop"})).status_code == 401
        r = await api.get("/metrics")     # no API key: Prometheus scrapes it
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'clarion_http_requests_total{method="GET",route="/api/v1/members/{external_id}",status="4xx"}' in text
    assert "SECRET-M-4711" not in text and "program=shop" not in text
    for name in ("clarion_send_chunk_seconds_bucket", "clarion_queue_lag_seconds_bucket",
                 "# TYPE clarion_messages_total counter", "# TYPE clarion_budget_spent_total counter"):
        assert name in text, name
    assert "_created" not in text


@session_loop
async def test_metrics_are_not_served_on_the_api_port_when_turned_off(engine, tmp_path: Path) -> None:
    app = create_app(Settings(var_dir=tmp_path, api_metrics=False), engine=engine)
    async with asgi(app) as api:
        assert (await api.get("/metrics")).status_code == 404
        assert (await api.get("/healthz")).status_code == 200


def test_a_worker_process_serves_its_metrics_on_the_metrics_port_bound_to_loopback(tmp_path: Path) -> None:
    port = free_port()
    stop = start_metrics_server(Settings(var_dir=tmp_path, metrics_port=port))
    assert stop is not None
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and "# TYPE clarion_messages_total counter" in r.text
    finally:
        stop()
    assert start_metrics_server(Settings(var_dir=tmp_path)) is None   # default: off


def test_the_temporal_sdk_serves_its_own_metrics_on_the_temporal_metrics_port(tmp_path: Path) -> None:
    """In a process of its own: the SDK's default runtime is set once per process."""
    port = free_port()
    script = textwrap.dedent(f"""
        import urllib.request
        from temporalio.runtime import Runtime
        from app.observability import temporal_runtime
        from app.settings import Settings

        temporal_runtime(Settings(var_dir={str(tmp_path)!r}, temporal_metrics_port={port}))
        Runtime.default()
        with urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5) as r:
            print(r.status)
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"
