"""The embedded stack of `clarion up` and `clarion demo`: Temporal dev server (unless an external
address is set), a worker, the API, and the local mail server; started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
