"""Member rights over HTTP and the CLI: who may export and erase, what the answers look like, clear errors.
What an erasure removes and keeps is tested on both databases in tests/storage/test_member_rights.py."""

from __future__ import annotations

import json
import stat

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import app as cli
from app.keys import create_key
from app.settings import Settings
from members.profile import MemberIn
from members.service import ensure_program, upsert_members
from storage.tables import Member, Role
from tests.conftest import free_port

EMAIL = "anna.petrova@example.org"
TOP_LEVEL = ["schema", "schema_version", "generated_at", "program", "member", "cards", "push_devices", "consent",
             "confirmations", "links", "events", "deliveries", "stored_messages", "sandbox_requests",
             "coupons"]


def seed(engine) -> None:
    program = ensure_program(engine=engine, key="shop", name="Shop")
    upsert_members(engine=engine, program_id=program.id or 0, items=[(None, "A1", MemberIn.model_validate({
        "first_name": "Anna", "email": EMAIL, "phone": "+79123456789", "cards": [{"number": "C-0001"}],
        "consents": [{"channel": "email", "topic": "promotions"}]}))])


@pytest.fixture
def api(engine, tmp_path):
    seed(engine)
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield client, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_export_is_for_core_and_admin_only(api):
    client, keys = api
    for role in Role:
        r = client.get("/api/v1/members/A1/export", params={"program": "shop"}, headers=auth(keys[role]))
        assert r.status_code == (200 if role in (Role.core, Role.admin) else 403), (role, r.text)
    assert client.get("/api/v1/members/A1/export", params={"program": "shop"}).status_code == 401


def test_export_is_versioned_json_with_the_members_data_and_not_cached(api):
    client, keys = api
    r = client.get("/api/v1/members/A1/export", params={"program": "shop"}, headers=auth(keys[Role.core]))
    body = r.json()
    assert list(body) == TOP_LEVEL
    assert (body["schema"], body["schema_version"]) == ("clarion.member-export", 1)
    assert body["generated_at"].endswith(("Z", "+00:00"))
    assert (body["member"]["email"], body["member"]["erased_at"]) == (EMAIL, None)
    assert body["cards"] == [{"number": "C-0001", "status": "active", "issued_at": body["cards"][0]["issued_at"]}]
    assert [(x["channel"], x["topic"], x["action"], x["source"]) for x in body["consent"]["ledger"]] == [
        ("email", "promotions", "granted", "api")]
    assert r.headers["cache-control"] == "no-store"
    assert "/api/v1/members/{external_id}/export" in client.get("/openapi.json").json()["paths"]


def test_erase_is_for_admin_only_and_a_refused_erase_changes_nothing(api, engine):
    client, keys = api
    for role in (Role.core, Role.marketer, Role.analyst, Role.pos):
        r = client.post("/api/v1/members/A1/erase", params={"program": "shop"}, headers=auth(keys[role]))
        assert r.status_code == 403 and "admin" in r.json()["detail"], role
    with Session(engine) as s:
        assert s.scalar(select(Member.email).where(Member.external_id == "A1")) == EMAIL


def test_erase_answers_the_pseudonym_and_erasing_again_by_it_answers_the_same(api):
    client, keys = api
    r = client.post("/api/v1/members/A1/erase", params={"program": "shop"}, headers=auth(keys[Role.admin]))
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["program"] == "shop" and done["external_id"].startswith("erased-") and done["erased_at"]
    assert done["blocked_channels"] == ["email", "sms", "whatsapp", "telegram", "push", "receipt", "inbox",
                                        "direct_mail"]
    again = client.post(f"/api/v1/members/{done['external_id']}/erase", params={"program": "shop"},
                        headers=auth(keys[Role.admin]))
    assert again.status_code == 200 and again.json() == done
    x = client.get(f"/api/v1/members/{done['external_id']}/export", params={"program": "shop"},
                   headers=auth(keys[Role.core])).json()
    assert x["member"]["erased_at"] == done["erased_at"] and x["member"]["email"] is None and x["cards"] == []
    assert EMAIL not in json.dumps(x)
    gone = client.get("/api/v1/members/A1/export", params={"program": "shop"}, headers=auth(keys[Role.core]))
    assert gone.status_code == 404


@pytest.mark.parametrize(("method", "path"), [("get", "export"), ("post", "erase")])
def test_unknown_member_or_program_is_404_naming_it(api, method, path):
    client, keys = api
    r = getattr(client, method)(f"/api/v1/members/NOBODY/{path}", params={"program": "shop"},
                                headers=auth(keys[Role.admin]))
    assert r.status_code == 404
    assert r.json()["field"] == "external_id" and "'NOBODY'" in r.json()["message"]
    r = getattr(client, method)(f"/api/v1/members/A1/{path}", params={"program": "nope"},
                                headers=auth(keys[Role.admin]))
    assert r.status_code == 404 and r.json()["field"] == "program"


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run(engine, db_url, monkeypatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    seed(engine)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(cli, ["members", *args], **kw)


def test_cli_exports_to_stdout_or_to_a_file_only_its_owner_reads(run, tmp_path):
    r = run("export", "A1", "--program", "shop")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["member"]["email"] == EMAIL
    f = tmp_path / "a1.json"
    r = run("export", "A1", "-p", "shop", "--output", str(f))
    assert r.exit_code == 0, r.output
    assert json.loads(f.read_text("utf-8"))["member"]["email"] == EMAIL and EMAIL not in r.stdout
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_cli_erase_asks_first_and_no_erases_nothing(run, engine):
    r = run("erase", "A1", "--program", "shop", input="n\n")
    assert r.exit_code == 1 and "This cannot be undone" in r.stdout and "nothing erased" in r.stderr
    with Session(engine) as s:
        assert s.scalar(select(Member.email).where(Member.external_id == "A1")) == EMAIL
    r = run("erase", "A1", "--program", "shop", input="y\n")
    assert r.exit_code == 0, r.output
    assert "member 'A1' erased; known as erased-" in r.stdout
    with Session(engine) as s:
        assert s.scalar(select(Member.email).where(Member.external_id == "A1")) is None


def test_cli_erase_with_yes_does_not_ask_and_an_unknown_member_is_named(run, engine):
    r = run("erase", "A1", "--program", "shop", "--yes")
    assert r.exit_code == 0, r.output
    assert "cannot be undone" not in r.stdout
    with Session(engine) as s:
        assert s.scalar(select(Member.erased_at)) is not None
    r = run("erase", "A1", "--program", "shop", "--yes")
    assert r.exit_code == 1 and "member 'A1' not found in program 'shop'" in r.stderr
    r = run("export", "A1", "--program", "nope")
    assert r.exit_code == 1 and "program 'nope' not found" in r.stderr
