"""The preference center over HTTP (TestClient): what the page shows for a member's consent states, what a
save writes to the ledger (only what changed, with its proof), double opt-in, quiet hours, devices,
Telegram linking, and the one 404 for every link that does not open a page."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from app.api.main import create_app
from app.settings import Settings
from consent import ledger
from consent.tokens import PREFERENCES, PREFERENCES_TTL_S, UNSUBSCRIBE
from members.service import ensure_program
from storage.db import session_scope
from storage.tables import (
    ChannelAccount,
    Confirmation,
    ConsentAction,
    ConsentRecord,
    ConsentSource,
    ConsentState,
    Member,
    MemberLink,
    PushToken,
)
from tests.conftest import free_port

UA = "Mozilla/5.0 (Linux; Android 14) PreferenceTest/1.0"
EN_WORDING = ("I agree to receive advertising and information messages from Shop & Co on the channels and topics "
              "I chose. I can change this or unsubscribe at any time.")


# --- helpers ---------------------------------------------------------------------------------


class _Forms(HTMLParser):
    """The page's forms as a browser would submit them, and the checkboxes with their state."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.boxes: dict[str, bool] = {}
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._form = {"fields": {}, "boxes": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None:
            name, kind = a.get("name") or "", a.get("type") or "text"
            if kind == "checkbox":
                self._form["boxes"][name] = "checked" in a
                self.boxes[name] = "checked" in a
            else:
                self._form["fields"][name] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def parse(html: str) -> _Forms:
    p = _Forms()
    p.feed(html)
    return p


def form_data(html: str, action: str = "save", *, tick: tuple[str, ...] = (), untick: tuple[str, ...] = (),
              **fields: str) -> dict[str, str]:
    """What the browser posts from the form of ``action`` after ticking/unticking some boxes."""
    form = next(f for f in parse(html).forms if f["fields"].get("action") == action)
    boxes = {**form["boxes"], **dict.fromkeys(tick, True), **dict.fromkeys(untick, False)}
    return {**form["fields"], **fields, **{name: "1" for name, on in boxes.items() if on}}


@pytest.fixture
def app(engine, tmp_path):
    return create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)


@pytest.fixture
def client(app):
    with TestClient(app, headers={"User-Agent": UA}) as c:
        yield c


@pytest.fixture
def program_id(engine) -> int:
    return ensure_program(engine=engine, key="shop", name="Shop & Co").id or 0


def add_member(engine, program_id: int, **over: Any) -> int:
    data = {"external_id": "A1", "locale": "en", "email": "anna@example.com", "phone": "+79123456789", **over}
    with session_scope(engine) as s:
        m = Member(program_id=program_id, **data)
        s.add(m)
        s.flush()
        return m.id or 0


def give(engine, program_id: int, member_id: int, *acts: tuple[str, str, str]) -> None:
    with session_scope(engine) as s:
        ledger.record(session=s, program_id=program_id, acts=[
            ledger.ConsentAct(member_id=member_id, channel=c, topic=t, action=ConsentAction(a),
                              source=ConsentSource.import_) for c, t, a in acts])


def link(app, member_id: int, **kw: Any) -> str:
    return "/p/" + app.state.signer.sign(PREFERENCES, {"m": member_id}, ttl_s=PREFERENCES_TTL_S, **kw)


def records(engine, member_id: int, after: int = 0) -> list[ConsentRecord]:
    with Session(engine) as s:
        return list(s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == member_id,
                                                          ConsentRecord.id > after).order_by(ConsentRecord.id)))


def last_id(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.max(ConsentRecord.id))) or 0


def state(engine, member_id: int, channel: str, topic: str) -> str | None:
    with Session(engine) as s:
        row = s.get(ConsentState, (member_id, channel, topic))
        return row.status if row else None


def counts(engine) -> dict[str, int]:
    with Session(engine) as s:
        return {t.__name__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (ConsentRecord, ConsentState, Confirmation, MemberLink, PushToken)}


# --- what the page shows ---------------------------------------------------------------------


