"""Templates over HTTP and the CLI: the exact message a member would get, the check, the list."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import app as cli
from app.keys import create_key
from app.settings import Settings
from members.profile import CardIn, MemberIn
from members.service import upsert_members
from tests.conftest import free_port
from tests.factories import seed_members


@pytest.fixture
def api(engine, db_url, tmp_path, monkeypatch):
    program = seed_members(engine, 1)
    upsert_members(engine=engine, program_id=program, items=[(None, "R1", MemberIn(
        first_name="Анна", locale="ru", phone="+79161234567", email="anna@example.com",
        attributes={"points_balance": 1250}, cards=[CardIn(number="2770000099")]))])
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), database_url=db_url), engine=engine)
    key = {"Authorization": f"Bearer {create_key(engine=engine, role=Role_marketer())}"}
    with TestClient(app) as client:
        yield client, key


def Role_marketer():  # noqa: N802
    from storage.tables import Role
    return Role.marketer


def test_preview_is_the_exact_email_the_member_would_get(api):
    client, key = api
    r = client.get("/api/v1/templates/double_points/preview", headers=key,
                   params={"program": "shop", "member": "R1", "channel": "email"})
    body = r.json()
    assert r.status_code == 200, r.text
    assert (body["locale"], body["version"]) == ("ru", 1)
    assert body["subject"] == "Анна, двойные баллы всю неделю в Shop & Co"
    assert "Анна, здравствуйте!" in body["text"] and "<!doctype html>" in body["html"].lower()
    html = client.get("/api/v1/templates/double_points/preview", headers=key,
                      params={"program": "shop", "member": "R1", "format": "html"})
    assert html.headers["content-type"].startswith("text/html") and "Анна" in html.text


def test_sms_preview_shows_encoding_segments_and_cost(api):
    client, key = api
    body = client.get("/api/v1/templates/weekend_offer/preview", headers=key,
                      params={"program": "shop", "member": "R1", "channel": "sms"}).json()
    assert body["sms"]["encoding"] == "UCS-2" and body["sms"]["segments"] == 1
    assert body["text"].startswith("Shop & Co: 500 баллов") and body["title"] is None


def test_receipt_preview_wraps_at_the_tills_width(api):
    client, key = api
    for width in (32, 42, 48):
        body = client.get("/api/v1/templates/weekend_offer/preview", headers=key, params={
            "program": "shop", "member": "R1", "channel": "receipt", "width": width}).json()
        assert body["receipt"]["width"] == width and all(len(x) <= width for x in body["receipt"]["lines"])


@pytest.mark.parametrize(("params", "status", "field"), [
    ({"member": "NOPE"}, 404, "member"),
    ({"channel": "fax"}, 422, "channel"),
    ({"width": 40, "channel": "receipt"}, 422, "width"),
])
def test_preview_names_what_is_wrong(api, params, status, field):
    client, key = api
    r = client.get("/api/v1/templates/double_points/preview", headers=key,
                   params={"program": "shop", "member": "R1", **params})
    assert r.status_code == status
    body = r.json()
    assert body.get("field") == field or field in [p["field"] for p in body.get("problems", [])]


def test_a_template_without_that_channel_or_an_unknown_one_is_refused(api):
    client, key = api
    r = client.get("/api/v1/templates/double_points/preview", headers=key,
                   params={"program": "shop", "member": "R1", "channel": "sms"})
    assert r.status_code == 422 and "no sms body" in r.text
    r = client.get("/api/v1/templates/no_such/preview", headers=key, params={"program": "shop", "member": "R1"})
    assert r.status_code == 422 and "not found" in r.text


def test_the_list_and_the_check_over_http(api):
    client, key = api
    names = [t["name"] for t in client.get("/api/v1/templates", headers=key).json()["templates"]]
    assert {"double_points", "weekend_offer"} <= set(names)
    assert client.get("/api/v1/templates/weekend_offer/check", headers=key).json()["ok"] is True


def test_cli_check_reports_a_bad_template_by_file_and_line_and_exits_1(api, tmp_path, monkeypatch):
    lib = tmp_path / "lib" / "bad"
    lib.mkdir(parents=True)
    (lib / "template.yaml").write_text("default_locale: en\nsubject:\n  en: Hi\n")
    (lib / "email.en.mjml").write_text("<mjml><mj-body><mj-section><mj-column><mj-text>x</mj-text>"
                                       "</mj-column></mj-section></mj-body></mjml>")
    (lib / "email.en.txt").write_text("one\ntwo {{ member.frist_name }}\n")
    monkeypatch.setenv("CLARION_TEMPLATES_DIR", str(tmp_path / "lib"))
    r = CliRunner().invoke(cli, ["templates", "check", "bad"])
    assert r.exit_code == 1
    assert "bad/email.en.txt: line 2: 'dict object' has no attribute 'frist_name'" in r.stderr
