"""The embedded stack of `clarion up` and `clarion demo`: Temporal dev server (unless an external
address is set), the worker (CLARION_UP_WORKERS child processes, or inside this process when 0), the API, and the
local mail server; started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import SecretStr

import uvicorn
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from app.api.main import create_app
from app.confirmations import wake_confirmations
from app.observability import configure_tracing, start_metrics_server, temporal_runtime, traced
from app.settings import Settings
from app.temporal import connect, start_dev_server
from app.worker import build_worker, delivery_activities
from storage.db import make_engine
from storage.migrate import upgrade

log = logging.getLogger(__name__)


def worker_env(settings: Settings, index: int) -> dict[str, str]:
    """The environment of `clarion up`'s worker process ``index``: this stack's settings as ``CLARION_*``
    variables (whether they came from the environment, a .env file or code), pointed at the stack's Temporal,
    with the sandbox decided as here, and metrics (when on) on the ports after this process's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None or field.validation_alias is not None:   # aliased: read from the same variables
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"CLARION_{name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    env["CLARION_TEMPORAL_ADDRESS"] = settings.temporal_target
    env["CLARION_DATABASE_URL"] = settings.db_url
    env["CLARION_SANDBOX"] = "true" if settings.sandbox_allowed else "false"
    env["CLARION_UP_WORKERS"] = "0"
    for port in ("metrics_port", "temporal_metrics_port"):
        if getattr(settings, port) is not None:
            env[f"CLARION_{port.upper()}"] = str(getattr(settings, port) + 1 + index)
    return env


class WorkerProcesses:
    """`clarion up`'s workers as child processes (`clarion worker`), each restarted if it dies, stopped with the
    stack (SIGTERM: a worker lets its pages finish for CLARION_WORKER_SHUTDOWN_S), and never outliving it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * settings.up_workers
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=worker_env(self.settings, index),
                                preexec_fn=_die_with_parent)

    def start(self, every_s: float = 1.0) -> None:
        for i in range(len(self.procs)):
            self.procs[i] = self._spawn(i)

        async def watch() -> None:
            while True:
                await asyncio.sleep(every_s)
                self.check()

        self._watch = asyncio.get_running_loop().create_task(watch())

    def check(self) -> None:
        """Restart a worker that exited while the stack runs (its pages are retried by Temporal meanwhile)."""
        for i, proc in enumerate(self.procs):
            if self._stopping or proc is None or proc.poll() is None:
                continue
            log.error("worker process %d (pid %d) exited with %s; starting it again", i, proc.pid, proc.returncode)
            self.procs[i] = self._spawn(i)

    def urls(self) -> dict[str, str]:
        out = {f"worker {i + 1}": f"pid {p.pid}" for i, p in enumerate(self.procs) if p is not None}
        if self.settings.metrics_port is not None:
            for i in range(len(self.procs)):
                out[f"worker {i + 1} metrics"] = (f"http://{self.settings.metrics_host}:"
                                                  f"{self.settings.metrics_port + 1 + i}/metrics")
        return out

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.worker_shutdown_s + 10
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in live:
            if p.poll() is None:
                p.kill()
                p.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGTERM when `clarion up` dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the stack's owner decides when to stop."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


@dataclass
class Stack:
    settings: Settings
    client: Client
    urls: dict[str, str]
    api: uvicorn.Server | None


@contextlib.asynccontextmanager
async def embedded_stack(settings: Settings, *, with_api: bool = True) -> AsyncIterator[Stack]:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade, settings.db_url)
    urls: dict[str, str] = {}
    temporal_runtime(settings)        # before the dev server and the client: the SDK's metrics port
    configure_tracing(settings, "up")
    async with contextlib.AsyncExitStack() as stack:
        stop_metrics = start_metrics_server(settings)
        if stop_metrics is not None:
            stack.callback(stop_metrics)
            urls["metrics (Prometheus)"] = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
        if settings.temporal_metrics_port is not None:
            urls["Temporal SDK metrics"] = (f"http://{settings.metrics_host}:{settings.temporal_metrics_port}"
                                            "/metrics")
        if settings.mailbox_enabled:
            from app.mailbox import start_mail_server

            mail = start_mail_server(settings.maildir, settings.smtp_host, settings.smtp_port)
            stack.callback(mail.stop)
            urls["mail (SMTP, stored in Maildir)"] = (
                f"smtp://{settings.smtp_host}:{settings.smtp_port}  → {settings.maildir}/  (clarion mailbox)")
        env: WorkflowEnvironment | None = None
        if settings.embedded_temporal:
            env = await start_dev_server(settings)
            stack.push_async_callback(env.shutdown)
            client = env.client
            urls["Temporal (gRPC, dev server)"] = settings.temporal_target
            urls["Temporal Web UI"] = f"http://127.0.0.1:{settings.temporal_ui_port}"
        else:
            client = await connect(settings)
            urls["Temporal (gRPC, external)"] = settings.temporal_target
        client = traced(client, settings)
        engine = make_engine(settings.db_url)
        stack.callback(engine.dispose)
        if settings.up_workers:
            workers = WorkerProcesses(settings)
            stack.push_async_callback(workers.stop)
            workers.start()
            urls.update(workers.urls())
        else:
            acts = delivery_activities(settings, engine=engine)
            stack.push_async_callback(acts.aclose)
            worker = build_worker(client, settings, acts)
            await stack.enter_async_context(worker)
        await wake_confirmations(client, settings)   # the double opt-in sender runs while a worker does
        server: uvicorn.Server | None = None
        if with_api:
            app = create_app(settings, engine=engine, client=client)
            # logging as app.observability set it: uvicorn adds no handlers, its access log (paths, client
            # addresses) is off; the API's own access line names the route's template
            server = _ApiServer(uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                                               log_level="warning", lifespan="on", log_config=None,
                                               access_log=False))
            task = asyncio.create_task(server.serve())

            async def stop_api() -> None:
                server.should_exit = True
                await task

            stack.push_async_callback(stop_api)
            for _ in range(200):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.05)
            if task.done():
                task.result()
                raise RuntimeError(f"the API could not start on {settings.api_host}:{settings.api_port}")
            urls["API"] = settings.base_url
            urls["API docs (OpenAPI)"] = f"{settings.base_url}/docs"
        urls["database"] = settings.db_url
        yield Stack(settings=settings, client=client, urls=urls, api=server)
