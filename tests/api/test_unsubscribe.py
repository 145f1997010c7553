"""One-click unsubscribe (RFC 8058) and suppressions reported from outside the send path."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from analytics import responses
from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from app.worker import signer as make_signer
from consent.tokens import PREFERENCES, UNSUBSCRIBE, UNSUBSCRIBE_TTL_S
from storage.db import session_scope
from storage.tables import ConsentRecord, ConsentState, Delivery, Member, Response, Role, utcnow
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members


@pytest.fixture
def site(engine, tmp_path):
    program = seed_members(engine, 2)       # both opted into email/promotions
    cid = make_campaign(engine, program)
    with session_scope(engine) as s:
        d = Delivery(campaign_id=cid, member_id=1, status="sent", channel="email", locale="ru", sent_at=utcnow(),
                     provider_message_id="<d1.c1@clarion.example>")
        s.add(d)
        s.flush()
        did = d.id
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port())
    app = create_app(settings, engine=engine)
    token = make_signer(settings).sign(UNSUBSCRIBE, {"d": did}, ttl_s=UNSUBSCRIBE_TTL_S)
    core = {"Authorization": f"Bearer {create_key(engine=engine, role=Role.core)}"}
    with TestClient(app, follow_redirects=False) as client:
        yield client, f"/u/{token}", did, core, settings


def email_state(engine, member_id=1) -> str | None:
    with Session(engine) as s:
        row = s.get(ConsentState, (member_id, "email", "promotions"))
    return row.status if row else None


def test_get_shows_a_button_and_changes_nothing(site, engine):
    client, path, *_ = site
    for _ in range(3):   # link scanners, prefetchers
        r = client.get(path)
    assert r.status_code == 200 and 'method="post"' in r.text and "Отписаться" in r.text
    assert email_state(engine) == "granted"


@pytest.mark.parametrize("how", ["urlencoded", "multipart", "empty"])
def test_one_click_post_unsubscribes_with_any_body_no_redirect_no_login(site, engine, how):
    client, path, did, *_ = site
    kw = {"urlencoded": {"data": {"List-Unsubscribe": "One-Click"}},
          "multipart": {"files": {"List-Unsubscribe": (None, "One-Click")}},
          "empty": {}}[how]
    r = client.post(path, **kw)
    assert r.status_code == 200 and not r.is_redirect
    assert email_state(engine) == "revoked"
    with Session(engine) as s:
        [rec] = s.scalars(select(ConsentRecord).where(ConsentRecord.action == "revoked")).all()
        kinds = [x.kind for x in s.scalars(select(Response).where(Response.delivery_id == did))]
    assert (rec.source, rec.channel, rec.topic, rec.campaign_id) == ("unsubscribe", "email", "promotions", 1)
    assert kinds == ["unsubscribed"]


def test_unsubscribing_twice_is_one_act(site, engine):
    client, path, *_ = site
    client.post(path)
    client.post(path)
    with Session(engine) as s:
        assert len(s.scalars(select(ConsentRecord).where(ConsentRecord.action == "revoked")).all()) == 1


def test_a_link_for_another_purpose_or_tampered_gets_the_same_404(site, engine):
    client, path, did, _, settings = site
    other = make_signer(settings).sign(PREFERENCES, {"d": did}, ttl_s=60)
    answers = {client.post(p).text for p in (f"/u/{other}", path[:-2] + "xx", "/u/nonsense")}
    assert len(answers) == 1 and client.post("/u/nonsense").status_code == 404
    assert email_state(engine) == "granted"


def test_bounces_and_complaints_reported_later_suppress_the_address(site, engine):
    client, _, did, core, _ = site
    r = client.post("/api/v1/suppressions", params={"program": "shop"}, headers=core, json={"items": [
        {"channel": "email", "reason": "complaint", "address": "M1@Test.Example",
         "message_id": "<d1.c1@clarion.example>"},
        {"channel": "email", "reason": "bounce", "external_id": "M000002"},
        {"channel": "email", "reason": "bounce", "address": "nobody@test.example"},
        {"channel": "email", "reason": "complaint", "address": "m1@test.example"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"suppressed": 2, "already": 1, "complaints": 1, "unknown": [2]}
    with Session(engine) as s:
        states = {(x.member_id, x.topic): (x.status) for x in s.scalars(select(ConsentState).where(
            ConsentState.channel == "email", ConsentState.topic == "*"))}
        sources = sorted(x.source for x in s.scalars(select(ConsentRecord).where(ConsentRecord.action == "suppressed")))
        kinds = [(x.kind, x.campaign_id) for x in s.scalars(select(Response).where(Response.delivery_id == did))]
        delivery = s.get(Delivery, did)
    assert states == {(1, "*"): "suppressed", (2, "*"): "suppressed"}
    assert sources == ["bounce", "complaint"] and kinds == [("complained", delivery.campaign_id)]
    assert delivery.response_flags == responses.COMPLAINED      # the report counts it


def test_a_suppression_must_name_the_member_and_a_known_reason(site):
    client, *_, core, _ = site
    r = client.post("/api/v1/suppressions", params={"program": "shop"}, headers=core,
                    json={"items": [{"channel": "email", "reason": "annoyed"}, {"channel": "email", "reason": "bounce"}]})
    fields = [p["field"] for p in r.json()["problems"]]
    assert r.status_code == 422 and "items.0.reason" in fields and "items.1" in fields
    assert client.post("/api/v1/suppressions", params={"program": "shop"}, json={"items": []}).status_code == 401
