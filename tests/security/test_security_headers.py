"""Security headers: every answer of every route (as README's table reaches it, with a key, a session or
none) carries nosniff, DENY framing, a referrer policy and a CSP; every HTML page's CSP allows no script
but by nonce; HSTS when the public base URL is https. Then the real pages, opened with valid links."""

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
from app.worker import signer as make_signer
from consent.tokens import CONFIRM_EMAIL, PREFERENCES, TRACK_CLICK, UNSUBSCRIBE
from storage.db import session_scope
from storage.tables import Confirmation, Delivery, Role, utcnow
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members
from tests.security.matrix import readme_entries

ORIGIN = "http://testserver"


def csp_directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def header_problems(r: Response) -> list[str]:
    """What is missing or too loose in one answer's headers (empty: fine)."""
    h, problems = r.headers, []
    if h.get("x-content-type-options") != "nosniff":
        problems.append("X-Content-Type-Options")
    if h.get("x-frame-options") != "DENY":
        problems.append("X-Frame-Options")
    if h.get("referrer-policy") not in ("no-referrer", "same-origin", "strict-origin-when-cross-origin"):
        problems.append(f"Referrer-Policy {h.get('referrer-policy')!r}")
    csp = h.get("content-security-policy")
    if csp is None:
        return [*problems, "no Content-Security-Policy"]
    d = csp_directives(csp)
    if d.get("frame-ancestors") != ["'none'"]:
        problems.append(f"frame-ancestors {d.get('frame-ancestors')}")
    if d.get("default-src") != ["'none'"]:
        problems.append(f"default-src {d.get('default-src')}")
    if h.get("content-type", "").startswith("text/html"):
        scripts = d.get("script-src", d.get("default-src", []))
        loose = [s for s in scripts if s != "'none'" and not s.startswith("'nonce-")]
        if loose:
            problems.append(f"script-src allows {loose}")
        if d.get("base-uri") not in (["'none'"], ["'self'"]):
            problems.append(f"base-uri {d.get('base-uri')}")
    return problems


@dataclass
class Site:
    app: FastAPI
    engine: Engine
    settings: Settings
    keys: dict[Role, str]
    delivery_id: int
    confirmation_id: int


@pytest.fixture
def site(engine: Engine, tmp_path) -> Iterator[Site]:
    program = seed_members(engine, 2)
    make_campaign(engine, program)
    cid = make_campaign(engine, program, key="autumn")
    with session_scope(engine) as s:
        d = Delivery(campaign_id=cid, member_id=1, status="sent", channel="email", locale="en", sent_at=utcnow())
        c = Confirmation(program_id=program, member_id=1, channel="email", address="m1@test.example",
                         topics=["promotions"], status="sent")
        s.add_all([d, c])
        s.flush()
        ids = d.id or 0, c.id or 0
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), rate_limits=False)
    app = create_app(settings, engine=engine)
    yield Site(app, engine, settings, {r: create_key(engine=engine, role=r) for r in Role}, *ids)


def test_every_route_answers_with_the_headers(site: Site) -> None:
    """Each row of README's table as the admin (key or dashboard session) and with no key at all."""
    problems = []
    admin = {"Authorization": f"Bearer {site.keys[Role.admin]}", "Origin": ORIGIN}
    with TestClient(site.app, follow_redirects=False) as client:
        assert client.post("/dashboard/login", data={"key": site.keys[Role.admin]},
                           headers={"Origin": ORIGIN}).status_code == 303
        for e in readme_entries():
            for headers in ({"Origin": ORIGIN}, admin):
                r = client.request(e.method, e.path, headers=headers)
                problems += [f"{e.method} {e.path} ({r.status_code}): {p}" for p in header_problems(r)]
        r = client.get("/no/such/path")
        problems += [f"404: {p}" for p in header_problems(r)]
    assert not problems, "\n".join(problems)


def test_the_real_pages_carry_strict_headers(site: Site) -> None:
    sign = make_signer(site.settings).sign
    admin = {"Authorization": f"Bearer {site.keys[Role.admin]}"}
    pages = {
        "preference center": ("GET", f"/p/{sign(PREFERENCES, {'m': 1}, ttl_s=60)}"),
        "unsubscribe": ("GET", f"/u/{sign(UNSUBSCRIBE, {'d': site.delivery_id}, ttl_s=60)}"),
        "unsubscribed": ("POST", f"/u/{sign(UNSUBSCRIBE, {'d': site.delivery_id}, ttl_s=60)}"),
        "confirm": ("GET", f"/c/{sign(CONFIRM_EMAIL, {'c': site.confirmation_id}, ttl_s=60)}"),
        "click": ("GET", f"/t/c/{sign(TRACK_CLICK, {'d': site.delivery_id, 'u': 'https://shop.example/', 'l': '1'}, ttl_s=60)}"),
        "login": ("GET", "/dashboard/login"),
        "docs": ("GET", "/docs"),
    }
    seen = {}
    with TestClient(site.app, follow_redirects=False) as client:
        for name, (method, path) in pages.items():
            seen[name] = client.request(method, path, headers={"Origin": ORIGIN})
        seen["preview"] = client.get("/api/v1/templates/double_points/preview", headers=admin, params={
            "program": "shop", "member": "M000001", "format": "html"})
        client.post("/dashboard/login", data={"key": site.keys[Role.marketer]}, headers={"Origin": ORIGIN})
        seen["dashboard"] = client.get("/dashboard")
        seen["campaign"] = client.get("/dashboard/campaigns/shop/autumn")
        seen["csv"] = client.get("/dashboard/campaigns/shop/autumn/report.csv")
    statuses = {name: r.status_code for name, r in seen.items()}
    assert statuses == {**dict.fromkeys(seen, 200), "click": 302}, statuses
    html = [name for name, r in seen.items() if r.headers.get("content-type", "").startswith("text/html")]
    assert set(html) == set(seen) - {"click", "csv"}
    problems = [f"{name}: {p}" for name, r in seen.items() for p in header_problems(r)]
    assert not problems, "\n".join(problems)
    assert "<script" not in "".join(seen[n].text for n in html if n != "docs")      # pages run no script


def test_the_docs_scripts_run_by_a_nonce_of_each_answer(site: Site) -> None:
    with TestClient(site.app) as client:
        first, second = client.get("/docs"), client.get("/docs")
    nonces = []
    for r in (first, second):
        scripts = re.findall(r"<script[^>]*>", r.text)
        nonce = re.search(r"'nonce-([^']+)'", r.headers["content-security-policy"]).group(1)  # type: ignore[union-attr]
        assert len(scripts) == 2 and all(f'nonce="{nonce}"' in s for s in scripts), scripts
        nonces.append(nonce)
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 22


@pytest.mark.parametrize(("base_url", "max_age", "hsts"), [
    ("https://clarion.example", 31_536_000, "max-age=31536000"),
    ("https://clarion.example", 0, None),
    ("http://127.0.0.1:8000", 31_536_000, None),
])
def test_hsts_is_sent_when_the_public_url_is_https(engine: Engine, tmp_path, base_url: str, max_age: int,
                                                   hsts: str | None) -> None:
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=base_url,
                              hsts_max_age_s=max_age), engine=engine)
    with TestClient(app) as client:
        for path in ("/healthz", "/u/not-a-token", "/dashboard/login"):
            assert client.get(path).headers.get("strict-transport-security") == hsts
