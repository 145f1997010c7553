"""Engine and sessions. SQLite by default (WAL, busy timeout), PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine


log = logging.getLogger(__name__)
T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000          # how long a SQLite statement waits for another writer's lock
_brief = threading.local()


@contextmanager
def waiting_briefly(ms: int) -> Iterator[None]:
    """SQLite transactions begun in this thread meanwhile wait at most ``ms`` for another writer's lock
    (then "database is locked"), instead of :data:`BUSY_TIMEOUT_MS`: for work on an event loop's thread, which
    must not sleep in SQLite's busy handler."""
    before = getattr(_brief, "ms", None)
    _brief.ms = ms
    try:
        yield
    finally:
        _brief.ms = before


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" (another writer held its lock past the busy timeout)."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


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
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()
            record.info["busy_ms"] = BUSY_TIMEOUT_MS

        @event.listens_for(engine, "begin")
        def _busy_timeout(conn: Any) -> None:   # this thread's (see waiting_briefly), set when it changes
            ms = getattr(_brief, "ms", None) or BUSY_TIMEOUT_MS
            info = conn.connection.record_info
            if info is not None and info.get("busy_ms") != ms:
                conn.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={ms}")
                info["busy_ms"] = ms

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
    the busy handler; they lose only the queueing.

    The turn belongs to a thread and is re-entrant in it. :meth:`held` waits for it in a helper thread and
    hands it to the event loop's thread: a transaction then runs there without giving up the GIL to the
    loop at each SQLite call (run in a thread beside a busy loop, a 100-row claim took ~190× as long)."""

    def __init__(self, path: str | None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._path = f"{path}-writeturn" if path else None
        self._fd: int | None = None

    def _acquire(self, owner: int) -> None:
        with self._cond:
            while self._owner is not None and self._owner != owner:
                self._cond.wait()
            self._owner = owner
            self._depth += 1
            if self._depth > 1 or self._path is None:
                return
        try:   # the first hold of this thread: the other processes' turn (outside the lock: nobody else takes it)
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth:
                return
            try:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._owner = None
                self._cond.notify()

    def __enter__(self) -> None:
        self._acquire(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        self._release()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The turn for the calling (event loop) thread, waited for in a helper thread so the loop goes on."""
        owner = threading.get_ident()
        with self._cond:
            mine = self._owner == owner
        if mine:   # re-entered on the loop thread
            self._acquire(owner)
        else:
            acquiring = asyncio.ensure_future(asyncio.to_thread(self._acquire, owner))
            try:
                await asyncio.shield(acquiring)
            except BaseException:   # cancelled while waiting: give the turn back once it came
                acquiring.add_done_callback(lambda f: f.cancelled() or f.exception() or self._release())
                raise
        try:
            yield
        finally:
            self._release()

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


# how long a write on an event loop's thread waits for SQLite's lock before it goes to a thread (run_write)
LOOP_BUSY_MS = 50


async def run_write(engine: Engine, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a transaction that writes (it may read first), from an event loop. On SQLite it runs on the
    loop's own thread once that holds the database's :func:`write_turn` (waited for in a helper thread,
    :meth:`_SqliteTurn.held`): run in a thread of its own, each SQLite call gave the GIL up to the busy loop and
    took up to the 5 ms switch interval to get it back, and the turn was held ~3 times as long as the work
    (bench/README.md). A writer that takes no turn (another tool) holding SQLite's lock must not keep the loop
    asleep in the busy handler: after :data:`LOOP_BUSY_MS` the transaction is run again, in a thread, in the
    turn. In WAL mode only a transaction's first write waits for the lock, so ``fn`` must count nothing before
    its first write; then running it again counts nothing twice. On PostgreSQL (row locks, a network round
    trip a statement): in a thread."""
    turn = write_turn(engine)
    if not isinstance(turn, _SqliteTurn):
        return await asyncio.to_thread(fn, *args)
    async with turn.held():
        try:
            with waiting_briefly(LOOP_BUSY_MS):
                return fn(*args)
        except OperationalError as exc:
            if not is_locked(exc):
                raise
            log.info("the database is locked by a writer that takes no turn; waiting in a thread")

    def in_turn() -> T:
        with turn:
            return fn(*args)

    return await asyncio.to_thread(in_turn)


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

