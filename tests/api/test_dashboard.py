"""The dashboard over HTTP (TestClient on a real SQLite file): who may sign in and what the session cookie is,
redirects, the CSRF and origin checks that stand between a form and a campaign's workflow, the CSV with the
session, and pages whose figures are the API's. At the end, the Pause and Resume buttons drive a real running
BroadcastCampaign on Temporal's time-skipping server."""

from __future__ import annotations

import asyncio
import threading
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from analytics import responses
from app import campaigns as service
from app.api.dashboard import SESSION_COOKIE, SESSION_PURPOSE, SESSION_TTL_S
from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from consent.tokens import BadToken
from members.service import ensure_program
from storage.db import session_scope
from storage.tables import ApiKey, Campaign, Delivery, Member, Role
from tests.conftest import free_port
from tests.factories import campaign_spec, make_campaign, seed_members
from workflows.contracts import DeliverBatch

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)           # 13:00 in Moscow, the program's zone
SITE = "http://testserver"
SAME = {"Origin": SITE}
Q = {"program": "shop"}


# --- a campaign with known figures --------------------------------------------------------------------------


def build_world(engine: Engine) -> dict[str, Any]:
    """Program "shop" (Europe/Moscow, EUR) with "spring": 200 treated members (120 email sent on Nov 2, 80 SMS
    delivered on Nov 3), 40 in the control group, 10 suppressed; 60 opens, 20 clicks, 30 conversions of
    EUR 40 (20 on Nov 3, 10 on Nov 4) against 1 in the control group: uplift 15% − 2.5% = 12.5 points,
    p ≈ 0.031 (significant). And "autumn", launched later, with nothing sent yet. Responses are recorded the
    way the tracking and attribution code records them (``analytics.responses.record``)."""
    program = ensure_program(engine=engine, key="shop", name="Shop & Co", time_zone="Europe/Moscow",
                             currency="EUR", default_locale="en")
    spring = make_campaign(engine, program.id, holdout=0.1, segments={"gold": {"field": "tier", "value": "gold"}},
                           variants=[{"key": "a", "share": 50}, {"key": "b", "share": 50}])
    autumn = make_campaign(engine, program.id, key="autumn", name="Autumn <b>bold</b> & co")
    now = datetime.now(UTC)
    treated, control, suppressed = 200, 40, 10
    with session_scope(engine) as s:
        s.get(Campaign, spring).started_at = T0
        s.get(Campaign, spring).status = "completed"
        s.get(Campaign, autumn).started_at = T0 + timedelta(days=10)
        s.execute(insert(Member), [{"program_id": program.id, "external_id": f"D{k:04d}", "attributes": {},
                                    "created_at": now, "updated_at": now}
                                   for k in range(treated + control + suppressed)])
        ids = list(s.scalars(select(Member.id).where(Member.program_id == program.id).order_by(Member.id)))
        rows = []
        for i, mid in enumerate(ids):
            base = {"campaign_id": spring, "member_id": mid, "step": "main", "occurrence": "wave-1",
                    "locale": "en" if i % 2 == 0 else "ru", "segment": "gold" if i < 50 else "other",
                    "response_flags": 0, "created_at": T0, "updated_at": now, "reason": None, "variant": None,
                    "cost": None, "sent_at": None}
            if i < treated:
                email = i < 120
                rows.append({**base, "status": "sent" if email else "delivered", "channel": "email" if email else "sms",
                             "variant": "a" if i < 100 else "b", "cost": Decimal("0.01") if email else Decimal("0.05"),
                             "sent_at": T0 if email else T0 + timedelta(days=1)})
            elif i < treated + control:
                rows.append({**base, "status": "held_out", "reason": "control", "channel": "email"})
            else:
                rows.append({**base, "status": "suppressed", "reason": "no_consent", "channel": "email",
                             "variant": "a"})
        s.execute(insert(Delivery), rows)
        deliveries = list(s.execute(select(Delivery.id, Delivery.sent_at).where(Delivery.campaign_id == spring)
                                    .order_by(Delivery.member_id)))
        for i, (did, sent_at) in enumerate(deliveries):
            sent_at = sent_at.replace(tzinfo=UTC) if sent_at else None
            if i < 60:
                responses.record(s, delivery_id=did, kind="opened", at=sent_at + timedelta(hours=1), event_id=f"o{i}")
            elif i < 80:
                responses.record(s, delivery_id=did, kind="clicked", at=sent_at + timedelta(hours=2), event_id=f"c{i}")
            elif 100 <= i < 130:
                responses.record(s, delivery_id=did, kind="converted", at=sent_at + timedelta(days=1),
                                 event_id=f"p{i}", value=Decimal(40))
            elif i == treated:     # the first control member bought too
                responses.record(s, delivery_id=did, kind="converted", at=T0 + timedelta(hours=3), event_id="pc",
                                 value=Decimal(40), detail="control")
    return {"program_id": program.id, "spring": spring, "autumn": autumn}


