"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright) against a real
server (uvicorn on 127.0.0.1) and a real SQLite file: a marketer signs in with an API key, reads the campaigns,
opens one, and the funnel and daily curve on the screen carry exactly the figures the API serves
(``GET /api/v1/reports/campaigns/{key}`` with a bearer key). Every request the page makes is watched: any that
is not to the test server is refused and fails the test. Pause and Resume are pressed on a broadcast running
on Temporal's time-skipping server, its worker in a thread of its own (another process in all but name).
Screenshots are kept in var/test-artifacts/ (git-ignored)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.worker import Worker

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from app.worker import WORKFLOWS, activity_list, delivery_activities
from storage.db import make_engine
from storage.migrate import upgrade
from storage.tables import Campaign, Role
from tests.api.test_dashboard import Gate, GatedActivities, build_world
from tests.browser.conftest import ARTIFACTS, NEEDS_CHROMIUM, PHONE, serving
from tests.conftest import running_smtp
from tests.factories import campaign_spec, seed_members

DESKTOP = {"width": 1280, "height": 900}
LIVE_MEMBERS = 30

pytestmark = NEEDS_CHROMIUM


# --- a worker of its own ------------------------------------------------------------------------------------


class WorkerThread(threading.Thread):
    """A Temporal worker with the real workflows and activities, on its own event loop and connection."""

    def __init__(self, target: str, settings: Settings, engine: Engine, gate: Gate) -> None:
        super().__init__(daemon=True)
        self.target, self.settings, self.engine, self.gate = target, settings, engine, gate
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._halt = asyncio.get_running_loop(), asyncio.Event()
        client = await Client.connect(self.target, runtime=Runtime(telemetry=TelemetryConfig()))
        acts = delivery_activities(self.settings, engine=self.engine, cls=GatedActivities)
        acts.gate = self.gate
        try:
            async with Worker(client, task_queue=self.settings.temporal_task_queue, workflows=WORKFLOWS,
                              activities=activity_list(acts)):
                self.ready.set()
                await self._halt.wait()
        finally:
            await acts.aclose()

    def stop(self) -> None:
        if self._loop is not None and self._halt is not None:
            self._loop.call_soon_threadsafe(self._halt.set)
        self.join(30)


# --- the site -----------------------------------------------------------------------------------------------


