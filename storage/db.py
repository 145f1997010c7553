"""Engine and sessions. SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

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


_write_turns: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_write_turns_guard = threading.Lock()


def write_turn(engine: Engine) -> threading.RLock | nullcontext[None]:
    """On SQLite (one writer at a time), this process's writers take turns on a lock of ours before they
    write. Without it, threads that meet SQLite's write lock wait in its busy handler, which sleeps in steps of
    1 to 100 ms and wakes late: with several delivery activities in one worker, most of a chunk's time went
    there (py-spy, bench/README.md). Other processes still meet the busy handler. PostgreSQL: no turn."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _write_turns_guard:
        turn = _write_turns.get(engine)
        if turn is None:
            turn = _write_turns[engine] = threading.RLock()
        return turn


@contextmanager
def write_scope(engine: Engine) -> Iterator[Session]:
    """:func:`session_scope` for a transaction that writes, holding this process's :func:`write_turn`."""
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