# --- reading pages -----------------------------------------------------------------------------------------


@dataclass
class Page(HTMLParser):
    """Every element's attributes, the forms (action → fields) and the text, as a browser would see them."""

    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    forms: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "fields": {}})
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def form(self, action: str) -> dict[str, str]:
        [f] = [f for f in self.forms if f["action"] == action]
        return f["fields"]

    @property
    def body(self) -> str:
        return " ".join(" ".join(self.text).split())


def page(r: httpx.Response) -> Page:
    p = Page()
    p.feed(r.text)
    return p


def csrf_of(client: TestClient) -> str:
    return page(client.get("/dashboard")).form("/dashboard/logout")["csrf"]


@dataclass
class Site:
    client: TestClient
    app: Any
    engine: Engine
    keys: dict[Role, str]
    world: dict[str, Any]
    signals: list[dict[str, Any]]

    def login(self, role: Role = Role.marketer) -> TestClient:
        self.client.cookies.clear()
        r = self.client.post("/dashboard/login", data={"key": self.keys[role]}, headers=SAME, follow_redirects=False)
        assert r.status_code == 303, r.text
        return self.client

    def api(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params={**Q, **params},
                               headers={"Authorization": f"Bearer {self.keys[Role.analyst]}"})


@pytest.fixture
def site(engine, tmp_path, monkeypatch):
    world = build_world(engine)
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role, name=f"{role.value} key") for role in Role}
    signals: list[dict[str, Any]] = []

    async def signal(**kw: Any) -> service.CampaignView:     # the edge to Temporal, recorded
        signals.append({k: v for k, v in kw.items() if k != "engine"})
        return service.CampaignView(key=kw["key"], program=kw["program"], status="paused", workflow_id="wf",
                                    total=None, counts=service.Counts(), live=True)

    async def temporal() -> str:
        return "the temporal client"

    monkeypatch.setattr(service, "signal", signal)
    app.state.temporal = temporal
    with TestClient(app, base_url=SITE) as client:
        yield Site(client, app, engine, keys, world, signals)


def assert_dashboard_headers(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    for part in ("default-src 'none'", "img-src 'self' data:", "form-action 'self'", "base-uri 'none'",
                 "frame-ancestors 'none'"):
        assert part in csp, part
    assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]+'(;|$)", csp)
    assert "unsafe-inline" not in csp and "http" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"


# --- signing in --------------------------------------------------------------------------------------------