def test_page_checks_the_boxes_of_the_members_current_consents(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("email", "promotions", "confirmed"), ("email", "news", "requested"),
         ("sms", "promotions", "granted"), ("sms", "news", "revoked"), ("receipt", "news", "revoked"),
         ("whatsapp", "*", "revoked"), ("whatsapp", "promotions", "granted"))
    with session_scope(engine) as s:        # the confirmation email/news waits for
        s.add(Confirmation(program_id=program_id, member_id=m, channel="email", address="anna@example.com",
                           topics=["news"], status="sent"))
    r = client.get(link(app, m))
    assert r.status_code == 200
    assert parse(r.text).boxes == {
        "c.email.promotions": True, "c.email.news": True,            # requested: ticked, waiting
        "c.sms.promotions": True, "c.sms.news": False,
        "c.whatsapp.promotions": False, "c.whatsapp.news": False,    # the whole channel revoked
        "c.receipt.promotions": True, "c.receipt.news": False,       # opt-out: on unless revoked
        "c.inbox.promotions": True, "c.inbox.news": True,
        "c.direct_mail.promotions": True, "c.direct_mail.news": True,
    }   # no Telegram chat, no push device: those channels are not offered
    assert r.text.count("waiting for confirmation") == 1
    assert 'aria-describedby="d-email-news"' in r.text and "Shop &amp; Co" in r.text
    assert EN_WORDING.replace("&", "&amp;") in r.text and "clarion-default-1" in r.text


def test_every_checkbox_has_a_label_and_channels_are_fieldsets_with_legends(app, client, engine, program_id):
    m = add_member(engine, program_id)
    html = client.get(link(app, m)).text
    boxes = parse(html).boxes
    assert boxes
    for name in boxes:
        box_id = "c-" + name[2:].replace(".", "-")
        assert f'id="{box_id}"' in html and f'<label for="{box_id}">' in html
    assert html.count("<fieldset") == html.count("<legend") >= 6
    assert '<label for="quiet_from">' in html and '<label for="quiet_to">' in html


@pytest.mark.parametrize(("locale", "lang", "texts"), [
    ("ru-RU", "ru", ("Ваши подписки", "Акции и предложения", "Электронная почта", "Сохранить выбор",
                     "Я согласен(на) получать рекламные", "Отписаться от всего", "Тихие часы")),
    ("en-GB", "en", ("Your subscriptions", "Offers and promotions", "Email", "Save my choices",
                     "I agree to receive advertising", "Unsubscribe from everything", "Quiet hours")),
    ("de-DE", "en", ("Your subscriptions", "Offers and promotions")),      # no German texts: English
])
def test_page_speaks_the_members_language(app, client, engine, program_id, locale, lang, texts):
    m = add_member(engine, program_id, locale=locale)
    html = client.get(link(app, m)).text
    assert f'<html lang="{lang}">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    for text in texts:
        assert text in html


def test_page_loads_nothing_from_elsewhere_and_sends_security_headers(app, client, engine, program_id):
    m = add_member(engine, program_id)
    r = client.get(link(app, m))
    html = r.text
    assert "<script" not in html and "<link" not in html and "<img" not in html and "://" not in html
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "style-src 'sha256-" in csp
    for resp in (r, client.get("/p/nope"), client.post(link(app, m), data=form_data(html), follow_redirects=False)):
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert resp.headers["cache-control"] == "no-store"
        assert resp.headers["x-robots-tag"].startswith("noindex")
        assert resp.headers["content-security-policy"] == csp


# --- saving ----------------------------------------------------------------------------------


