"""Every route of the app against README.md's "API keys and roles" table, with every role, no key and a
wrong key: 401 without a valid key, 403 for a role the table does not name, anything else for one it does;
public routes answer the same whatever key is presented (they never ask for one); dashboard pages need a
session that only the named roles can open. A route that is not in the table fails, and so does a row that
names no route of the app."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from members.service import ensure_program
from storage.tables import Role
from tests.conftest import free_port
from tests.security.matrix import Entry, covered, readme_entries, resolve

ORIGIN = "http://testserver"          # the TestClient's own site: forms posted "from" it pass the origin check
WRONG_KEY = "clk_0123456789ab_" + "x" * 43


@dataclass
class Site:
    app: FastAPI
    keys: dict[Role, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from storage.db import make_engine
    from storage.migrate import upgrade

    tmp = tmp_path_factory.mktemp("matrix")
    url = f"sqlite:///{tmp / 'clarion.db'}"
    upgrade(url)
    engine: Engine = make_engine(url)
    ensure_program(engine=engine, key="shop", name="Shop")
    # Temporal is unreachable (a closed port): routes that need it answer 503, which is not a 401/403
    app = create_app(Settings(var_dir=tmp, temporal_dev_port=free_port(), rate_limits=False), engine=engine)
    yield Site(app, {role: create_key(engine=engine, role=role) for role in Role})
    engine.dispose()


def call(client: TestClient, entry: Entry, *, key: str | None = None, form: dict[str, str] | None = None) -> Response:
    headers = {"Origin": ORIGIN}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return client.request(entry.method, entry.path, headers=headers, data=form)


def test_every_route_of_the_app_has_a_row_and_every_row_a_route(site: Site) -> None:
    entries = readme_entries()
    unknown = [f"{e.method} {e.path}  ({e.row})" for e in entries if resolve(site.app, e) is None]
    assert not unknown, "README rows that reach no route of the app:\n" + "\n".join(unknown)
    reached, missing = covered(site.app, entries)
    assert not missing, ("routes without a row in README's 'API keys and roles' table:\n"
                         + "\n".join(f"{r.method} {r.template}" for r in missing))
    for route, rows in reached.items():     # pause|resume|cancel reach one route: the rows must agree
        assert len({(e.kind, e.roles) for e in rows}) == 1, (route, rows)


def test_routes_with_a_key_answer_401_without_one_403_to_other_roles(site: Site) -> None:
    problems, checked = [], 0
    with TestClient(site.app, follow_redirects=False) as client:
        for e in (e for e in readme_entries() if e.kind == "key"):
            for who, key in [("no key", None), ("wrong key", WRONG_KEY), *((r.value, k) for r, k in site.keys.items())]:
                status = call(client, e, key=key).status_code
                checked += 1
                role = Role(who) if who in Role.__members__ else None
                want = "401" if role is None else "allowed" if role in e.roles else "403"
                got_ok = status == 401 if want == "401" else status == 403 if want == "403" else status not in (401, 403)
                if not got_ok:
                    problems.append(f"{e.method} {e.path} as {who}: {status}, want {want}")
    assert not problems, "\n".join(problems)
    assert checked >= 7 * 30           # the table was read: ~37 key routes × 7 callers


def test_public_routes_ask_for_no_key(site: Site) -> None:
    """The same answer with no key, a wrong key and each role's key; never a 401."""
    problems = []
    with TestClient(site.app, follow_redirects=False) as client:
        for e in (e for e in readme_entries() if e.kind == "public"):
            answers = {who: call(client, e, key=key) for who, key in
                       [("no key", None), ("wrong key", WRONG_KEY), *((r.value, k) for r, k in site.keys.items())]}
            statuses = {who: r.status_code for who, r in answers.items()}
            if 401 in statuses.values() or len(set(statuses.values())) != 1:
                problems.append(f"{e.method} {e.path}: {statuses}")
            if any("www-authenticate" in r.headers or "API key is" in r.text for r in answers.values()):
                problems.append(f"{e.method} {e.path} asks for a key")
    assert not problems, "\n".join(problems)