def test_pages_without_a_session_redirect_to_the_login_page(site):
    c = site.client
    for path, to in (("/dashboard", "/dashboard/login"),
                     ("/dashboard/campaigns/shop/spring", "/dashboard/login?next=%2Fdashboard%2Fcampaigns%2Fshop%2Fspring"),
                     ("/dashboard/campaigns/shop/spring/report.csv", "/dashboard/login")):
        r = c.get(path, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, to), path
        assert_dashboard_headers(r)
    r = c.post("/dashboard/campaigns/shop/spring/pause", data={"csrf": "x"}, headers=SAME, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login")
    assert site.signals == []


def test_login_page_is_plain_html_with_strict_headers(site):
    r = site.client.get("/dashboard/login")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_dashboard_headers(r)
    p = page(r)
    [key] = p.all("input", name="key")
    assert key["type"] == "password" and key["autocomplete"] == "off"
    assert p.all("label", **{"for": "key"})
    assert "<script" not in r.text and "src=" not in r.text
    assert re.findall(r"https?://", r.text) == []           # nothing to fetch from anywhere


def test_a_marketer_key_signs_in_with_a_sealed_session_cookie_that_holds_its_id_not_the_key(site):
    r = site.client.post("/dashboard/login", data={"key": site.keys[Role.marketer]}, headers=SAME,
                         follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard")
    cookie = r.headers["set-cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert name == SESSION_COOKIE
    assert {"httponly", "samesite=strict", "path=/dashboard", f"max-age={SESSION_TTL_S}"} <= flags
    assert "secure" not in flags                               # http: a Secure cookie would never come back
    key = site.keys[Role.marketer]
    assert key not in value and key.split("_")[1] not in value
    body = site.app.state.signer.verify(SESSION_PURPOSE, value)
    with Session(site.engine) as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.prefix == key.split("_")[1]))
    assert body["k"] == key_id and SESSION_TTL_S - 5 <= body["e"] - datetime.now(UTC).timestamp() <= SESSION_TTL_S
    with pytest.raises(BadToken):                              # sealed for the dashboard only
        site.app.state.signer.verify("prefs", value)
    home = site.client.get("/dashboard")
    assert home.status_code == 200 and "Signed in as marketer key (marketer)" in page(home).body


def test_the_cookie_is_secure_when_the_public_url_is_https(engine, tmp_path):
    build_world(engine)
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(),
                              public_base_url="https://clarion.example"), engine=engine)
    key = create_key(engine=engine, role=Role.analyst)
    with TestClient(app, base_url="https://clarion.example") as c:
        r = c.post("/dashboard/login", data={"key": key}, headers={"Origin": "https://clarion.example"},
                   follow_redirects=False)
    assert r.status_code == 303
    assert "secure" in {f.strip().lower() for f in r.headers["set-cookie"].split(";")}


@pytest.mark.parametrize(("who", "status", "message"), [
    ("bogus", 401, "This API key is not valid. It may have been revoked."),
    ("clk_000000000000_nope", 401, "This API key is not valid. It may have been revoked."),
    ("", 422, "Paste your API key."),
    (Role.core, 403, ("A key with the role core cannot use the dashboard. Use a key with the role admin, marketer "
                     "or analyst.")),
    (Role.pos, 403, "A key with the role pos cannot use the dashboard."),
])
def test_a_bad_key_or_a_role_without_dashboard_is_refused_with_a_clear_message(site, who, status, message):
    key = site.keys[who] if isinstance(who, Role) else who
    r = site.client.post("/dashboard/login", data={"key": key}, headers=SAME, follow_redirects=False)
    assert r.status_code == status
    assert "set-cookie" not in r.headers
    [alert] = [a for a in page(r).all("p") if a.get("role") == "alert"]
    assert message in page(r).body and alert
    assert_dashboard_headers(r)


@pytest.mark.parametrize("role", [Role.admin, Role.marketer, Role.analyst])
def test_admins_marketers_and_analysts_may_sign_in(site, role):
    c = site.login(role)
    assert c.get("/dashboard").status_code == 200


