"""`clarion up`'s worker processes get this stack's settings through their environment (app.stack.worker_env)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.settings import Settings
from app.stack import worker_env


def test_a_worker_process_reads_back_the_stacks_settings_pointed_at_its_temporal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = Settings(_env_file=None, var_dir=tmp_path, temporal_dev_port=17555, api_port=18555, smtp_port=2525,
                    signing_secret=SecretStr("s3cret"), smtp_password=SecretStr("pw"), page_size=250,
                    log_format="json", metrics_port=9400, up_workers=2, trigger_concurrency=3)
    env = worker_env(mine, index=1)
    for name in [k for k in os.environ if k.startswith("CLARION_")]:
        monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    child = Settings(_env_file=None)

    assert child.temporal_address == "127.0.0.1:17555" and not child.embedded_temporal
    assert child.sandbox_allowed is True            # decided as in the stack (embedded), not by the address
    assert child.db_url == mine.db_url and child.up_workers == 0
    assert child.metrics_port == 9402               # the ports after the stack's own: 9400 + 1 + index
    assert child.signing_secret.get_secret_value() == "s3cret"
    assert child.smtp_password is not None and child.smtp_password.get_secret_value() == "pw"
    differ = {"temporal_address", "sandbox", "up_workers", "metrics_port", "database_url"}
    same = {n for n in Settings.model_fields if n not in differ}
    assert {n: getattr(child, n) for n in same} == {n: getattr(mine, n) for n in same}


@pytest.mark.asyncio
async def test_a_worker_process_that_dies_is_started_again_and_all_are_stopped_with_the_stack(tmp_path: Path) -> None:
    """The supervision of WorkerProcesses on real child processes (a short-lived one standing in for a worker
    that crashes, then long-lived ones), not the `clarion worker` command itself (the e2e tests run that)."""
    import subprocess
    import sys

    from app.stack import WorkerProcesses

    spawned: list[subprocess.Popen[bytes]] = []

    class Probe(WorkerProcesses):
        def _spawn(self, index: int) -> subprocess.Popen[bytes]:
            code = "pass" if not spawned else "import time; time.sleep(60)"   # the first one dies at once
            spawned.append(subprocess.Popen([sys.executable, "-c", code]))
            return spawned[-1]

    workers = Probe(Settings(_env_file=None, var_dir=tmp_path, up_workers=2, worker_shutdown_s=0))
    workers.start(every_s=0.05)
    spawned[0].wait(10)
    for _ in range(200):
        if len(spawned) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(spawned) == 3 and workers.procs == [spawned[2], spawned[1]]   # the dead one replaced, once
    await workers.stop()
    assert all(p.poll() is not None for p in spawned)
    await asyncio.sleep(0.2)
    assert len(spawned) == 3                    # nothing started again after the stop


@pytest.mark.parametrize(("env", "pages"), [
    ({}, 8),                                                            # two worker processes by default
    ({"CLARION_UP_WORKERS": "1"}, 4),                                   # one worker process
    ({"CLARION_UP_WORKERS": "3"}, 12),                                  # 4 pages in flight per worker
    ({"CLARION_UP_WORKERS": "0"}, 4),                                   # the worker inside clarion up
    ({"CLARION_UP_WORKERS": "3", "CLARION_BATCH_CONCURRENCY": "5"}, 5),  # set: taken as it is
])
def test_a_broadcast_keeps_four_pages_in_flight_per_worker_process_unless_told(
        env: dict[str, str], pages: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [k for k in os.environ if k.startswith("CLARION_")]:
        monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings(_env_file=None, var_dir=tmp_path).pages_in_flight == pages