def _session(client: TestClient, key: str) -> Response:
    return client.post("/dashboard/login", data={"key": key}, headers={"Origin": ORIGIN})


def _csrf(client: TestClient) -> str:
    page = client.get("/dashboard")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def test_dashboard_pages_need_a_session_that_only_the_named_roles_can_open(site: Site) -> None:
    entries = [e for e in readme_entries() if e.kind == "session"]
    may_sign_in = frozenset().union(*(e.roles for e in entries))
    problems = []

    def check(who: str, e: Entry, r: Response, want: str) -> None:
        to_login = r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
        ok = {"login": to_login, "403": r.status_code == 403,
              "allowed": r.status_code not in (401, 403) and not to_login}[want]
        if not ok:
            problems.append(f"{e.method} {e.path} as {who}: {r.status_code} {r.headers.get('location', '')}, "
                            f"want {want}")

    with TestClient(site.app, follow_redirects=False) as client:     # no session: to the sign-in page
        for e in entries:
            for who, key in [("no key", None), ("wrong key", WRONG_KEY), ("admin's key as a header", site.keys[Role.admin])]:
                check(who, e, call(client, e, key=key), "login")
        assert _session(client, WRONG_KEY).status_code == 401
        assert "set-cookie" not in _session(client, WRONG_KEY).headers

    for role, key in site.keys.items():
        with TestClient(site.app, follow_redirects=False) as client:
            signed_in = _session(client, key)
            if role not in may_sign_in:
                assert signed_in.status_code == 403 and "set-cookie" not in signed_in.headers, (role, signed_in)
                for e in entries:
                    check(role.value, e, call(client, e), "login")
                continue
            assert signed_in.status_code == 303 and client.cookies.get("clarion_dashboard"), (role, signed_in)
            form = {"csrf": _csrf(client)}
            for e in entries:
                check(role.value, e, call(client, e, form=form if e.method == "POST" else None),
                      "allowed" if role in e.roles else "403")
    assert not problems, "\n".join(problems)


TABLE = """### API keys and roles

| route | roles (admin may do everything) |
| --- | --- |
| `POST /api/v1/campaigns/{key}/pause\\|resume`, `GET /api/v1/templates` | marketer, analyst |
| `PUT/DELETE /api/v1/programs/{key}/channels/{channel}` | admin only |
| `POST /dashboard/campaigns/{program}/{key}/pause` | marketer: a dashboard session |
| `GET/HEAD /t/o/{token}` (open pixel) | none: a sealed link |

### Next
| `GET /not/in/the/section` | core |
"""


def test_the_table_is_read_as_written() -> None:
    got = [(e.method, e.path, e.kind, sorted(r.value for r in e.roles)) for e in readme_entries(TABLE)]
    assert got == [
        ("POST", "/api/v1/campaigns/1/pause", "key", ["admin", "analyst", "marketer"]),
        ("POST", "/api/v1/campaigns/1/resume", "key", ["admin", "analyst", "marketer"]),
        ("GET", "/api/v1/templates", "key", ["admin", "analyst", "marketer"]),
        ("PUT", "/api/v1/programs/1/channels/1", "key", ["admin"]),
        ("DELETE", "/api/v1/programs/1/channels/1", "key", ["admin"]),
        ("POST", "/dashboard/campaigns/1/1/pause", "session", ["admin", "marketer"]),
        ("GET", "/t/o/1", "public", []),
        ("HEAD", "/t/o/1", "public", []),
    ]


def test_a_new_route_without_a_row_is_caught(site: Site) -> None:
    app = create_app(site.app.state.settings, engine=site.app.state.engine)

    @app.get("/api/v1/something-new")
    def something_new() -> dict[str, str]:
        return {}

    _, missing = covered(app, readme_entries())
    assert [(r.method, r.template) for r in missing] == [("GET", "/api/v1/something-new")]
