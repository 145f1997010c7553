"""Engine and sessions. SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


def make_engine(url: str, **kw: Any) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, **kw
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # JIT compiling pays off for long analytic scans, not for our short keyset pages and counts: it
    # added ~0.3 s to a 100k-member segment count (bench/segments.py)
    connect_args = {"options": "-c jit=off"} if "+psycopg" in url else {}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args, **kw)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class _SqliteTurn:
    """This process's writers to one SQLite file take turns on a lock of ours (threads), then on an advisory
    ``flock`` of a file beside the database (processes: the API, workers), before SQLite's own write lock.
    Held, the turn is handed on as soon as it is released: the kernel wakes the next process waiting, where
    SQLite's busy handler sleeps in steps of 1 to 100 ms and wakes late. Writers that take no turn still meet
    the busy handler; they lose only the queueing."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.RLock()
        self._path = f"{path}-writeturn" if path else None
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._path is not None:
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


_write_turns: weakref.WeakKeyDictionary[Engine, _SqliteTurn] = weakref.WeakKeyDictionary()
_write_turns_guard = threading.Lock()


def write_turn(engine: Engine) -> _SqliteTurn | nullcontext[None]:
    """On SQLite (one writer at a time) writers take turns before they write (:class:`_SqliteTurn`): with
    several delivery activities in a worker and events arriving through the API, most of a chunk's time went
    to sleeping in SQLite's busy handler (py-spy, bench/README.md). PostgreSQL: no turn (row locks)."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _write_turns_guard:
        turn = _write_turns.get(engine)
        if turn is None:
            path = engine.url.database
            turn = _write_turns[engine] = _SqliteTurn(path if path and path != ":memory:" else None)
        return turn


@contextmanager
def write_scope(engine: Engine) -> Iterator[Session]:
    """:func:`session_scope` for a transaction that writes, holding the database's :func:`write_turn`."""
    with write_turn(engine), session_scope(engine) as session:
        yield session


def dialect_insert(engine_or_session: Any, table: Any) -> Any:
    """An INSERT of the bind's dialect (both SQLite and PostgreSQL know ON CONFLICT)."""
    bind = engine_or_session.get_bind() if hasattr(engine_or_session, "get_bind") else engine_or_session
    return (sqlite if bind.dialect.name == "sqlite" else postgresql).insert(table)


def insert_ignore(engine_or_session: Any, table: Any, index_elements: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING``."""
    return dialect_insert(engine_or_session, table).on_conflict_do_nothing(index_elements=index_elements)


def upsert(engine_or_session: Any, table: Any, index_elements: list[str], update_cols: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (index_elements) DO UPDATE SET update_cols = excluded.*``."""
    stmt = dialect_insert(engine_or_session, table)
    return stmt.on_conflict_do_update(
        index_elements=index_elements, set_={c: stmt.excluded[c] for c in update_cols}
    )