def test_one_toggle_writes_exactly_one_ledger_row_with_its_proof(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("sms", "promotions", "granted"))
    url = link(app, m)
    before = last_id(engine)
    r = client.post(url, data=form_data(client.get(url).text, tick=("c.sms.news",)), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("?done=saved")
    [row] = records(engine, m, before)
    assert (row.channel, row.topic, row.action, row.source) == ("sms", "news", "granted", "web")
    assert row.ip == "testclient" and row.user_agent == UA
    assert row.wording_version == "clarion-default-1"
    assert row.text_hash == hashlib.sha256(EN_WORDING.encode()).hexdigest()
    assert "Your choices are saved." in client.get(r.headers["location"]).text
    # the same form again changes nothing
    client.post(url, data=form_data(client.get(url).text))
    assert records(engine, m, row.id or 0) == []


def test_unticking_revokes_and_the_user_agent_is_cut_to_512(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("sms", "news", "granted"), ("inbox", "promotions", "granted"))
    url, before = link(app, m), last_id(engine)
    client.post(url, data=form_data(client.get(url).text, untick=("c.sms.news", "c.receipt.promotions")),
                headers={"User-Agent": "x" * 2000})
    rows = records(engine, m, before)
    assert {(r.channel, r.topic, r.action) for r in rows} == {("sms", "news", "revoked"),
                                                              ("receipt", "promotions", "revoked")}
    assert all(len(r.user_agent or "") == 512 for r in rows)


def test_email_opt_in_under_double_opt_in_is_requested_and_a_confirmation_is_queued(app, client, engine, program_id):
    m = add_member(engine, program_id, locale="ru")
    url, before = link(app, m), last_id(engine)
    r = client.post(url, data=form_data(client.get(url).text, tick=("c.email.promotions", "c.sms.promotions")))
    rows = records(engine, m, before)
    assert {(x.channel, x.topic, x.action) for x in rows} == {("email", "promotions", "requested"),
                                                              ("sms", "promotions", "granted")}
    assert state(engine, m, "email", "promotions") == "requested"      # not consent until confirmed
    with Session(engine) as s:
        [c] = s.scalars(select(Confirmation)).all()
    assert (c.channel, c.address, c.topics, c.status) == ("email", "anna@example.com", ["promotions"], "pending")
    assert "confirm=email" in str(r.url)
    assert "Мы отправили вам письмо со ссылкой для подтверждения" in r.text
    assert "ждёт подтверждения" in r.text and parse(r.text).boxes["c.email.promotions"]


def test_unticking_a_topic_waiting_for_confirmation_revokes_it_and_the_link_expires(app, client, engine, program_id):
    m = add_member(engine, program_id)
    url = link(app, m)
    client.post(url, data=form_data(client.get(url).text, tick=("c.email.news",)))
    client.post(url, data=form_data(client.get(url).text, untick=("c.email.news",)))
    assert state(engine, m, "email", "news") == "revoked"
    with Session(engine) as s:
        assert s.scalar(select(Confirmation.status)) == "expired"


def test_sms_with_double_opt_in_set_by_the_program_asks_for_a_reply(app, client, engine, program_id):
    from members.service import set_program_settings

    set_program_settings(engine=engine, key="shop", data={"double_opt_in": {"email": True, "sms": True}})
    m = add_member(engine, program_id)
    url = link(app, m)
    r = client.post(url, data=form_data(client.get(url).text, tick=("c.sms.news",)))
    assert state(engine, m, "sms", "news") == "requested"
    assert "Reply YES to finish subscribing." in r.text


def test_unsubscribe_from_everything_revokes_every_channel(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("sms", "promotions", "granted"), ("telegram", "*", "revoked"))
    url = link(app, m)
    client.post(url, data=form_data(client.get(url).text, tick=("c.email.news",)))   # a pending confirmation
    before = last_id(engine)
    r = client.post(url, data=form_data(client.get(url).text, "unsubscribe_all"))
    assert r.status_code == 200 and "done=unsubscribed" in str(r.url)
    rows = records(engine, m, before)
    assert {(x.channel, x.topic, x.action, x.source) for x in rows} == {
        (c, "*", "revoked", "web") for c in ("email", "sms", "whatsapp", "push", "receipt", "inbox", "direct_mail")
    } | {("email", "news", "revoked", "web")}                       # the topic waiting for confirmation too
    assert all(x.wording_version and x.text_hash and x.user_agent == UA for x in rows)
    assert "You are unsubscribed from everything." in r.text
    assert not any(parse(r.text).boxes.values())
    with Session(engine) as s:
        assert s.scalar(select(Confirmation.status)) == "expired"   # the link sent before confirms nothing
    client.post(url, data=form_data(r.text, "unsubscribe_all"))
    assert records(engine, m, rows[-1].id or 0) == []               # nothing left to revoke


def test_subscribing_again_after_unsubscribing_brings_back_only_the_ticked_topic(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("sms", "promotions", "granted"), ("sms", "news", "granted"), ("sms", "*", "revoked"))
    url, before = link(app, m), last_id(engine)
    html = client.get(url).text
    assert "You unsubscribed from everything on this channel." in html
    client.post(url, data=form_data(html, tick=("c.sms.news",)))
    assert {(x.channel, x.topic, x.action) for x in records(engine, m, before)} == {
        ("sms", "*", "granted"), ("sms", "promotions", "revoked")}     # news was granted already
    assert (state(engine, m, "sms", "news"), state(engine, m, "sms", "promotions")) == ("granted", "revoked")


def test_a_suppressed_address_is_shown_but_not_changed(app, client, engine, program_id):
    m = add_member(engine, program_id)
    give(engine, program_id, m, ("email", "*", "suppressed"))
    url, before = link(app, m), last_id(engine)
    html = client.get(url).text
    assert "could not be delivered" in html and "<fieldset disabled>" in html
    client.post(url, data={**form_data(html), "c.email.promotions": "1"})
    assert records(engine, m, before) == []


def test_quiet_hours_are_saved_and_cleared(app, client, engine, program_id):
    m = add_member(engine, program_id, preferences={"other": 1})
    url, before = link(app, m), last_id(engine)
    r = client.post(url, data=form_data(client.get(url).text, quiet_from="22:30", quiet_to="08:00"))
    assert 'value="22:30"' in r.text and 'value="08:00"' in r.text
    with Session(engine) as s:
        assert s.get(Member, m).preferences == {"other": 1, "quiet_hours": {"from": "22:30", "to": "08:00"}}
    assert records(engine, m, before) == []       # quiet hours are not consent
    client.post(url, data=form_data(client.get(url).text, quiet_from="", quiet_to=""))
    with Session(engine) as s:
        assert s.get(Member, m).preferences == {"other": 1}


@pytest.mark.parametrize(("times", "field", "message"), [
    ({"quiet_from": "25:00", "quiet_to": "08:00"}, "quiet_from", "Enter a time as HH:MM"),
    ({"quiet_from": "22:00", "quiet_to": "soon"}, "quiet_to", "Enter a time as HH:MM"),
    ({"quiet_from": "22:00", "quiet_to": ""}, "quiet_to", "Enter both times"),
    ({"quiet_from": "", "quiet_to": "07:00"}, "quiet_from", "Enter both times"),
    ({"quiet_from": "07:00", "quiet_to": "07:00"}, "quiet_to", "The end must differ"),
])
def test_bad_quiet_hours_are_refused_next_to_the_field_and_nothing_is_saved(app, client, engine, program_id,
                                                                            times, field, message):
    m = add_member(engine, program_id)
    url, before = link(app, m), last_id(engine)
    r = client.post(url, data=form_data(client.get(url).text, tick=("c.sms.news",), **times))
    assert r.status_code == 422
    assert f'id="{field}" name="{field}"' in r.text and f'aria-describedby="e-{field} quiet-hint"' in r.text
    error = r.text.split(f'<p class="field-error" id="e-{field}">')[1].split("</p>")[0]
    assert error.startswith(message)
    assert parse(r.text).boxes["c.sms.news"]          # what the member ticked is kept on the page
    assert "Nothing was saved" in r.text and records(engine, m, before) == []
    with Session(engine) as s:
        assert s.get(Member, m).preferences is None


def test_a_save_after_the_wording_changed_saves_nothing(app, client, engine, program_id):
    from members.service import set_program_settings

    m = add_member(engine, program_id)
    url, before = link(app, m), last_id(engine)
    html = client.get(url).text
    set_program_settings(engine=engine, key="shop",
                         data={"consent_wording": {"version": "v2", "text": "New {program}"}})
    r = client.post(url, data=form_data(html, tick=("c.sms.news",)))
    assert r.status_code == 409 and "The consent text has changed" in r.text and "New Shop &amp; Co" in r.text
    for forged in ({"c.sms.news": "1"}, {"action": "other", "c.sms.news": "1"}):   # no proof of what was shown
        assert client.post(url, data=forged).status_code == 409
    assert records(engine, m, before) == []
    client.post(url, data=form_data(r.text, tick=("c.sms.news",)))
    [row] = records(engine, m, before)
    assert row.wording_version == "v2" and row.text_hash == hashlib.sha256(b"New Shop & Co").hexdigest()


# --- devices and Telegram --------------------------------------------------------------------


def test_removing_a_device_deletes_that_push_token_only(app, client, engine, program_id):
    m = add_member(engine, program_id)
    other = add_member(engine, program_id, external_id="B2")
    with session_scope(engine) as s:
        s.add_all([PushToken(member_id=m, token="tok-aaaaaa-111111", platform="android",
                             created_at=datetime(2025, 3, 14, tzinfo=UTC)),
                   PushToken(member_id=m, token="tok-bbbbbb-222222", platform="ios"),
                   PushToken(member_id=other, token="tok-cccccc-333333")])
    url = link(app, m)
    html = client.get(url).text
    assert "Android, registered Mar 14, 2025, token …111111" in html and "…222222" in html
    assert "tok-aaaaaa" not in html                        # only the last 6 characters are shown
    assert "c.push.promotions" in parse(html).boxes
    with Session(engine) as s:
        ids = {t.token[-6:]: t.id for t in s.scalars(select(PushToken))}
    r = client.post(url, data=form_data(html, "remove_device", device=str(ids["333333"])), follow_redirects=False)
    assert r.headers["location"] == url                   # another member's device: nothing happens
    r = client.post(url, data={"action": "remove_device", "device": str(ids["111111"])})
    assert "The device is removed." in r.text and "…111111" not in r.text
    with Session(engine) as s:
        assert sorted(t.token[-6:] for t in s.scalars(select(PushToken))) == ["222222", "333333"]


def test_telegram_is_offered_as_a_one_time_link_when_the_program_has_a_bot(app, client, engine, program_id):
    m = add_member(engine, program_id, locale="ru")
    url = link(app, m)
    assert "Подключить Telegram" not in client.get(url).text             # no bot: nothing to link
    with session_scope(engine) as s:
        s.add(ChannelAccount(program_id=program_id, channel="telegram", provider="telegram",
                             config={"bot_token": "123:" + "A" * 30, "bot_username": "shop_bot",
                                     "webhook_secret": "s" * 20}))
    html = client.get(url).text
    assert "Подключить Telegram" in html and counts(engine)["MemberLink"] == 0   # GET creates no link
    r = client.post(url, data=form_data(html, "link_telegram", **{"tg.promotions": "1", "tg.bogus": "1"}))
    assert r.status_code == 200 and "Открыть Telegram" in r.text
    href = r.text.split('class="button" href="')[1].split('"')[0]
    assert href.startswith("https://t.me/shop_bot?start=")
    with Session(engine) as s:
        [row] = s.scalars(select(MemberLink)).all()
    assert (row.member_id, row.channel, row.topics) == (m, "telegram", ["promotions"])
    with session_scope(engine) as s:
        s.get(Member, m).telegram_chat_id = "4242"
    html = client.get(url).text
    assert "Ваш Telegram подключён." in html and "Подключить Telegram" not in html
    assert "c.telegram.promotions" in parse(html).boxes


# --- links that open nothing, and GET -------------------------------------------------------


def test_every_bad_link_gets_the_same_404_and_changes_nothing(app, client, engine, program_id):
    m = add_member(engine, program_id)
    erased = add_member(engine, program_id, external_id="E1")
    with session_scope(engine) as s:
        s.get(Member, erased).erased_at = datetime.now(UTC)
    signer = app.state.signer
    good = link(app, m)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    bad = {
        "forged": "/p/" + "A" * 60,
        "tampered": tampered,
        "expired": "/p/" + signer.sign(PREFERENCES, {"m": m}, ttl_s=60, now=time.time() - 3600),
        "other purpose": "/p/" + signer.sign(UNSUBSCRIBE, {"m": m}, ttl_s=3600),
        "unknown member": link(app, 999_999),
        "erased member": link(app, erased),
        "no member": "/p/" + signer.sign(PREFERENCES, {"d": m}, ttl_s=3600),
    }
    before = counts(engine)
    bodies = set()
    for name, url in bad.items():
        for r in (client.get(url), client.post(url, data={"action": "unsubscribe_all"}),
                  client.post(url, data={"action": "save", "c.sms.news": "1"})):
            assert r.status_code == 404, name
            bodies.add(r.text)
    assert len(bodies) == 1
    [body] = bodies
    assert "This link is not valid" in body and "anna" not in body and "Shop" not in body
    assert counts(engine) == before


def test_get_never_changes_anything(app, client, engine, program_id):
    m = add_member(engine, program_id)
    with session_scope(engine) as s:
        s.add(ChannelAccount(program_id=program_id, channel="telegram", provider="telegram",
                             config={"bot_username": "shop_bot"}))
    url = link(app, m)
    before = counts(engine)
    for query in ("", "?done=saved", "?confirm=email", "?action=unsubscribe_all", "?c.sms.news=1&action=save"):
        assert client.get(url + query).status_code == 200
    assert client.head(url).status_code in (200, 405)
    assert counts(engine) == before
    assert "Your choices are saved." not in client.get(url + "?done=bogus").text
