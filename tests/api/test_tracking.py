"""Opens and clicks over HTTP: the pixel and the click redirect against a real database (SQLite file, and
PostgreSQL when CI provides one), each response written once, machines apart from people, no open redirect,
consent untouched; and a message built by MessageBuilder, sent over SMTP, whose links resolve via the API."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from activities.messages import CampaignInfo, MessageBuilder, Target
from analytics import responses
from analytics.links import Tracker
from app.api.main import create_app
from app.settings import Settings
from app.worker import signer as make_signer
from campaigns.costs import unit_costs
from channels.email_smtp import SmtpConfig, SmtpEmailChannel
from consent.tokens import (
    PREFERENCES,
    PREFERENCES_TTL_S,
    TRACK_CLICK,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TTL_S,
)
from storage.db import make_engine, session_scope
from storage.tables import ConsentRecord, ConsentState, Delivery, Response, utcnow
from templates.render import Renderer
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members

SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")
PERSON = {"User-Agent": SAFARI}
OFFER = "https://shop.example/offer?utm_source=mail&utm_medium=email"


class Site:
    def __init__(self, engine, settings, client, delivery_id, campaign_id):
        self.engine, self.settings, self.client = engine, settings, client
        self.delivery_id, self.campaign_id = delivery_id, campaign_id
        self.signer = make_signer(settings)

    def tracker(self, delivery_id: int | None = None) -> Tracker:
        return Tracker(self.signer, self.settings.base_url, delivery_id or self.delivery_id)

    def pixel_path(self) -> str:
        return urlsplit(self.tracker().open_url()).path

    def click_path(self, url: str = OFFER, text: str = "See the offer", delivery_id: int | None = None) -> str:
        return urlsplit(self.tracker(delivery_id).click_url(url, text)).path

    def sealed(self, url: str, label: str = "1-x") -> str:
        """A click token we signed for any URL (the route must still refuse unsafe ones)."""
        return "/t/c/" + self.signer.sign(TRACK_CLICK, {"d": self.delivery_id, "u": url, "l": label}, ttl_s=60)

    def responses(self) -> list[tuple[str, str | None]]:
        with Session(self.engine) as s:
            return [(r.kind, r.detail) for r in s.scalars(
                select(Response).where(Response.delivery_id == self.delivery_id).order_by(Response.id))]

    def flags(self) -> int:
        with Session(self.engine) as s:
            return s.get(Delivery, self.delivery_id).response_flags


def make_site(engine, tmp_path, *, sent_ago: timedelta = timedelta(hours=1),
              client_ip: str = "203.0.113.9", channel: str = "email"):
    program = seed_members(engine, 2)
    cid = make_campaign(engine, program)
    with session_scope(engine) as s:
        d = Delivery(campaign_id=cid, member_id=1, status="sent", channel=channel, locale="en",
                     sent_at=utcnow() - sent_ago)
        s.add(d)
        s.flush()
        did = d.id
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url="https://clarion.example")
    app = create_app(settings, engine=engine)
    client = TestClient(app, follow_redirects=False, client=(client_ip, 50000))
    return Site(engine, settings, client, did, cid)


@pytest.fixture
def site(any_db_url, tmp_path):
    engine = make_engine(any_db_url)
    s = make_site(engine, tmp_path)
    with s.client:
        yield s
    engine.dispose()


# --- the open pixel -------------------------------------------------------------------------


def test_a_person_loading_the_pixel_three_times_is_one_open(site):
    for _ in range(3):
        r = site.client.get(site.pixel_path(), headers=PERSON)
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        assert len(r.content) == 43 and r.content.startswith(b"GIF89a")
        assert r.headers["cache-control"] == "no-store, private" and "set-cookie" not in r.headers
    assert site.responses() == [("opened", None)]
    assert site.flags() == responses.OPENED


@pytest.mark.parametrize("how, reason", [
    ("head", "head"), ("scanner", "ua:barracuda"), ("no_ua", "no_user_agent"), ("mpp", "apple_mpp")])
def test_a_machine_open_is_recorded_apart_with_its_reason(engine, tmp_path, how, reason):
    site = make_site(engine, tmp_path, client_ip="17.58.101.7" if how == "mpp" else "203.0.113.9")
    with site.client as c:
        path = site.pixel_path()
        if how == "head":
            r = c.head(path, headers=PERSON)
        else:
            ua = {"scanner": "Barracuda Sentinel (EE)", "no_ua": "", "mpp": "Mozilla/5.0"}[how]
            r = c.get(path, headers={"User-Agent": ua})
        assert r.status_code == 200
        c.get(path, headers={"User-Agent": "Mozilla/5.0"} if how == "mpp" else {"User-Agent": "curl/8.5.0"})
        assert site.responses() == [("opened_machine", reason)]
        assert site.flags() == responses.OPENED_MACHINE
        c.get(path, headers=PERSON)          # the member opens it later: a human open besides
        assert site.responses() == [("opened_machine", reason), ("opened", None)]


def test_an_open_right_after_sending_is_the_receiving_servers_scanner(engine, tmp_path):
    site = make_site(engine, tmp_path, sent_ago=timedelta(seconds=0))
    with site.client as c:
        c.get(site.pixel_path(), headers=PERSON)
        c.get(site.click_path(), headers=PERSON)
    assert site.responses() == [("opened_machine", "too_soon"), ("clicked_machine", "1-see-the-offer;too_soon")]


@pytest.mark.parametrize("channel", ["push", "telegram", "inbox"])
def test_a_tap_seconds_after_a_push_or_telegram_message_is_a_person(engine, tmp_path, channel):
    """Mail scanners fetch links on arrival; a push, Telegram or inbox message is often tapped at once."""
    site = make_site(engine, tmp_path, sent_ago=timedelta(seconds=0), channel=channel)
    with site.client as c:
        c.get(site.click_path(), headers=PERSON)
    assert site.responses() == [("clicked", "1-see-the-offer")]


def test_a_tampered_unknown_or_foreign_pixel_gets_the_same_404(site):
    good = site.pixel_path()
    unsub = site.signer.sign(UNSUBSCRIBE, {"d": site.delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
    expired = site.signer.sign("open", {"d": site.delivery_id}, ttl_s=-10)
    answers = [site.client.get(p, headers=PERSON) for p in (
        good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb"), "/t/o/nonsense", f"/t/o/{unsub}",
        f"/t/o/{expired}", "/t/o/", "/t/o/" + "A" * 5000, site.click_path().replace("/t/c/", "/t/o/"))]
    assert {(r.status_code, r.content) for r in answers} == {(404, answers[0].content)}
    assert site.responses() == []


# --- the click redirect ---------------------------------------------------------------------


def test_a_click_redirects_to_the_original_url(site):
    r = site.client.get(site.click_path(), headers=PERSON)

    assert r.status_code == 302 and r.headers["location"] == OFFER
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in r.headers


def test_a_double_click_is_counted_once_and_sets_the_opened_bit_too(site):
    path = site.click_path()
    for _ in range(2):
        assert site.client.get(path, headers=PERSON).status_code == 302

    assert site.responses() == [("clicked", "1-see-the-offer")]
    assert site.flags() == responses.CLICKED | responses.OPENED
    other = site.click_path("https://shop.example/other", "Other offer")   # another link: its own click
    site.client.get(other, headers=PERSON)
    assert site.responses() == [("clicked", "1-see-the-offer"), ("clicked", "1-other-offer")]


def test_a_scanner_following_the_link_is_a_machine_click_apart(site):
    path = site.click_path()
    assert site.client.head(path, headers=PERSON).status_code == 302
    site.client.get(path, headers={"User-Agent": "Mozilla/5.0 (compatible; Mimecast URL Protect)"})
    assert site.responses() == [("clicked_machine", "1-see-the-offer;head")]
    assert site.flags() == responses.CLICKED_MACHINE
    site.client.get(path, headers=PERSON)
    assert site.responses()[-1] == ("clicked", "1-see-the-offer")
    assert site.flags() == responses.CLICKED_MACHINE | responses.CLICKED | responses.OPENED


def test_open_redirect_attempts_get_a_404_and_no_location(site):
    unsub = site.signer.sign(UNSUBSCRIBE, {"d": site.delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
    good = site.click_path()
    paths = ["/t/c///evil.example", "/t/c/https:%2F%2Fevil.example", "/t/c/https://trusted@evil.example",
             "/t/c/%2F%2Fevil.example", "/t/c/\\\\evil.example", "/t/c/nonsense", "/t/c/", f"/t/c/{unsub}",
             good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), good + "/https://evil.example",
             site.pixel_path().replace("/t/o/", "/t/c/"),
             site.sealed("//evil.example"), site.sealed("https://trusted@evil.example"),
             site.sealed("https://user:pw@evil.example/"), site.sealed("javascript:alert(1)"),
             site.sealed("https:\\\\evil.example"), site.sealed("/relative"), site.sealed("https://evil.example\r\nX: y")]
    for path in paths:
        for method in ("GET", "HEAD"):
            r = site.client.request(method, path, headers=PERSON)
            assert r.status_code == 404, path
            assert "location" not in r.headers, path
    assert site.responses() == []


def test_an_expired_click_token_is_a_404(site):
    token = site.signer.sign(TRACK_CLICK, {"d": site.delivery_id, "u": OFFER, "l": "1-x"}, ttl_s=-1)
    assert site.client.get(f"/t/c/{token}", headers=PERSON).status_code == 404


def test_following_tracked_links_anywhere_leaves_consent_untouched(site):
    base = site.settings.base_url
    unsub = site.signer.sign(UNSUBSCRIBE, {"d": site.delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
    prefs = site.signer.sign(PREFERENCES, {"m": 1}, ttl_s=PREFERENCES_TTL_S)

    def ledger() -> tuple:
        with Session(site.engine) as s:
            return (s.scalar(select(func.count()).select_from(ConsentRecord)),
                    sorted((x.member_id, x.channel, x.topic, x.status) for x in s.scalars(select(ConsentState))))

    before = ledger()
    for target in (f"{base}/u/{unsub}", f"{base}/p/{prefs}", OFFER, "https://shop.example/unsubscribe?all=1"):
        path = urlsplit(site.tracker().click_url(target, "x")).path       # sealed by hand: rewriting skips /u/ /p/
        site.client.get(path, headers=PERSON, follow_redirects=True)
    site.client.get(site.pixel_path(), headers=PERSON)
    assert ledger() == before and before[1] == [(1, "email", "promotions", "granted"),
                                                (2, "email", "promotions", "granted")]


def test_a_link_of_a_delivery_that_is_gone_still_redirects_and_records_nothing(site):
    r = site.client.get(site.click_path(delivery_id=999_999), headers=PERSON)
    assert r.status_code == 302 and r.headers["location"] == OFFER
    assert site.client.get(urlsplit(site.tracker(999_999).open_url()).path, headers=PERSON).status_code == 200
    with Session(site.engine) as s:
        assert s.scalar(select(func.count()).select_from(Response)) == 0


# --- end to end: built by MessageBuilder, sent over SMTP, resolved by the API --------------------


def test_a_sent_email_has_tracked_links_that_resolve_to_the_original_urls(engine, tmp_path, smtp_server):
    site = make_site(engine, tmp_path)
    builder = MessageBuilder(renderer=Renderer(), signer=site.signer, base_url=site.settings.base_url,
                             unsubscribe_mailto="unsubscribe@clarion.example")
    info = CampaignInfo(id=site.campaign_id, key="spring", name="Spring", program_id=1,
                        program={"key": "shop", "name": "Shop & Co", "currency": "RUB", "time_zone": "UTC",
                                 "brand": {}},
                        template=lambda step, variant=None: ("weekend_offer", None), costs=unit_costs({}))
    target = Target(delivery_id=site.delivery_id, member_id=1, channel="email", locale="en",
                    address="m1@test.example", context={"member": {"first_name": "Name1"}})
    msg, _ = builder.build(info, target)
    channel = SmtpEmailChannel(SmtpConfig(host=smtp_server.host, port=smtp_server.port, timeout=5,
                                          sender="Shop <news@shop.example>"))

    async def send() -> None:
        await channel.send(msg)
        await channel.aclose()

    asyncio.run(send())
    [received] = smtp_server.messages
    email = received.message
    html = email.get_body(("html",)).get_content()
    text = email.get_body(("plain",)).get_content()
    base = re.escape(site.settings.base_url)
    html_links = re.findall(rf'href="({base}/t/c/[A-Za-z0-9_-]+)"', html)
    text_links = re.findall(rf"{base}/t/c/[A-Za-z0-9_-]+", text)
    assert len(html_links) == 1 and text_links == html_links            # the offer, the same link in both parts
    assert re.search(rf'href="{base}/u/[A-Za-z0-9_-]+">Unsubscribe</a>', html)
    assert re.search(rf"Unsubscribe: {base}/u/", text)
    assert email["List-Unsubscribe"].startswith(f"<{site.settings.base_url}/u/")
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [pixel] = re.findall(rf'<img src="({base}/t/o/[A-Za-z0-9_-]+)" width="1" height="1"', html)
    with site.client as c:
        r = c.get(urlsplit(html_links[0]).path, headers=PERSON)
        assert (r.status_code, r.headers["location"]) == (302, "https://shop.clarion.example/weekend")
        assert c.get(urlsplit(pixel).path, headers=PERSON).status_code == 200
    assert site.responses() == [("clicked", "1-see-the-offer"), ("opened", None)]
