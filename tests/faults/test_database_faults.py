"""Clarion's database stops answering for a while in the middle of a page: SQLite locked by another
connection (a backup, a long CLI command), PostgreSQL restarted.

The real BroadcastCampaign and activities on the time-skipping server, email to the fault SMTP server on
127.0.0.1. The SMTP server holds its replies from the 16th message on, so a page is in flight (its rows
claimed `sending`, its messages at the server) when the database goes away; the replies are released
while it is away, so the page has to record its outcomes into a database that does not take them.

What must hold: the campaign completes; nobody gets a message twice; no transaction is half applied
(the money reserved on the campaign row is exactly the cost of the rows charged: sent and in doubt);
and the outcomes the worker holds while the database is away are recorded once it is back (none in doubt).

PostgreSQL runs as a private cluster of the machine's PostgreSQL 15 binaries (initdb + pg_ctl on a free
port in a temporary directory, as the postgres user when the tests run as root): the machine's shared
server is never touched. Skipped, saying why, when the binaries are missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.db import make_engine
from storage.migrate import upgrade
from storage.tables import Campaign, Delivery, Member
from tests.conftest import free_port
from tests.factories import make_campaign
from tests.faults.fake_smtp import FaultySmtp
from tests.workflows.conftest import bulk_members
from workflows.contracts import Progress, RunState

pytestmark = pytest.mark.asyncio(loop_scope="session")

MEMBERS, PAGE, HOLD_FROM = 40, 10, 15
CHARGED = ("sent", "queued", "in_doubt")


def outcome(engine: Engine, cid: int) -> tuple[dict[str, str], Decimal, Decimal]:
    """(member email → delivery status, the campaign's budget_spent, the cost of its charged rows)."""
    with Session(engine) as s:
        rows = s.execute(select(Member.email, Delivery.status, Delivery.cost)
                         .join(Member, Member.id == Delivery.member_id).where(Delivery.campaign_id == cid)).all()
        spent = s.scalar(select(Campaign.budget_spent).where(Campaign.id == cid))
    return ({e: st for e, st, _ in rows}, Decimal(spent),
            sum((Decimal(c) for _, st, c in rows if st in CHARGED), Decimal(0)))


def assert_consistent(engine: Engine, cid: int, smtp: FaultySmtp, result: Progress) -> dict[str, str]:
    status, spent, charged = outcome(engine, cid)
    got = smtp.received()
    assert result.state == RunState.completed
    assert len(status) == MEMBERS and set(got.values()) == {1}, got                 # nobody twice
    assert {e for e, st in status.items() if st == "sent"} <= set(got)             # sent: they have it
    assert set(got) <= {e for e, st in status.items() if st in ("sent", "in_doubt")}
    assert set(status.values()) <= {"sent", "in_doubt"}                            # nothing stuck or lost
    assert Counter(status.values())["in_doubt"] <= PAGE
    assert spent == charged, (spent, charged)                                      # no half transaction
    c = result.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience == MEMBERS, c
    return status


async def run_with_outage(workers: Any, engine: Engine, smtp: FaultySmtp, cid: int, *, outage: Any,
                          during: Any = None) -> Progress:
    """Run the campaign; once a page is in flight, start ``outage()`` (returns when the database is away),
    let the page's replies through, run ``during()`` (checks while it is away), and finish."""
    smtp.hang_after(HOLD_FROM)
    async with workers(engine=engine) as rig:
        handle = await rig.start(cid, page_size=PAGE, concurrency=1)
        assert await asyncio.to_thread(smtp.hanging.wait, 20), "no page was held"
        await asyncio.sleep(0.2)
        back = await asyncio.to_thread(outage)
        smtp.release()
        if during is not None:
            await during()
        await asyncio.to_thread(back.wait, 30)
        return await rig.finish(handle)


# --- SQLite -----------------------------------------------------------------------------------------


def sqlite_write_lock(path: str, seconds: float) -> threading.Event:
    """Another connection takes SQLite's write lock (BEGIN IMMEDIATE) and keeps it for ``seconds``.
    Returns once the lock is held; the event is set when it is let go."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        con = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            con.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(seconds)
            con.execute("COMMIT")
        finally:
            con.close()
            done.set()

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(10)
    return done


def sqlite_path(engine: Engine) -> str:
    path = engine.url.database
    assert path
    return path


async def test_a_sqlite_write_lock_held_for_seconds_is_waited_out_and_every_message_is_recorded(
        workers: Any, engine: Engine, smtp_server: FaultySmtp) -> None:
    """Within SQLite's busy timeout (30 s, storage.db): the page's writes wait for the lock, nothing fails."""
    program, _ = bulk_members(engine, MEMBERS)
    cid = make_campaign(engine, program)

    async def blocked() -> None:
        await asyncio.sleep(0.8)               # the page has its replies: its outcomes wait for the lock
        status, _, _ = outcome(engine, cid)
        assert Counter(status.values())["sending"] > 0, status

    result = await run_with_outage(workers, engine, smtp_server, cid,
                                   outage=lambda: sqlite_write_lock(sqlite_path(engine), 2.0), during=blocked)
    status = assert_consistent(engine, cid, smtp_server, result)
    assert set(status.values()) == {"sent"} and result.counts.in_doubt == 0


def short_busy_timeout(engine: Engine, ms: int) -> Engine:
    """The worker's engine gives up on a lock after ``ms`` (instead of 30 s): a lock held longer than the
    busy timeout, without waiting 30 s of real time."""
    @event.listens_for(engine, "connect")
    def _busy(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={ms}")

    return engine


@pytest.fixture
def impatient_engine(db_url: str) -> Iterator[Engine]:
    eng = short_busy_timeout(make_engine(db_url), 300)
    yield eng
    eng.dispose()


async def test_a_sqlite_lock_held_past_the_busy_timeout_is_outlasted_and_every_outcome_recorded(
        workers: Any, impatient_engine: Engine, smtp_server: FaultySmtp) -> None:
    """Past the busy timeout the page's writes fail ("database is locked"): a chunk's outcomes, which only the
    worker knows, are tried again until the lock is gone (DeliveryActivities._record_surely), so every row
    ends `sent`, none in doubt; a claim or a preparation that fails is retried by Temporal with the page.
    Nothing is half written and nobody gets a second message."""
    engine = impatient_engine
    program, _ = bulk_members(engine, MEMBERS)
    cid = make_campaign(engine, program)
    result = await run_with_outage(workers, engine, smtp_server, cid,
                                   outage=lambda: sqlite_write_lock(sqlite_path(engine), 2.5))
    status = assert_consistent(engine, cid, smtp_server, result)
    assert set(status.values()) == {"sent"}, Counter(status.values())


# --- PostgreSQL -------------------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivateCluster:
    """A PostgreSQL 15 cluster of our own: initdb in a temporary directory, pg_ctl on a free port of
    127.0.0.1 (trust authentication, nothing else listens), stopped and removed afterwards."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="clarion-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:                   # initdb refuses root: run the cluster as postgres (or nobody)
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                raise RuntimeError("running as root and there is no postgres or nobody user to own the cluster")
            shutil.chown(self.dir, user)
            self.as_user = ["runuser", "-u", user, "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])}: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "clarion", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "30",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://clarion@127.0.0.1:{self.port}/{db}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PrivateCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 binaries at {PG_BIN} (Debian's postgresql-15): cannot run a private cluster")
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.remove()
        pytest.skip(f"cannot start a private PostgreSQL cluster: {exc}")
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_engine(pg_cluster: PrivateCluster) -> Iterator[Engine]:
    from sqlalchemy import create_engine, text

    name = f"clarion_{os.getpid()}_{free_port()}"
    admin = create_engine(pg_cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = pg_cluster.url(name)
    upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


async def test_a_postgresql_restart_mid_page_is_retried_without_half_writes_or_second_messages(
        workers: Any, pg_engine: Engine, pg_cluster: PrivateCluster, smtp_server: FaultySmtp) -> None:
    """PostgreSQL goes down (a fast shutdown: every connection cut) for a second while a page is in flight,
    then comes back on the same port. The pool's connections are dead: the outcomes in hand are recorded again
    on new ones (pool_pre_ping) until the server answers; a claim that failed is retried with the page, and so
    are the small activities."""
    engine = pg_engine
    program, _ = bulk_members(engine, MEMBERS)
    cid = make_campaign(engine, program)

    def restart() -> threading.Event:
        pg_cluster.stop("fast")
        back = threading.Event()

        def start_again() -> None:
            time.sleep(1.0)
            pg_cluster.start()
            back.set()

        threading.Thread(target=start_again, daemon=True).start()
        return back

    result = await run_with_outage(workers, engine, smtp_server, cid, outage=restart)
    status = assert_consistent(engine, cid, smtp_server, result)
    # the outcomes the worker held while the server was down were recorded once it was back
    assert set(status.values()) == {"sent"}, Counter(status.values())
