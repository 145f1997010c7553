"""Templates: syntax errors, template injection (sandbox escapes in a template, Jinja in a member's data) and
path traversal in template names, over the API, the CLI and the agency import. A bad template is refused
naming its file and line; an escape never runs (refused as unsafe, or printed as text); a name is never a
path; nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.settings import Settings
from members.profile import MemberIn
from members.service import upsert_members
from storage.tables import Role
from tests.badinput.conftest import BASE, Api, counts
from tests.conftest import free_port
from tests.storage.test_template_importer import GOOD, make_zip, mjml

MJML = ("<mjml><mj-body><mj-section><mj-column><mj-text>{body}</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>")
ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ joiner.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "{{ member | attr('__cla' ~ 'ss__') }}",
    "{{ '{0.__class__.__mro__}'.format(member) }}",
    "{% for c in ''.__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "..", "..\\..\\windows\\win.ini", "double_points/../../x",
              "%2e%2e%2fetc"]


def template(lib: Path, name: str, *, email: str = "Hi {{ member.first_name }}", text: str | None = None,
             sms: str = "Hi {{ member.first_name }}") -> None:
    folder = lib / name
    folder.mkdir(parents=True)
    (folder / "template.yaml").write_text("default_locale: en\nsubject:\n  en: 'Hello {{ member.first_name }}'\n")
    (folder / "email.en.mjml").write_text(MJML.format(body=email))
    (folder / "email.en.txt").write_text(email if text is None else text)
    (folder / "sms.en.txt").write_text(sms)


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    lib = tmp_path / "library"
    template(lib, "hello")
    template(lib, "broken", text="Hi\n{{ member.first_name }}\n{% if member.first_name %}no end")
    for i, expression in enumerate(ESCAPES):
        template(lib, f"evil{i}", sms=f"Hi {expression}")
    return lib


@pytest.fixture
def site(api: Api, lib: Path, tmp_path: Path):
    """The real app with ``lib`` as its template library."""
    upsert_members(engine=api.engine, program_id=api.program_id, items=[(None, "J1", MemberIn(
        first_name="{{ cycler.__init__.__globals__ }}<b>{{ 7 * 7 }}", email="j1@example.com",
        phone="+79123456789", locale="en"))])
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE, templates_dir=lib,
                        database_url=str(api.engine.url))
    with TestClient(create_app(settings, engine=api.engine)) as client:
        client.headers.update(api.auth(Role.marketer))
        yield client


def preview(client: TestClient, name: str, **params: str):
    return client.get(f"/api/v1/templates/{name}/preview", params={"program": "shop", "member": "M000001", **params})


# --- syntax errors ---------------------------------------------------------------------------


def test_a_preview_of_a_template_with_a_syntax_error_is_422_naming_the_file_and_line(site):
    r = preview(site, "broken")
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["field"] == "template" and "broken/email.en: line 3" in problem["message"]


def test_the_check_of_a_template_with_a_syntax_error_names_the_file_and_line(site):
    r = site.get("/api/v1/templates/broken/check")
    assert r.status_code == 200 and r.json()["ok"] is False
    assert any(p["file"].startswith("email.en") and "line 3" in p["message"] and p["severity"] == "error"
               for p in r.json()["problems"]), r.json()


def test_cli_preview_of_a_template_with_a_syntax_error_exits_2_naming_the_file_and_line(cli, api, lib, monkeypatch):
    monkeypatch.setenv("CLARION_TEMPLATES_DIR", str(lib))
    r = cli("templates", "preview", "broken", "-p", "shop", "--member", "M000001")
    assert r.exit_code == 2, r.output
    assert "template: " in r.stderr and "broken/email.en: line 3" in " ".join(r.stderr.split())


# --- template injection ----------------------------------------------------------------------


@pytest.mark.parametrize("n", range(len(ESCAPES)))
def test_a_sandbox_escape_in_a_template_is_refused_as_unsafe_and_never_runs(site, n):
    r = preview(site, f"evil{n}", channel="sms")
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["field"] == "template" and f"evil{n}/sms.en" in problem["message"]
    assert "unsafe" in problem["message"] or "not allowed" in problem["message"] \
        or "SecurityError" in problem["message"], problem
    assert "root:" not in r.text and "uid=" not in r.text and "<class" not in r.text


def test_jinja_in_a_members_data_is_printed_as_text_never_evaluated(site):
    email = preview(site, "hello", member="J1").json()
    sms = preview(site, "hello", member="J1", channel="sms").json()
    written = "{{ cycler.__init__.__globals__ }}<b>{{ 7 * 7 }}"
    assert sms["text"] == f"Hi {written}"
    assert email["subject"] == f"Hello {written}" and written in email["text"]
    assert "{{ cycler.__init__.__globals__ }}&lt;b&gt;{{ 7 * 7 }}" in email["html"]     # escaped in HTML
    assert "49" not in email["html"] + sms["text"] and "<function" not in email["html"] + sms["text"]


@pytest.mark.parametrize(("files", "file", "words"), [
    ({**GOOD, "email.en.mjml": mjml("{{ cycler.__init__.__globals__ }}")}, "email.en.mjml", "Python internals"),
    ({**GOOD, "sms.ru.txt": "{{ lipsum.__globals__['os'].popen('id').read() }}"}, "sms.ru.txt", "Python internals"),
    ({**GOOD, "email.en.txt": "Hi\n\n{% for x in member %}"}, "email.en.txt", "line 3"),
])
def test_an_agency_zip_with_an_escape_or_a_syntax_error_is_refused_naming_the_file_and_nothing_stored(
        api, files, file, words):
    before = counts(api.engine)
    r = api.client.post("/api/v1/templates/spring_sale/versions", headers=api.auth(Role.marketer),
                        files={"file": ("drop.zip", make_zip(files), "application/zip")})
    assert r.status_code == 422, r.text
    assert any(p["field"] == file and words in p["message"] for p in r.json()["problems"]), r.json()
    assert counts(api.engine) == before


# --- path traversal in template names --------------------------------------------------------


@pytest.mark.parametrize("name", TRAVERSALS)
@pytest.mark.parametrize("encoded", [False, True])
def test_a_template_name_that_is_a_path_is_422_naming_it_on_every_route(api, name, encoded):
    from urllib.parse import quote

    part = quote(name, safe="") if encoded else name
    before = counts(api.engine)
    answers = [
        api.client.get(f"/api/v1/templates/{part}/check", headers=api.auth(Role.marketer)),
        api.client.get(f"/api/v1/templates/{part}/preview", headers=api.auth(Role.marketer),
                       params={"program": "shop", "member": "M000001"}),
        api.client.post(f"/api/v1/templates/{part}/versions", headers=api.auth(Role.marketer),
                        files={"file": ("drop.zip", make_zip(GOOD), "application/zip")}),
    ]
    for r in answers:
        if r.request.url.path.startswith("/api/v1/templates/"):
            assert r.status_code == 422, (r.request.url, r.text)       # was a bare 404 "Not Found" for slashes
            assert [p["field"] for p in r.json()["problems"]] == ["path.name"], r.text
        else:        # the client resolved the dots away before sending: another route, never a file
            assert r.status_code == 404 and "root:" not in r.text
    assert counts(api.engine) == before


@pytest.mark.parametrize("name", TRAVERSALS)
def test_cli_refuses_a_template_name_that_is_a_path_naming_it(cli, api, tmp_path, name):
    drop = tmp_path / "drop.zip"
    drop.write_bytes(make_zip(GOOD))
    before = counts(api.engine)
    checked = cli("templates", "check", name)
    previewed = cli("templates", "preview", name, "-p", "shop", "--member", "M000001")
    imported = cli("templates", "import", name, drop)
    assert (checked.exit_code, previewed.exit_code, imported.exit_code) == (1, 2, 2), \
        (checked.output, previewed.output, imported.output)
    assert f"template name {name!r}: use a-z, 0-9, _ and -" in " ".join(checked.stderr.split())
    assert f"template: template name {name!r}" in " ".join(previewed.stderr.split())
    assert "name: template name" in " ".join(imported.stderr.split()) and "nothing was stored" in imported.stderr
    assert "root:" not in checked.output + previewed.output + imported.output
    assert counts(api.engine) == before
