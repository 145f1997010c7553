"""Shared parts of the bad-input suite: a migrated SQLite file per test (copied from one migrated once per
session: migrating costs ~0.5 s a test), the real API in a TestClient with a key per role, the real CLI, and
a snapshot of every table's row count to prove that a refused input wrote nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import app as cli_app
from app.keys import create_key
from app.settings import Settings
from storage.migrate import upgrade
from storage.tables import Role  # with every table: SQLModel.metadata holds them all
from tests.conftest import free_port
from tests.factories import seed_members

BASE = "https://clarion.example"


@pytest.fixture(scope="session")
def _migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("badinput") / "migrated.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_url(_migrated: Path, tmp_path: Path) -> str:
    """A migrated SQLite file of this test's own (overrides tests/conftest.py's, which migrates every time)."""
    target = tmp_path / "clarion.db"
    with sqlite3.connect(_migrated) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def counts(engine: Engine) -> dict[str, int]:
    """Rows in every table: equal before and after a refused input means nothing was written."""
    with engine.connect() as c:
        return {t.name: c.scalar(select(func.count()).select_from(t)) or 0
                for t in SQLModel.metadata.sorted_tables}


@dataclass
class Api:
    client: TestClient
    keys: dict[Role, str]
    engine: Engine
    settings: Settings
    program_id: int

    def auth(self, role: Role = Role.admin) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[Api]:
    """The real app on the test's database, Temporal deliberately unreachable (a closed port): a bad input
    must be refused before anything needs Temporal. Members M000001..M000003 in program shop."""
    program_id = seed_members(engine, 3)
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE,
                        database_url=str(engine.url))
    app = create_app(settings, engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield Api(client, keys, engine, settings, program_id)


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """The real `clarion` command line (Typer's CliRunner) on the test's database."""
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    monkeypatch.setenv("CLARION_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("CLARION_TEMPORAL_DEV_PORT", str(free_port()))   # nothing listens: no Temporal
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(cli_app, [str(a) for a in args], **kw)
