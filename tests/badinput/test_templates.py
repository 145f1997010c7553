"""Templates: syntax errors, template injection (sandbox escapes in a template, Jinja in a member's data),
templates that would exhaust memory, and path traversal in template names, over the API, the CLI and the
agency import. A bad template is refused naming its file and line; an escape never runs (refused as unsafe,
or printed as text); a value too large to send is refused before it is built; a name is never a path;
nothing is stored."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
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
# each would allocate a gigabyte or more (a few: many more) in one step, in a preview, the import check or a send
HUGE = [
    "{{ 'a' * 10**9 }}",
    "{{ 'x'|center(10**9) }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ range(10**9)|list }}",                            # Jinja's own range limit
    "{{ [0] * 10**9 }}",
    "{{ 7 ** (10**10) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'ab'|indent(10**9, true) }}",
    "{{ 'a b c'|wordwrap(1, wrapstring='x' * 10**6) }}",
    "{{ '%s'|format('x' * 10**6) * 1000 }}",
    "{{ range(100000)|join('x' * 10**5) }}",
    "{{ lipsum(10**7) }}",
    "{% set a = range(100000)|list %}{{ [a] * 10**4 }}",
    "{% set d = dict(a='x' * 600000, b='y' * 600000) %}{{ d.items() }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% for i in range(100000) %}{{ 'x' * 10**5 }}{% endfor %}",
]
# each would hold the thread that renders (a preview's request, a worker's event loop) for hours
SLOW = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% set a = [1] %}{% for x in a %}{% if a|length < 10**7 %}{{ a.append(x) or '' }}{% endif %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ loop.index if loop.last }}{% endfor %}{% endfor %}",
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
    for i, expression in enumerate(HUGE):
        template(lib, f"huge{i}", sms=f"Hi\n{expression}", text=f"Hi\n\n{expression}")
    for i, expression in enumerate(SLOW):
        template(lib, f"slow{i}", sms=f"Hi\n{expression}", text=f"Hi\n\n{expression}")
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


# --- templates that would exhaust memory -----------------------------------------------------


def refused_previews(site: TestClient, name: str, expressions: list[str]) -> Iterator[tuple[str, str, float]]:
    """The preview of each expression's template (``{name}{n}``, see ``lib``) on SMS and email: a 422 naming
    the file and the line; yields the expression, the problem's message and the seconds the preview took."""
    for n, expression in enumerate(expressions):
        for channel, line in (("sms", 2), ("email", 3)):
            started = time.perf_counter()
            r = preview(site, f"{name}{n}", channel=channel)
            took = time.perf_counter() - started
            assert r.status_code == 422, (expression, r.text[:300])
            [problem] = r.json()["problems"]
            message = problem["message"]
            assert problem["field"] == "template" and f"{name}{n}/{channel}.en: line {line}: " in message, message
            yield expression, message, took


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_template_that_would_allocate_gigabytes_is_refused_quickly_naming_its_file_and_line(site):
    """Each was: gigabytes allocated in the preview (a few of them by Jinja folding constants while
    compiling), the API process's memory gone. Now each is a 422 naming the file and the line, in
    milliseconds, and this process's peak memory does not move."""
    before = peak_rss_mib()
    for expression, message, took in refused_previews(site, "huge", HUGE):
        assert "too large" in message or "Range too big" in message or "OverflowError" in message, message
        assert took < 2, (expression, took)
    assert peak_rss_mib() - before < 150, (before, peak_rss_mib())


