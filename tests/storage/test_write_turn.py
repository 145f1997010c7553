"""SQLite writers take turns (storage.db.write_turn): threads of a process on a lock, processes on an flock
of a file beside the database, so a waiting writer starts the moment the one before it is done instead of
sleeping in SQLite's busy handler. Real SQLite files, a real second process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from storage.db import is_locked, make_engine, run_write, waiting_briefly, write_scope, write_turn

HOLD_S = 0.4


def test_a_second_writer_waits_for_the_turn_and_goes_as_soon_as_it_is_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    first, second = make_engine(url), make_engine(url)   # two engines: two descriptors of the turn file
    with write_scope(first) as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    took: list[float] = []

    def writer() -> None:
        with write_scope(second) as s:     # blocks on the flock while the first engine holds the turn
            took.append(time.monotonic())
            s.execute(text("INSERT INTO t VALUES (2)"))

    with write_turn(first), write_turn(first):      # re-entrant within a thread
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(HOLD_S)
        assert not took, "the second writer went while the first held the turn"
        gone = time.monotonic()
    t.join(5)
    assert took and took[0] - gone < 0.1      # handed on at once, no busy-handler sleep
    with first.connect() as c:
        assert c.execute(text("SELECT x FROM t")).scalars().all() == [2]
    first.dispose()
    second.dispose()


def test_another_process_waits_for_the_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    child = (
        "import sys, time; from storage.db import make_engine, write_turn\n"
        f"e = make_engine({url!r})\n"
        "print('waiting', flush=True)\n"
        "t0 = time.monotonic()\n"
        "with write_turn(e):\n"
        "    print(f'{time.monotonic() - t0:.3f}', flush=True)\n"
    )
    with write_turn(engine):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2])
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.6)
        assert proc.poll() is None, "the other process did not wait for the turn"
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and float(out) >= 0.5   # it waited for us
    engine.dispose()


def test_in_memory_and_postgresql_take_no_file_turn(any_db_url: str) -> None:
    engine = make_engine(any_db_url if any_db_url.startswith("postgresql") else "sqlite://")
    with write_turn(engine), write_scope(engine) as s:    # no file, no deadlock with itself
        assert s.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


async def test_the_event_loop_holds_the_turn_without_blocking_while_it_waits(tmp_path: Path) -> None:
    """``run_write`` waits for the turn in a helper thread (the loop goes on), then the loop's own thread holds
    it and writes there (re-entering it), a thread of the process waits for it, and a wait cancelled
    gives the turn back once it came."""
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    turn = write_turn(engine)
    with write_scope(engine) as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    release = threading.Event()
    taken = threading.Event()

    def holder() -> None:
        with turn:
            taken.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    assert taken.wait(5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    waiting = asyncio.create_task(_write_on_loop(engine))
    await asyncio.sleep(HOLD_S)
    assert not waiting.done() and ticks >= 10     # waited for the thread's turn; the loop went on meanwhile
    release.set()
    assert await asyncio.wait_for(waiting, 5) == threading.get_ident()
    t.join(5)

    # a wait cancelled while another holds the turn: the turn comes back to nobody, not to a dead waiter
    release.clear()
    taken.clear()
    t = threading.Thread(target=holder)
    t.start()
    assert taken.wait(5)
    cancelled = asyncio.create_task(_write_on_loop(engine))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    release.set()
    t.join(5)
    await asyncio.sleep(0.2)
    got = threading.Event()
    other = threading.Thread(target=lambda: (turn.__enter__(), got.set(), turn.__exit__()))
    other.start()
    assert got.wait(5), "the cancelled wait kept the turn"
    other.join(5)
    ticker.cancel()
    with engine.connect() as c:
        assert c.execute(text("SELECT x FROM t")).scalars().all() == [1]
    engine.dispose()


async def _write_on_loop(engine: Engine) -> int:
    def insert() -> int:
        with write_scope(engine) as s:     # re-enters the turn the loop's thread holds
            s.execute(text("INSERT INTO t VALUES (1)"))
        return threading.get_ident()

    return await run_write(engine, insert)


def test_waiting_briefly_gives_up_on_a_foreign_lock_in_its_time_and_only_in_its_thread(tmp_path: Path) -> None:
    """Another connection (no turn) holds SQLite's write lock: a transaction begun under waiting_briefly(ms) says
    "database is locked" after about ms; the same pooled connection afterwards waits the usual busy timeout."""
    path = tmp_path / "turns.db"
    engine = make_engine(f"sqlite:///{path}")
    with write_scope(engine) as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    foreign = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    foreign.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with waiting_briefly(100), pytest.raises(OperationalError) as err, write_scope(engine) as s:
        s.execute(text("INSERT INTO t VALUES (1)"))
    waited = time.monotonic() - t0
    assert is_locked(err.value) and 0.09 <= waited < 2.0

    threading.Timer(0.6, lambda: foreign.execute("COMMIT")).start()
    t0 = time.monotonic()
    with write_scope(engine) as s:     # the same connection from the pool: back to the long timeout
        s.execute(text("INSERT INTO t VALUES (2)"))
    assert time.monotonic() - t0 >= 0.5
    with engine.connect() as c:
        assert c.execute(text("SELECT x FROM t")).scalars().all() == [2]
    foreign.close()
    engine.dispose()
