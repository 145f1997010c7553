"""Member links that must not work, and links used again: an expired, forged, foreign-secret or preview
(``PREVIEW``) unsubscribe link; a confirmation link forged, expired, for another purpose or for a request
that does not exist; a preference-center form posted twice; a confirmation pressed twice at once. Each bad
link gets the same 404 and changes no table; a replay does nothing the first use did not.

Already covered elsewhere (not repeated): tampered and other-purpose /u (tests/api/test_unsubscribe.py), every
bad /p link (test_preferences.py), tampered, expired-request and stale /c and the second press
(test_double_opt_in.py), tampered, expired and foreign /t/o and /t/c, double clicks and repeated pixels
(test_tracking.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import Session

from app.previews import PREVIEW_TOKEN
from consent import ledger
from consent.tokens import (
    CONFIRM_EMAIL,
    CONFIRM_EMAIL_TTL_S,
    PREFERENCES,
    PREFERENCES_TTL_S,
    UNSUBSCRIBE,
    Signer,
)
from members.profile import ConsentGrant, MemberIn
from members.service import upsert_members
from storage.db import session_scope
from storage.tables import Confirmation, ConsentRecord, Delivery, utcnow
from tests.api.test_preferences import form_data
from tests.badinput.conftest import counts
from tests.factories import make_campaign

HOUR = 3600


def email_states(engine, member_id: int = 1) -> dict[str, str]:
    with Session(engine) as s:
        return ledger.states_for(session=s, member_ids=[member_id], channel="email").get(member_id, {})


def bad_links(api, purpose: str, payload: dict) -> dict[str, str]:
    signer = api.client.app.state.signer
    return {
        "expired": signer.sign(purpose, payload, ttl_s=HOUR, now=time.time() - 2 * HOUR),
        "expired a second ago": signer.sign(purpose, payload, ttl_s=1, now=time.time() - 2),
        "another deployment's secret": Signer(b"another-deployment-secret").sign(purpose, payload, ttl_s=HOUR),
        "a preview's link": PREVIEW_TOKEN,
        "forged": "A" * 64,
        "SQL": "' OR 1=1 --",
    }


def sent_email(api, member_id: int = 1) -> int:
    cid = make_campaign(api.engine, api.program_id)
    with session_scope(api.engine) as s:
        d = Delivery(campaign_id=cid, member_id=member_id, status="sent", channel="email", locale="en",
                     sent_at=utcnow())
        s.add(d)
        s.flush()
        return d.id or 0


async def at_once(api, n: int, method: str, path: str, **kw) -> list[httpx.Response]:
    """``n`` identical requests in flight together (sync routes run on the threadpool: really at once)."""
    transport = httpx.ASGITransport(app=api.client.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://clarion.example") as client:
        return await asyncio.gather(*[client.request(method, path, **kw) for _ in range(n)])


def ledger_rows(engine, member_id: int) -> list[tuple[str, str, str]]:
    with Session(engine) as s:
        return [(r.channel, r.topic, r.action) for r in s.scalars(
            select(ConsentRecord).where(ConsentRecord.member_id == member_id).order_by(ConsentRecord.id))]


def test_an_expired_forged_or_preview_unsubscribe_link_gets_the_404_and_unsubscribes_nobody(api):
    did = sent_email(api)
    before, states = counts(api.engine), email_states(api.engine)
    bodies = set()
    for name, token in bad_links(api, UNSUBSCRIBE, {"d": did}).items():
        for r in (api.client.get(f"/u/{token}"), api.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})):
            assert r.status_code == 404, name
            bodies.add(r.text)
    assert len(bodies) == 1
    assert counts(api.engine) == before and email_states(api.engine) == states == {"promotions": "granted"}


@pytest.fixture
def requested(api) -> int:
    """M000001 asked for news by email under double opt-in: a confirmation is waiting."""
    upsert_members(engine=api.engine, program_id=api.program_id, items=[(None, "M000001", MemberIn(
        email="m1@test.example", locale="en",
        consents=[ConsentGrant(channel="email", topic="news", action="requested")]))])
    with Session(api.engine) as s:
        return s.scalar(select(Confirmation.id))


def test_a_forged_expired_or_foreign_confirmation_link_confirms_nothing(api, requested):
    signer = api.client.app.state.signer
    links = {**bad_links(api, CONFIRM_EMAIL, {"c": requested}),
             "a preference-center token": signer.sign(PREFERENCES, {"c": requested}, ttl_s=HOUR),
             "an unsubscribe token": signer.sign(UNSUBSCRIBE, {"c": requested}, ttl_s=HOUR),
             "a request that does not exist": signer.sign(CONFIRM_EMAIL, {"c": requested + 1}, ttl_s=HOUR),
             "no request in it": signer.sign(CONFIRM_EMAIL, {"m": 1}, ttl_s=HOUR)}
    before, states = counts(api.engine), email_states(api.engine)
    for name, token in links.items():
        for r in (api.client.get(f"/c/{token}"), api.client.post(f"/c/{token}")):
            assert r.status_code == 404, name
            assert "This link is not valid" in r.text
    assert counts(api.engine) == before and email_states(api.engine) == states
    assert states["news"] == "requested"
    with Session(api.engine) as s:
        assert s.get(Confirmation, requested).status == "pending"


async def test_a_one_click_unsubscribe_posted_several_times_at_once_is_one_act(api):
    token = api.client.app.state.signer.sign(UNSUBSCRIBE, {"d": sent_email(api)}, ttl_s=HOUR)
    answers = await at_once(api, 6, "POST", f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert [a.status_code for a in answers] == [200] * 6
    assert ledger_rows(api.engine, 1) == [("email", "promotions", "granted"), ("email", "promotions", "revoked")]


async def test_a_confirmation_pressed_twice_at_once_confirms_once(api, requested):
    token = api.client.app.state.signer.sign(CONFIRM_EMAIL, {"c": requested}, ttl_s=CONFIRM_EMAIL_TTL_S)
    answers = await at_once(api, 4, "POST", f"/c/{token}")
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
    with Session(api.engine) as s:
        confirmed = s.scalars(select(ConsentRecord.topic).where(ConsentRecord.action == "confirmed")).all()
    assert sorted(confirmed) == ["*", "news"]          # one act each, not one per press
    assert email_states(api.engine)["news"] == "confirmed"


def test_a_preference_form_posted_twice_writes_its_change_once(api):
    url = "/p/" + api.client.app.state.signer.sign(PREFERENCES, {"m": 2}, ttl_s=PREFERENCES_TTL_S)
    page = api.client.get(url).text
    changed = form_data(page, untick=("c.email.promotions",))
    everything = form_data(page, "unsubscribe_all")
    for form in (changed, everything):
        first = api.client.post(url, data=form, follow_redirects=False)
        assert first.status_code == 303, first.text
        after_first = counts(api.engine)
        again = api.client.post(url, data=form, follow_redirects=False)       # the same bytes, replayed
        assert again.status_code == 303
        assert counts(api.engine) == after_first
    assert email_states(api.engine, 2)["promotions"] == "revoked"


async def test_a_preference_form_posted_several_times_at_once_writes_its_change_once(api):
    url = "/p/" + api.client.app.state.signer.sign(PREFERENCES, {"m": 2}, ttl_s=PREFERENCES_TTL_S)
    page = api.client.get(url).text
    answers = await at_once(api, 5, "POST", url, data=form_data(page, untick=("c.email.promotions",)))
    assert [a.status_code for a in answers] == [303] * 5
    assert ledger_rows(api.engine, 2) == [("email", "promotions", "granted"), ("email", "promotions", "revoked")]
    answers = await at_once(api, 5, "POST", url, data=form_data(page, "unsubscribe_all"))
    assert [a.status_code for a in answers] == [303] * 5
    revoked = [row for row in ledger_rows(api.engine, 2) if row[1] == "*"]
    assert len(revoked) == len(set(revoked)) == 8          # each channel once
