"""Agency import over HTTP and the CLI: a marketer uploads a zip, gets the new version (or a 422 report of every
problem, nothing stored); email clients fetch its images from /assets without a key, cacheable for good."""

from __future__ import annotations

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from app.templates_import_cli import register
from storage.tables import Role, TemplateAsset, TemplateVersion
from templates.check import sample_context
from tests.conftest import free_port
from tests.storage.test_template_importer import GOOD, LOGO, make_zip, mjml

BASE = "https://mail.shop.example"
URL = "/api/v1/templates/spring_sale/versions"


@pytest.fixture
def api(engine, tmp_path):
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE), engine=engine)
    keys = {role: {"Authorization": f"Bearer {create_key(engine=engine, role=role)}"} for role in Role}
    with TestClient(app) as client:
        yield client, keys


def upload(client: TestClient, headers: dict, data: bytes, **form: str):
    return client.post(URL, headers=headers, files={"file": ("drop.zip", data, "application/zip")}, data=form)


def rows(engine) -> tuple[int, int]:
    with Session(engine) as s:
        return (s.scalar(select(func.count()).select_from(TemplateVersion)) or 0,
                s.scalar(select(func.count()).select_from(TemplateAsset)) or 0)


def test_a_marketer_imports_a_zip_and_email_clients_fetch_its_image(api, engine):
    client, keys = api
    r = upload(client, keys[Role.marketer], make_zip(GOOD), note="agency drop 12/2026")
    assert r.status_code == 201, r.text
    body = r.json()
    url = f"{BASE}/assets/spring_sale/1/images/logo.png"
    assert (body["version"], body["stored"], body["warnings"]) == (1, True, [])
    assert body["images"] == [{"path": "images/logo.png", "url": url, "media_type": "image/png", "bytes": len(LOGO)}]
    with Session(engine) as s:
        assert s.scalar(select(TemplateVersion.note)) == "agency drop 12/2026"

    image = client.get(url.removeprefix(BASE))                                  # no key: an email client
    assert image.status_code == 200 and image.content == LOGO
    assert image.headers["content-type"] == "image/png"
    assert image.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert image.headers["x-content-type-options"] == "nosniff"
    again = client.get(url.removeprefix(BASE), headers={"If-None-Match": image.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    email = client.app.state.renderer.render_email("spring_sale", "ru", sample_context("ru"))   # the newest now
    assert f'src="{url}"' in email.html


def test_a_dry_run_reports_the_version_it_would_be_and_stores_nothing(api, engine):
    client, keys = api
    r = upload(client, keys[Role.admin], make_zip({**GOOD, "images/spare.png": LOGO}), dry_run="true")
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["stored"]) == (1, False)
    assert r.json()["warnings"] == [{"field": "images/spare.png",
                                     "message": "not referenced by any MJML or HTML file (stored anyway)"}]
    assert rows(engine) == (0, 0)


def test_a_bad_zip_gets_the_whole_report_and_nothing_is_stored(api, engine):
    client, keys = api
    files = {**GOOD, "../evil.sh": "rm -rf /", "images/logo.png": b"<svg onload='x'/>"}
    r = upload(client, keys[Role.marketer], make_zip(files))
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid" and body["message"]
    assert {"field": "../evil.sh", "message": "'..' in the path: it would leave the folder (zip slip)"} in body["problems"]
    r = upload(client, keys[Role.marketer], make_zip({**GOOD, "email.en.mjml": mjml("x", image="images/nope.png")}))
    assert r.status_code == 422
    assert r.json()["problems"] == [{"field": "email.en.mjml",
                                     "message": "refers to images/nope.png, which is not in the zip"}]
    assert upload(client, keys[Role.marketer], b"not a zip").json()["problems"][0]["field"] == "zip"
    assert rows(engine) == (0, 0)


def test_only_marketers_and_admins_import(api, engine):
    client, keys = api
    assert upload(client, keys[Role.core], make_zip(GOOD)).status_code == 403
    assert upload(client, {}, make_zip(GOOD)).status_code == 401
    assert client.post("/api/v1/templates/Bad Name!/versions", headers=keys[Role.marketer],
                       files={"file": ("drop.zip", make_zip(GOOD), "application/zip")}).status_code == 422
    assert rows(engine) == (0, 0)


NOT_ASSETS = [
    "/assets/spring_sale/1/images/missing.png",
    "/assets/spring_sale/2/images/logo.png",
    "/assets/spring_sale/one/images/logo.png",
    "/assets/spring_sale/1/template.yaml",
    "/assets/spring_sale/1/email.en.mjml",
    "/assets/spring_sale/1/images/..%2f..%2f..%2fetc%2fpasswd",
    "/assets/spring_sale/1/%2e%2e/%2e%2e/etc/passwd",
    "/assets/spring_sale/1/images/%2e%2e/images/logo.png",
    "/assets/..%2fspring_sale/1/images/logo.png",
    "/assets/spring_sale/1/images//logo.png",
    "/assets/spring_sale/1/images/logo.png%00.txt",
    "/assets/spring_sale/1/IMAGES/logo.png",
]


def test_anything_but_a_stored_image_is_404_on_assets(api):
    client, keys = api
    assert upload(client, keys[Role.marketer], make_zip(GOOD)).status_code == 201
    assert client.get("/assets/spring_sale/1/images/logo.png").status_code == 200
    assert client.head("/assets/spring_sale/1/images/logo.png").headers["content-type"] == "image/png"
    answers = {path: client.get(path).status_code for path in NOT_ASSETS}
    assert answers == dict.fromkeys(NOT_ASSETS, 404)


def test_the_cli_imports_and_refuses_with_the_report(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    monkeypatch.setenv("CLARION_PUBLIC_BASE_URL", BASE)
    cli = typer.Typer()
    templates = typer.Typer()
    cli.add_typer(templates, name="templates")
    register(templates)
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(make_zip(GOOD, prefix="drop/"))
    bad.write_bytes(make_zip({**GOOD, "email.ru.txt": "Привет".encode("cp1251")}))

    dry = CliRunner().invoke(cli, ["templates", "import", "spring_sale", str(good), "--dry-run"])
    assert dry.exit_code == 0 and "would be version 1" in dry.output, dry.output
    done = CliRunner().invoke(cli, ["templates", "import", "spring_sale", str(good), "--note", "drop 1"])
    assert done.exit_code == 0 and "spring_sale version 1" in done.output, done.output
    assert f"{BASE}/assets/spring_sale/1/images/logo.png" in done.output
    refused = CliRunner().invoke(cli, ["templates", "import", "spring_sale", str(bad)])
    assert refused.exit_code == 2 and "email.ru.txt: not UTF-8 text" in refused.output, refused.output