@pytest.mark.parametrize(("file", "line", "expression"), [
    ("sms.ru.txt", 2, "{{ 'x'|center(10**9) }}"),
    ("email.en.txt", 3, "{{ '%*d' % (10**9, 1) }}"),
    ("sms.ru.txt", 2, "{{ 'a' * 10**9 }}"),
])
def test_an_agency_zip_that_would_allocate_gigabytes_is_refused_at_its_file_and_line(api, file, line, expression):
    """The import check compiles every file (Jinja folds '{{ "x"|center(10**9) }}' while compiling) and renders
    it with a sample member: both in the bounded sandbox."""
    before, peak = counts(api.engine), peak_rss_mib()
    files = {**GOOD, file: "Hi\n" * (line - 1) + expression}
    r = api.client.post("/api/v1/templates/spring_sale/versions", headers=api.auth(Role.marketer),
                        files={"file": ("drop.zip", make_zip(files), "application/zip")})
    assert r.status_code == 422, r.text
    assert any(p["field"] == file and f"line {line}: too large" in p["message"] for p in r.json()["problems"]), \
        r.json()
    assert counts(api.engine) == before and peak_rss_mib() - peak < 150


def test_a_template_that_would_run_for_hours_is_stopped_at_the_time_limit_naming_its_file_and_line(
        site, monkeypatch):
    """Each was: the preview's request (or a worker's event loop, for every member) busy for hours. Now each
    render stops at MAX_RENDER_S (lowered here to 0.3 s) with a 422 naming the file and the line."""
    monkeypatch.setattr("templates.sandbox.MAX_RENDER_S", 0.3)
    for expression, message, took in refused_previews(site, "slow", SLOW):
        assert "too slow: the template ran for more than 0.3 s" in message, message
        assert took < 0.3 + 1.5, (expression, took)
    assert preview(site, "hello", channel="sms").status_code == 200      # the next render has its own time


def test_an_agency_zip_that_would_run_for_hours_is_refused_at_its_file_and_line(api, monkeypatch):
    monkeypatch.setattr("templates.sandbox.MAX_RENDER_S", 0.3)
    before = counts(api.engine)
    files = {**GOOD, "sms.ru.txt": "Hi\n" + SLOW[1]}
    r = api.client.post("/api/v1/templates/spring_sale/versions", headers=api.auth(Role.marketer),
                        files={"file": ("drop.zip", make_zip(files), "application/zip")})
    assert r.status_code == 422, r.text
    assert any(p["field"] == "sms.ru.txt" and "line 2: too slow" in p["message"] for p in r.json()["problems"]), \
        r.json()
    assert counts(api.engine) == before


ORDINARY = """{% macro row(k, v) %}{{ k|center(12) }}|{{ '%8.2f' % v }}|{{ '{:>6}'.format(v|int) }}{% endmacro %}
{% set ns = namespace(total=0, seen=[]) %}{% for k, v in prices|dictsort %}{% set ns.total = ns.total + v %}\
{% set ns.seen = ns.seen + [k] %}{{ row(k, v) }}
{% endfor %}{{ '-' * 28 }}
{{ ns.seen|join(', ') }} ~ {{ ns.total|round(2) }} ~ {{ 'x'.ljust(3, '.') ~ '%s/%d' % ('a', 2) }}
{{ ns.seen|batch(2, '')|list }} {{ (ns.seen|map('upper')|list)|tojson(indent=1) }} {{ [[1], [2]]|sum(start=[]) }}
{% set block %}{{ 'text '|indent(2, true) }}{{ 'a b c d'|wordwrap(3) }}{% endset %}{{ block|replace('a', 'A') }}
{{ 10 ** 20 }} {{ 2 * 3 }} {{ lipsum(1, false, 3, 5)|wordcount > 2 }} {{ '%(n)s!'|format(n=ns.seen|length) }}"""


def test_ordinary_uses_of_the_bounded_operations_render_as_before():
    from jinja2.sandbox import SandboxedEnvironment

    from templates.sandbox import BoundedSandbox

    context = {"prices": {"tea": 3.5, "coffee": 4.25, "cake": 12}}
    plain = SandboxedEnvironment(trim_blocks=True).from_string(ORDINARY).render(context)
    bounded = BoundedSandbox(trim_blocks=True).from_string(ORDINARY).render(context)
    assert bounded == plain and "coffee" in bounded and "19.75" in bounded


def test_the_library_templates_still_render_in_the_bounded_sandbox():
    from templates.check import main_check_all
    from templates.render import Renderer

    assert [p for p in main_check_all(Renderer()) if p.severity == "error"] == []


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
