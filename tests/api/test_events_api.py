"""Events through the HTTP API (role core) and `clarion events send`: idempotent, refusals name the field."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import app as cli
from app.keys import create_key
from app.settings import Settings
from members.events import UNKNOWN_MEMBER
from storage.tables import Event, Role
from tests.conftest import free_port
from tests.factories import seed_members

Q = {"program": "shop"}


@pytest.fixture
def setup(engine, tmp_path):
    seed_members(engine, 2)
    # Temporal is deliberately unreachable (a closed port): these routes must not need it
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    return app, keys


@pytest.fixture
def api(setup):
    app, keys = setup
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {keys[Role.core]}"
        yield client, keys


def purchase(id_: str = "r-1", member: str = "M000001", **over) -> dict:
    at = (datetime.now(UTC) - timedelta(hours=1)).astimezone().isoformat()
    raw = {"id": id_, "type": "purchase", "member": member, "occurred_at": at,
           "payload": {"amount": 12.5, "currency": "EUR", "items": [{"sku": "A", "qty": 1, "price": 12.5}]}}
    raw.update(over)
    return raw


def rows(engine) -> list[str]:
    with Session(engine) as s:
        return sorted(s.scalars(select(Event.source_event_id)))


def test_posting_the_same_event_twice_stores_one_row_and_says_duplicate(api, engine):
    client, _ = api
    r = client.post("/api/v1/events", params=Q, json=purchase())
    assert (r.status_code, r.json()) == (202, {"accepted": 1, "duplicate": False})
    r = client.post("/api/v1/events", params=Q, json=purchase())
    assert (r.status_code, r.json()) == (202, {"accepted": 0, "duplicate": True})
    assert rows(engine) == ["r-1"]


@pytest.mark.parametrize(("over", "field"), [
    ({"type": "refund"}, "type"),
    ({"occurred_at": "2024-05-01T14:30:00"}, "occurred_at"),
    ({"payload": {"currency": "EUR"}}, "payload.amount"),
    ({"payload": {"amount": -1}}, "payload.amount"),
    ({"member": "NOBODY"}, "member"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_event_is_422_naming_the_field_and_stores_nothing(api, engine, over, field):
    client, _ = api
    r = client.post("/api/v1/events", params=Q, json=purchase(**over))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid"
    assert [p["field"] for p in r.json()["problems"]] == [field]
    if field == "member":
        assert r.json()["problems"][0]["message"] == UNKNOWN_MEMBER
    assert rows(engine) == []


def test_roles_and_program(api):
    client, keys = api
    r = client.post("/api/v1/events", params=Q, json=purchase(), headers={"Authorization": ""})
    assert r.status_code == 401
    r = client.post("/api/v1/events/batch", params=Q, json={"events": [purchase()]},
                    headers={"Authorization": f"Bearer {keys[Role.marketer]}"})
    assert r.status_code == 403 and "marketer" in r.json()["detail"]
    r = client.post("/api/v1/events", params={"program": "nope"}, json=purchase())
    assert r.status_code == 404 and r.json()["field"] == "program"
    r = client.post("/api/v1/events", params=Q, json=purchase(), headers={"Authorization": f"Bearer {keys[Role.admin]}"})
    assert r.status_code == 202


def test_a_batch_stores_the_good_and_lists_the_bad_with_index_and_field(api, engine):
    client, _ = api
    events = [purchase("ok-1"), purchase("ok-1"), purchase("bad", type="refund"),
              purchase("stranger", member="NOBODY"),
              purchase("huge", type="custom:note", payload={"text": "x" * 70_000}),
              purchase("ok-2", member="M000002", type="registration", payload={})]
    r = client.post("/api/v1/events/batch", params=Q, json={"events": events})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert [(e["index"], e["id"], e["field"]) for e in body["errors"]] == [
        (2, "bad", "type"), (3, "stranger", "member"), (4, "huge", "payload")]
    assert rows(engine) == ["ok-1", "ok-2"]
    r = client.post("/api/v1/events/batch", params=Q, json={"events": events[:2]})
    assert r.json() == {"accepted": 0, "duplicates": 2, "attributed": 0, "errors": []}


def test_a_batch_of_more_than_1000_is_refused_saying_so(api, engine):
    client, _ = api
    r = client.post("/api/v1/events/batch", params=Q, json={"events": [{"id": str(i)} for i in range(1001)]})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "events"
    assert "1000" in r.json()["problems"][0]["message"]


def test_bodies_over_the_limit_are_413_with_or_without_content_length(api, engine):
    client, _ = api
    big = json.dumps(purchase(type="custom:note", payload={"text": "x" * 70_000})).encode()
    r = client.post("/api/v1/events", params=Q, content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "64 KB" in r.json()["message"] and r.json()["field"] == "body"

    def chunks():  # no Content-Length: sent with chunked transfer encoding
        yield big[:40_000]
        yield big[40_000:]

    r = client.post("/api/v1/events", params=Q, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "64 KB" in r.json()["message"]
    r = client.post("/api/v1/events/batch", params=Q, content=b" " * (8 * 1024 * 1024 + 1),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "8 MB" in r.json()["message"]
    assert rows(engine) == []
    small = json.dumps(purchase()).encode()
    r = client.post("/api/v1/events", params=Q, content=iter([small[:50], small[50:]]),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text


async def test_concurrent_posts_of_the_same_event_store_one_row(setup, engine):
    app, keys = setup
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clarion",
                                 headers={"Authorization": f"Bearer {keys[Role.core]}"}) as client:
        answers = await asyncio.gather(*[client.post("/api/v1/events", params=Q, json=purchase("same"))
                                         for _ in range(8)])
    assert [a.status_code for a in answers] == [202] * 8
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run(engine, db_url, monkeypatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    seed_members(engine, 2)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(cli, ["events", "send", *args], **kw)


def test_cli_sends_json_lines_and_reports_bad_lines(run, engine, tmp_path):
    f = tmp_path / "events.jsonl"
    lines = [json.dumps(purchase("a")), "", json.dumps(purchase("b", member="NOBODY")), "{broken",
             json.dumps(purchase("a")), json.dumps(purchase("c", payload={}))]
    f.write_text("\n".join(lines) + "\n")
    r = run("--program", "shop", str(f))
    assert r.exit_code == 2, r.output
    assert "1 accepted, 1 duplicates, 3 refused" in r.stdout
    assert "line 3: member: unknown member" in r.stderr and "(event b)" in r.stderr
    assert "line 4: not JSON" in r.stderr and "line 6: payload.amount" in r.stderr
    assert rows(engine) == ["a"]
    r = run("--program", "shop", str(f))
    assert "0 accepted, 2 duplicates, 3 refused" in r.stdout


def test_cli_sends_a_json_list_or_object_and_reads_stdin(run, engine, tmp_path):
    f = tmp_path / "events.json"
    f.write_text(json.dumps([purchase("a"), purchase("b", member="M000002")], indent=2))
    r = run("--program", "shop", str(f))
    assert r.exit_code == 0, r.output
    assert "events.json: 2 accepted, 0 duplicates, 0 refused" in r.stdout
    r = run("-p", "shop", "-", input=json.dumps(purchase("c"), indent=2))
    assert r.exit_code == 0 and "stdin: 1 accepted" in r.stdout
    r = run("-p", "shop", "-", input=json.dumps(purchase("d")) + "\n" + json.dumps(purchase("a")) + "\n")
    assert r.exit_code == 0 and "stdin: 1 accepted, 1 duplicates, 0 refused" in r.stdout
    assert rows(engine) == ["a", "b", "c", "d"]
    r = run("-p", "shop", "-", input=json.dumps([purchase("e", type="nope")]))
    assert r.exit_code == 2 and "index 0: type: unknown event type" in r.stderr


def test_cli_unknown_program_is_exit_1_and_a_file_not_json_is_exit_2(run, tmp_path):
    f = tmp_path / "events.json"
    f.write_text("[1, 2")
    r = run("--program", "nope", str(f))
    assert r.exit_code == 1 and "program 'nope' not found" in r.stderr
    r = run("--program", "shop", str(f))
    assert r.exit_code == 2 and "not JSON" in r.stderr


def test_cli_streams_a_large_json_lines_file_in_batches_of_1000(run, engine, tmp_path, monkeypatch):
    import app.events_cli as events_cli

    sizes: list[int] = []
    real = events_cli.ingest_events

    def spy(**kw):
        sizes.append(len(kw["items"]))
        return real(**kw)

    monkeypatch.setattr(events_cli, "ingest_events", spy)
    f = tmp_path / "events.jsonl"
    f.write_text("".join(json.dumps(purchase(f"e{i}", member=f"M00000{i % 2 + 1}")) + "\n" for i in range(2100)))
    r = run("--program", "shop", str(f))
    assert r.exit_code == 0 and "2100 accepted, 0 duplicates, 0 refused" in r.stdout
    assert sizes == [1000, 1000, 100]