@dataclass
class Site:
    base_url: str
    engine: Engine
    keys: dict[Role, str]
    gate: Gate
    smtp: Any
    outside: list[str] = field(default_factory=list)      # requests the pages tried to make elsewhere

    def api(self, path: str, **params: str) -> dict[str, Any]:
        r = httpx.get(f"{self.base_url}{path}", params={"program": "shop", **params},
                      headers={"Authorization": f"Bearer {self.keys[Role.analyst]}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def status(self, key: str) -> str:
        with Session(self.engine) as s:
            return s.scalar(select(Campaign.status).where(Campaign.key == key)) or ""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, private_time_skipping_env, smtp_server_module) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    url = f"sqlite:///{tmp / 'clarion.db'}"
    upgrade(url)
    engine = make_engine(url)
    build_world(engine)
    seed_members(engine, LIVE_MEMBERS, program="vip")            # the program of the live broadcast
    keys = {role: create_key(engine=engine, role=role, name=f"{role.value.title()} Key") for role in Role}
    target = private_time_skipping_env.client.service_client.config.target_host
    settings = Settings(var_dir=tmp, database_url=url, temporal_address=target,
                        temporal_task_queue=f"tq-{uuid.uuid4().hex}", smtp_host=smtp_server_module.host,
                        smtp_port=smtp_server_module.port, page_size=10, batch_concurrency=1)
    gate = Gate()
    worker = WorkerThread(target, settings, engine, gate)
    worker.start()
    assert worker.ready.wait(30) and worker.error is None, worker.error
    with serving(create_app(settings, engine=engine)) as base:
        yield Site(base, engine, keys, gate, smtp_server_module)
        gate.opened.set()
    worker.stop()
    engine.dispose()


@pytest.fixture(scope="module")
def smtp_server_module() -> Iterator[Any]:
    with running_smtp() as box:
        yield box


def _open(browser, site: Site, viewport: dict[str, int]) -> Iterator[Any]:
    """A fresh page that may talk to the test server only: anything else is refused and recorded (and fails
    the test), as is any console error (a CSP refusal would be one)."""
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    ours = urlsplit(site.base_url).netloc

    def guard(route: Any) -> None:
        if urlsplit(route.request.url).netloc == ours:
            route.continue_()
        else:
            site.outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    errors: list[str] = []
    # a refused login answers 401/403, which Chromium reports as a failed load: that one is expected
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and not re.fullmatch(
        r"Failed to load resource: the server responded with a status of 40[13] \(.*\)", msg.text) else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []
    assert site.outside == [], f"the page tried to reach outside the test server: {site.outside}"


@pytest.fixture
def desktop(browser, site):
    yield from _open(browser, site, DESKTOP)


@pytest.fixture
def phone(browser, site):
    yield from _open(browser, site, PHONE)


def sign_in(page: Any, site: Site, role: Role = Role.marketer, then: str = "/dashboard") -> None:
    page.goto(f"{site.base_url}{then}")
    assert page.url.startswith(f"{site.base_url}/dashboard/login")      # sent to the login page first
    page.get_by_label("API key").fill(site.keys[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site.base_url}{then}")


def shoot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return shot


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the tests ----------------------------------------------------------------------------------------------


def test_a_bad_key_is_refused_on_the_login_page(site, desktop):
    page = desktop
    page.goto(f"{site.base_url}/dashboard/login")
    page.get_by_label("API key").fill(site.keys[Role.core])
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == ("A key with the role core cannot use the dashboard. Use a key with the role "
                                  "admin, marketer or analyst.")
    assert page.context.cookies() == []
    # the inline style sheet ran (allowed by its hash in the CSP): the body lost the browser's 8px margin
    assert page.evaluate("getComputedStyle(document.body).marginTop") == "0px"
    shoot(page, "dashboard-login")


def test_the_campaigns_list_shows_the_apis_figures(site, desktop):
    page = desktop
    sign_in(page, site)
    [cookie] = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/dashboard")
    assert page.evaluate("document.cookie") == ""                       # out of any script's reach
    api = {c["campaign"]: c["total"] for c in site.api("/api/v1/reports/campaigns")["campaigns"]}
    rows = page.locator("tr[data-campaign]")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.campaign)")[:2] == ["autumn", "spring"]
    spring = page.locator('tr[data-campaign="spring"]')
    cells = spring.locator("td").all_inner_texts()
    total = api["spring"]
    assert int(spring.get_attribute("data-sent")) == total["sent"] == 200
    assert float(spring.get_attribute("data-open-rate")) == total["open_rate"]
    assert float(spring.get_attribute("data-uplift")) == total["uplift"]["uplift"]
    assert cells[:9] == ["spring", "broadcast", "completed", "200", "40.0%", "10.0%", "15.0%", "+12.5 ★", "€1,200.00"]
    assert page.get_by_role("link", name="Autumn <b>bold</b> & co").is_visible()          # text, not markup
    assert page.get_by_role("button", name="Pause Autumn <b>bold</b> & co").is_visible()
    shoot(page, "dashboard-campaigns")


def test_the_campaign_page_charts_show_the_apis_numbers(site, desktop):
    page = desktop
    sign_in(page, site, then="/dashboard/campaigns/shop/spring")
    api = site.api("/api/v1/reports/campaigns/spring")
    total = api["total"]

    funnel = page.locator("svg#funnel")
    assert funnel.is_visible()
    bars = funnel.locator("g[data-step]").evaluate_all(
        "gs => gs.map(g => [g.dataset.step, Number(g.dataset.count),"
        " g.querySelector('rect.fill').getBoundingClientRect().width,"
        " g.querySelector('text.value').textContent])")
    steps = ["audience", "reached", "delivered", "opened", "clicked", "converted"]
    assert [b[0] for b in bars] == steps
    assert {b[0]: b[1] for b in bars} == {k: total[k] for k in steps}
    # what the screen shows: each bar as wide as its count against the audience, labelled with the API's count
    widest = bars[0][2]
    for step, count, width, label in bars:
        assert width == pytest.approx(widest * count / total["audience"], abs=0.6), step
        assert label.startswith(f"{count:,} · "), label
    assert bars[2][3] == f"80 · {80 / total['reached']:.1%}"

    curve = page.locator("svg#curve")
    assert curve.is_visible()
    points = curve.locator("circle[data-series]").evaluate_all(
        "cs => cs.map(c => [c.dataset.series, c.dataset.day, Number(c.dataset.count),"
        " c.getBoundingClientRect().top + c.getBoundingClientRect().height / 2,"
        " c.querySelector('title').textContent])")
    series = ("sent", "opened", "clicked", "conversions")
    want = {(s, d["day"]): d[s] for d in api["by_day"] for s in series}
    assert {(s, d): n for s, d, n, _, _ in points} == want
    assert len(points) == len(want) == 12
    # higher figures sit higher on the screen, on one linear scale
    ys = {(s, d): y for s, d, _, y, _ in points}
    zero = ys[("clicked", "2026-11-03")]
    assert ys[("sent", "2026-11-02")] < ys[("sent", "2026-11-03")] < ys[("opened", "2026-11-02")] < zero
    scale = (zero - ys[("sent", "2026-11-02")]) / 120
    assert zero - ys[("sent", "2026-11-03")] == pytest.approx(80 * scale, abs=0.6)
    tips = {(s, d): tip for s, d, _, _, tip in points}
    assert tips[("conversions", "2026-11-03")] == "Conversions, Nov 3, 2026: 20"
    assert curve.locator("g.legend text").all_text_contents() == ["Sent", "Opened", "Clicked", "Conversions"]
    assert curve.locator("g.axis-x text").all_text_contents() == ["Nov 2", "Nov 3", "Nov 4"]

    figures = dict(page.locator("[data-figure]").evaluate_all(
        "fs => fs.map(f => [f.dataset.figure, f.dataset.value === undefined ? null : Number(f.dataset.value)])"))
    for k in ("sent", "delivered", "opened", "clicked", "converted", "revenue", "cost", "roi", "cost_per_response"):
        assert figures[k] == pytest.approx(total[k]), k
    uplift = page.locator("section.uplift").inner_text()
    assert "Uplift: +12.50 percentage points, with a 95% confidence interval from +5.58 to +19.42 points." in uplift
    assert "statistically significant at the 5% level" in uplift and "not statistically" not in uplift
    for dim in ("channel", "locale", "variant", "segment"):
        keys = page.locator(f"table.by-{dim} tr[data-key]").evaluate_all("rs => rs.map(r => r.dataset.key)")
        assert keys == [g["key"] for g in api[f"by_{dim}"]], dim
    page.get_by_text("Show the daily figures").click()
    assert page.locator('table.days tr[data-day="2026-11-03"]').inner_text().split("\t") == [
        "Nov 3, 2026", "80", "0", "0", "20"]
    shoot(page, "dashboard-campaign")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download the report (CSV)").click()
    csv_path = download.value.path()
    assert download.value.suggested_filename == "shop-spring.csv"
    api_csv = httpx.get(f"{site.base_url}/api/v1/reports/campaigns/spring", params={"program": "shop", "format": "csv"},
                        headers={"Authorization": f"Bearer {site.keys[Role.analyst]}"}).text
    assert Path(csv_path).read_text(encoding="utf-8") == api_csv


def test_a_campaign_with_nothing_sent_says_no_data_yet(site, desktop):
    page = desktop
    sign_in(page, site, role=Role.analyst, then="/dashboard/campaigns/shop/autumn")
    for chart in ("funnel", "curve"):
        svg = page.locator(f"svg#{chart}")
        assert svg.is_visible() and svg.get_attribute("data-empty") == "true"
        assert svg.locator("text").all_text_contents() == ["No data yet"]
    assert page.get_by_role("button", name="Pause").count() == 0            # analysts do not steer


def test_the_campaign_page_fits_a_phone(site, phone):
    page = phone
    sign_in(page, site, then="/dashboard/campaigns/shop/spring")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
        .map(e => e.tagName + '.' + (e.className.baseVal ?? e.className))""")
    assert wide == []                                                      # wide tables scroll inside their box
    for chart, natural in (("funnel", 640), ("curve", 720)):
        # too wide for the phone at a legible size: the chart keeps its size and scrolls inside its box
        box = page.locator(f".scroll:has(> svg#{chart})").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert page.locator(f"svg#{chart}").bounding_box()["width"] / natural >= 0.8      # ≥ 10 px text
    shoot(page, "dashboard-campaign-phone")


def test_pause_and_resume_a_running_broadcast(site, desktop):
    page = desktop
    r = httpx.post(f"{site.base_url}/api/v1/campaigns", json=campaign_spec(key="live-sale", name="Live sale", program="vip"),
                   headers={"Authorization": f"Bearer {site.keys[Role.marketer]}"}, timeout=30)
    assert r.status_code == 202, r.text
    wait_until(lambda: site.gate.entered >= 1 and site.status("live-sale") == "running", "the first page to start")

    sign_in(page, site, then="/dashboard?program=vip")
    row = page.locator('tr[data-campaign="live-sale"]')
    assert row.get_attribute("data-status") == "running"
    row.get_by_role("button", name="Pause Live sale").click()
    notice = page.get_by_role("status")
    notice.wait_for()
    assert notice.inner_text() == "Live sale: pause sent. Status now: paused."
    row = page.locator('tr[data-campaign="live-sale"]')
    assert row.get_attribute("data-status") == "paused" and row.locator(".status").inner_text() == "paused"
    assert row.get_by_role("button", name="Resume Live sale").is_visible()
    shoot(page, "dashboard-paused")

    site.gate.opened.set()               # the page in flight ends; no other starts while paused
    wait_until(lambda: site.status("live-sale") == "paused", "the campaign row to say paused")
    sent = len(site.smtp.recipients())
    assert 0 < sent < LIVE_MEMBERS
    time.sleep(0.3)
    assert len(site.smtp.recipients()) == sent

    page.get_by_role("link", name="Live sale").click()
    page.wait_for_url(f"{site.base_url}/dashboard/campaigns/vip/live-sale")
    assert page.locator("#status").get_attribute("data-status") == "paused"
    page.get_by_role("button", name="Resume").click()
    page.get_by_role("status").wait_for()
    assert page.get_by_role("status").inner_text().startswith("Live sale: resume sent. Status now: ")
    wait_until(lambda: site.status("live-sale") == "completed", "the broadcast to finish", timeout=30)
    rcpts = site.smtp.recipients()
    assert sorted(rcpts) == sorted(f"m{i}@test.example" for i in range(1, LIVE_MEMBERS + 1))    # each once
    page.reload()
    assert page.locator("#status").get_attribute("data-status") == "completed"
    assert page.get_by_role("button", name="Pause").count() == page.get_by_role("button", name="Resume").count() == 0
    assert site.api("/api/v1/reports/campaigns/live-sale", program="vip")["total"]["sent"] == LIVE_MEMBERS
    assert page.locator("svg#funnel g[data-step=reached]").get_attribute("data-count") == str(LIVE_MEMBERS)


def test_signing_out_ends_the_session(site, desktop):
    page = desktop
    sign_in(page, site, role=Role.admin)
    assert page.get_by_text("Signed in as Admin Key (admin)").is_visible()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("status").wait_for()
    assert page.get_by_role("status").inner_text() == "You are signed out."
    assert page.context.cookies() == []
    page.goto(f"{site.base_url}/dashboard")
    assert page.url == f"{site.base_url}/dashboard/login"