def test_a_login_posted_from_another_site_is_refused(site):
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Referer": "https://evil.example/x"}, {}):
        r = site.client.post("/dashboard/login", data={"key": site.keys[Role.admin]}, headers=headers,
                             follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers, headers
    r = site.client.post("/dashboard/login", data={"key": site.keys[Role.admin]},
                         headers={"Referer": f"{SITE}/dashboard/login"}, follow_redirects=False)
    assert r.status_code == 303                                # a Referer of our own is enough


@pytest.mark.parametrize(("next_url", "to"), [
    ("/dashboard/campaigns/shop/spring", "/dashboard/campaigns/shop/spring"),
    ("/dashboard?program=shop", "/dashboard?program=shop"),
    ("https://evil.example/", "/dashboard"),
    ("//evil.example", "/dashboard"),
    ("/dashboard/../api/v1/members", "/dashboard"),
    ("/dashboard/campaigns/shop/spring\r\nSet-Cookie: x=1", "/dashboard"),
])
def test_after_login_only_a_dashboard_page_is_a_destination(site, next_url, to):
    r = site.client.post("/dashboard/login", data={"key": site.keys[Role.analyst], "next": next_url}, headers=SAME,
                         follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, to)


def test_a_deleted_or_revoked_key_ends_the_session_on_the_next_page(site):
    c = site.login(Role.marketer)
    assert c.get("/dashboard").status_code == 200
    prefix = site.keys[Role.marketer].split("_")[1]
    with session_scope(site.engine) as s:
        s.execute(update(ApiKey).where(ApiKey.prefix == prefix).values(revoked_at=datetime.now(UTC)))
    r = c.get("/dashboard/campaigns/shop/spring", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?")
    assert "ended=1" in r.headers["location"]
    assert f'{SESSION_COOKIE}=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]

    c = site.login(Role.analyst)
    with session_scope(site.engine) as s:
        s.execute(delete(ApiKey).where(ApiKey.prefix == site.keys[Role.analyst].split("_")[1]))
    r = c.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?ended=1"
    assert "Your session has ended" in page(c.get(r.headers["location"])).body


def test_a_tampered_or_foreign_cookie_is_no_session(site):
    c = site.client
    other = site.app.state.signer.sign("prefs", {"k": 1}, ttl_s=60)          # a member link's token
    expired = site.app.state.signer.sign(SESSION_PURPOSE, {"k": 1}, ttl_s=-10)
    for value in (other, expired, "garbage", site.keys[Role.admin]):
        r = c.get("/dashboard", headers={"Cookie": f"{SESSION_COOKIE}={value}"}, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login?ended=1")


def test_sign_out_clears_the_cookie_and_needs_the_forms_token(site):
    c = site.login(Role.analyst)
    token = csrf_of(c)
    r = c.post("/dashboard/logout", data={"csrf": "wrong"}, headers=SAME, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = c.post("/dashboard/logout", data={"csrf": token}, headers=SAME, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login?out=1")
    assert "Max-Age=0" in r.headers["set-cookie"]
    assert c.get("/dashboard", follow_redirects=False).status_code == 303
    assert "You are signed out." in page(c.get("/dashboard/login?out=1")).body


# --- pause / resume: CSRF, origin, role -------------------------------------------------------------------


def test_a_pause_without_the_right_csrf_token_or_from_another_site_is_refused_and_nothing_is_signalled(site):
    c = site.login(Role.marketer)
    token = csrf_of(c)
    url = "/dashboard/campaigns/shop/autumn/pause"
    other = TestClient(site.app, base_url=SITE)                 # another browser, its own session
    other.post("/dashboard/login", data={"key": site.keys[Role.admin]}, headers=SAME)
    foreign = csrf_of(other)
    assert foreign != token
    for data, headers in (({}, SAME), ({"csrf": ""}, SAME), ({"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, SAME),
                          ({"csrf": foreign}, SAME), ({"csrf": token}, {"Origin": "https://evil.example"}),
                          ({"csrf": token}, {"Referer": "https://evil.example/dashboard"}), ({"csrf": token}, {})):
        r = c.post(url, data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403, (data, headers)
        assert "did not come from this site" in page(r).body
        assert_dashboard_headers(r)
    assert site.signals == []
    r = c.post(url, data={"csrf": token, "back": "list"}, headers=SAME, follow_redirects=False)
    assert r.status_code == 303
    assert site.signals == [{"client": "the temporal client", "program": "shop", "key": "autumn",
                             "action": "pause"}]
    assert r.headers["location"] == "/dashboard?program=shop&campaign=autumn&notice=pause&status=paused"
    flash = page(c.get(r.headers["location"]))
    assert "Autumn <b>bold</b> & co: pause sent. Status now: paused." in flash.body


def test_an_analyst_sees_no_buttons_and_cannot_pause(site):
    c = site.login(Role.analyst)
    p = page(c.get("/dashboard"))
    assert not [f for f in p.forms if f["action"].endswith(("/pause", "/resume"))]
    assert "Actions" not in p.body
    r = c.post("/dashboard/campaigns/shop/autumn/pause", data={"csrf": csrf_of(c)}, headers=SAME,
               follow_redirects=False)
    assert r.status_code == 403 and "Your role (analyst) may look at reports but not pause" in page(r).body
    assert site.signals == []


def test_marketers_get_pause_for_live_campaigns_and_none_for_finished_ones(site):
    c = site.login(Role.marketer)
    actions = {f["action"] for f in page(c.get("/dashboard")).forms}
    assert "/dashboard/campaigns/shop/autumn/pause" in actions              # scheduled: may be paused
    assert not {a for a in actions if "/spring/" in a}                       # completed: nothing to steer


def test_an_unknown_action_campaign_or_program_is_a_404_page(site):
    c = site.login(Role.admin)
    token = csrf_of(c)
    assert c.post("/dashboard/campaigns/shop/spring/cancel", data={"csrf": token}, headers=SAME).status_code == 404
    for path in ("/dashboard/campaigns/shop/nope", "/dashboard/campaigns/other/spring", "/dashboard?program=other",
                 "/dashboard/campaigns/shop/Bad%20Key", "/dashboard/campaigns/shop/nope/report.csv"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert "There is no such program or campaign." in page(r).body
        assert_dashboard_headers(r)
    assert site.signals == []


# --- pages and their figures -------------------------------------------------------------------------------


def test_campaigns_are_listed_newest_first_with_the_apis_figures(site):
    c = site.login(Role.analyst)
    r = c.get("/dashboard")
    assert_dashboard_headers(r)
    p = page(r)
    rows = p.all("tr")[1:]
    assert [row["data-campaign"] for row in rows] == ["autumn", "spring"]
    api = {x["campaign"]: x["total"] for x in site.api("/api/v1/reports/campaigns").json()["campaigns"]}
    for row in rows:
        total = api[row["data-campaign"]]
        assert int(row["data-sent"]) == total["sent"]
        for attr, key in (("data-open-rate", "open_rate"), ("data-click-rate", "click_rate"),
                          ("data-conversion-rate", "conversion_rate"), ("data-revenue", "revenue"),
                          ("data-cost", "cost")):
            assert (float(row[attr]) if row[attr] else None) == total[key], (row["data-campaign"], key)
    spring = api["spring"]
    assert float(rows[1]["data-uplift"]) == spring["uplift"]["uplift"] == pytest.approx(0.125)
    text = p.body
    assert "Spring sale spring broadcast completed 200 40.0% 10.0% 15.0% +12.5 ★ €1,200.00 €5.20" in text
    assert "Autumn <b>bold</b> & co autumn broadcast scheduled 0 — — — — €0.00 €0.00" in text
    assert "<b>bold</b>" not in r.text                        # autoescaped


def test_a_program_picker_appears_with_several_programs(site):
    ensure_program(engine=site.engine, key="zoo", name="Zoo Club")
    c = site.login(Role.analyst)
    p = page(c.get("/dashboard"))
    assert [o["value"] for o in p.all("option")] == ["shop", "zoo"]
    zoo = page(c.get("/dashboard", params={"program": "zoo"}))
    assert "This program has no campaigns yet." in zoo.body and "Zoo Club" in zoo.body


def test_the_campaign_page_charts_carry_the_apis_numbers(site):
    c = site.login(Role.analyst)
    r = c.get("/dashboard/campaigns/shop/spring")
    assert r.status_code == 200
    assert_dashboard_headers(r)
    p = page(r)
    api = site.api("/api/v1/reports/campaigns/spring").json()
    total = api["total"]
    bars = {b["data-step"]: int(b["data-count"]) for b in p.all("g") if "data-step" in b}
    assert bars == {k: total[k] for k in ("audience", "reached", "delivered", "opened", "clicked", "converted")}
    assert bars == {"audience": 250, "reached": 200, "delivered": 80, "opened": 80, "clicked": 20, "converted": 30}
    points = {(x["data-series"], x["data-day"]): int(x["data-count"]) for x in p.all("circle")}
    want = {(s, d["day"]): d[s] for d in api["by_day"] for s in ("sent", "opened", "clicked", "conversions")}
    assert points == want
    assert [d["day"] for d in api["by_day"]] == ["2026-11-02", "2026-11-03", "2026-11-04"]
    assert (want[("sent", "2026-11-02")], want[("sent", "2026-11-03")], want[("opened", "2026-11-02")],
            want[("clicked", "2026-11-02")], want[("conversions", "2026-11-03")],
            want[("conversions", "2026-11-04")]) == (120, 80, 60, 20, 20, 10)
    figures = {f["data-figure"]: f.get("data-value") for f in p.all("div") if "data-figure" in f}
    for k in ("sent", "delivered", "opened", "clicked", "converted", "revenue", "cost", "roi"):
        assert float(figures[k]) == total[k], k
    text = p.body
    assert "Members who got the campaign converted at 15.00% (30 of 200); members of the control group, who " \
           "got nothing, at 2.50% (1 of 40)." in text
    u = total["uplift"]
    # by hand: SE = sqrt(.15 × .85 / 200 + .025 × .975 / 40) = 0.035311; 1.96 × SE = 6.92 points
    assert (round(u["ci_low"] * 100, 2), round(u["ci_high"] * 100, 2)) == (5.58, 19.42)
    assert "Uplift: +12.50 percentage points, with a 95% confidence interval from +5.58 to +19.42 points." in text
    assert "p-value 0.031: a difference this large would rarely appear by chance, so it is statistically " \
           "significant at the 5% level." in text
    assert "Not reached: 40 held out (40 in the control group), 10 suppressed, 0 failed, 0 not sent yet." in text
    for table in ("channel", "locale", "variant", "segment"):
        keys = [row["data-key"] for row in p.all("tr") if "data-key" in row and _in_table(r.text, table, row)]
        assert keys == [g["key"] for g in api[f"by_{table}"]], table
    assert "Control group (held out)" in text


def _in_table(html: str, table: str, row: dict[str, str]) -> bool:
    start = html.index(f'class="by by-{table}"')
    end = html.index("</table>", start)
    return f'data-key="{row["data-key"]}"' in html[start:end]


def test_a_campaign_with_nothing_sent_shows_no_data_yet(site):
    c = site.login(Role.marketer)
    p = page(c.get("/dashboard/campaigns/shop/autumn"))
    assert [s["id"] for s in p.all("svg") if s.get("data-empty") == "true"] == ["funnel", "curve"]
    assert p.body.count("No data yet") >= 2
    assert "No control group was held out, so the campaign's uplift cannot be measured." in p.body
    assert p.form("/dashboard/campaigns/shop/autumn/pause")["back"] == "campaign"


def test_the_csv_downloads_with_the_session_and_is_the_apis(site):
    c = site.login(Role.analyst)
    r = c.get("/dashboard/campaigns/shop/spring/report.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="shop-spring.csv"'
    assert r.headers["cache-control"] == "no-store"
    assert r.text == site.api("/api/v1/reports/campaigns/spring", format="csv").text
    href = [a["href"] for a in page(c.get("/dashboard/campaigns/shop/spring")).all("a") if "download" in a]
    assert href == ["/dashboard/campaigns/shop/spring/report.csv"]


def test_no_dashboard_page_refers_to_anything_outside_the_site(site):
    c = site.login(Role.admin)
    for path in ("/dashboard", "/dashboard/campaigns/shop/spring", "/dashboard/campaigns/shop/autumn",
                 "/dashboard/login"):
        html = c.get(path).text
        assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
        assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}, path
        assert " style=" not in html                             # the CSP would refuse inline style attributes


# --- the buttons against a real running workflow ------------------------------------------------------------


class Gate:
    """Holds each deliver_batch at its start until the test opens it; ``opened`` is a thread's Event, so a
    worker running on its own thread and loop (the browser tests') is held the same way."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = 0

    async def pass_through(self) -> None:
        self.entered += 1
        while not self.opened.is_set():
            await asyncio.sleep(0.02)


class GatedActivities(DeliveryActivities):
    """The real activities; each page waits at the gate first (a page in flight while the test presses Pause)."""

    gate: Gate

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch):  # type: ignore[override]
        await self.gate.pass_through()
        return await super().deliver_batch(inp)


async def _wait(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _status(engine: Engine, key: str) -> str:
    with Session(engine) as s:
        return s.scalar(select(Campaign.status).where(Campaign.key == key)) or ""


@pytest.mark.asyncio(loop_scope="session")
async def test_pause_and_resume_buttons_steer_a_running_broadcast_on_temporal(private_time_skipping_env, smtp_server, engine,
                                                                             tmp_path):
    from app.worker import WORKFLOWS, activity_list, delivery_activities
    from workflows.broadcast import BroadcastCampaign

    n = 30
    seed_members(engine, n)
    settings = Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                        database_url=str(engine.url), temporal_task_queue=f"tq-{uuid.uuid4().hex}", page_size=10,
                        batch_concurrency=1)
    client = private_time_skipping_env.client
    app = create_app(settings, engine=engine, client=client)
    keys = {role: create_key(engine=engine, role=role) for role in (Role.marketer, Role.analyst)}
    gate = Gate()
    acts = delivery_activities(settings, engine=engine, cls=GatedActivities)
    acts.gate = gate
    spec = campaign_spec(key="live-sale", name="Live sale")
    transport = httpx.ASGITransport(app=app)
    async with Worker(client, task_queue=settings.temporal_task_queue, workflows=WORKFLOWS,
                      activities=activity_list(acts)), \
            httpx.AsyncClient(transport=transport, base_url=SITE) as marketer, \
            httpx.AsyncClient(transport=transport, base_url=SITE) as analyst:
        r = await marketer.post("/api/v1/campaigns", json=spec, headers={"Authorization": f"Bearer {keys[Role.marketer]}"})
        assert r.status_code == 202, r.text
        await _wait(lambda: gate.entered >= 1 and _status(engine, "live-sale") == "running", "the first page")
        handle = client.get_workflow_handle_for(BroadcastCampaign.run, r.json()["workflow_id"])

        for who, browser in ((Role.marketer, marketer), (Role.analyst, analyst)):
            r = await browser.post("/dashboard/login", data={"key": keys[who]}, headers=SAME)
            assert r.status_code == 303
        listing = page(await marketer.get("/dashboard"))
        [row] = listing.all("tr", data_campaign="live-sale")
        assert row["data-status"] == "running"                       # live, from the workflow's query
        pause = listing.form("/dashboard/campaigns/shop/live-sale/pause")

        # refused before anything reaches Temporal: the workflow keeps running
        r = await marketer.post("/dashboard/campaigns/shop/live-sale/pause", data={**pause, "csrf": "forged"},
                                headers=SAME)
        assert r.status_code == 403
        analyst_csrf = page(await analyst.get("/dashboard")).form("/dashboard/logout")["csrf"]
        r = await analyst.post("/dashboard/campaigns/shop/live-sale/pause", data={"csrf": analyst_csrf},
                               headers=SAME)
        assert r.status_code == 403
        assert (await handle.query(BroadcastCampaign.progress)).state == "running"

        r = await marketer.post("/dashboard/campaigns/shop/live-sale/pause", data=pause, headers=SAME)
        assert r.status_code == 303
        assert parse_qs(urlsplit(r.headers["location"]).query) == {
            "program": ["shop"], "campaign": ["live-sale"], "notice": ["pause"], "status": ["paused"]}
        assert (await handle.query(BroadcastCampaign.progress)).state == "paused"
        after = page(await marketer.get(r.headers["location"]))
        assert "Live sale: pause sent. Status now: paused." in after.body
        [row] = after.all("tr", data_campaign="live-sale")
        assert row["data-status"] == "paused"
        resume = after.form("/dashboard/campaigns/shop/live-sale/resume")

        gate.opened.set()            # the page in flight ends; no other starts while paused
        await _wait(lambda: _status(engine, "live-sale") == "paused", "the campaign row to say paused")
        sent_while_paused = len(smtp_server.recipients())
        assert 0 < sent_while_paused < n
        await asyncio.sleep(0.3)
        assert len(smtp_server.recipients()) == sent_while_paused

        campaign = page(await marketer.get("/dashboard/campaigns/shop/live-sale"))
        [status] = campaign.all("span", id="status")
        assert status["data-status"] == "paused"
        assert campaign.form("/dashboard/campaigns/shop/live-sale/resume")["back"] == "campaign"
        r = await marketer.post("/dashboard/campaigns/shop/live-sale/resume", data=resume, headers=SAME)
        assert r.status_code == 303 and "notice=resume" in r.headers["location"]
        with private_time_skipping_env.auto_time_skipping_disabled():
            result = await handle.result()
        assert result.state == "completed" and result.counts.sent == n
        rcpts = smtp_server.recipients()
        assert sorted(rcpts) == sorted({f"m{i}@test.example" for i in range(1, n + 1)})     # each once

        # a finished campaign cannot be paused: the page says so and nothing breaks
        done = page(await marketer.get("/dashboard"))
        assert not [f for f in done.forms if "/live-sale/" in f["action"]]
        r = await marketer.post("/dashboard/campaigns/shop/live-sale/pause", data=pause, headers=SAME)
        assert r.status_code == 303 and "problem=not_running" in r.headers["location"]
        assert "Live sale is not running, so it cannot be paused or resumed." in \
            page(await marketer.get(r.headers["location"])).body
    await acts.aclose()
