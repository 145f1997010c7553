"""The program's Telegram bot calling Clarion: linking by deep link, /stop, blocking, replies; checked with
the secret token Telegram sends in X-Telegram-Bot-Api-Secret-Token."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from channels.account_store import set_account
from storage.db import session_scope
from storage.tables import ConsentRecord, ConsentState, Delivery, Member, Response, Role, utcnow
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members

SECRET = "w" * 40
HOOK = "/webhooks/telegram/shop"


@pytest.fixture
def bot(engine, tmp_path):
    program_id = seed_members(engine, 2)
    set_account(engine=engine, program="shop", channel="telegram", provider="telegram",
                config={"bot_token": "123456789:AAE" + "x" * 32, "bot_username": "clarion_test_bot",
                        "webhook_secret": SECRET})
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    core = create_key(engine=engine, role=Role.core)
    with Session(engine) as s:
        member_id = s.scalar(select(Member.id).where(Member.external_id == "M000001"))
    with TestClient(app) as client:
        yield client, core, member_id, program_id


def link(client, core: str, topics=("promotions", "news")) -> str:
    r = client.post("/api/v1/members/M000001/telegram-link", params={"program": "shop"},
                    json={"topics": list(topics)}, headers={"Authorization": f"Bearer {core}"})
    assert r.status_code == 200, r.text
    url = urlparse(r.json()["url"])
    assert (url.scheme, url.netloc, url.path) == ("https", "t.me", "/clarion_test_bot")
    return parse_qs(url.query)["start"][0]


def update(text: str | None = None, *, chat: int = 4242, update_id: int = 1, kicked: bool = False) -> dict:
    user = {"id": chat, "is_bot": False, "first_name": "Anna"}
    if kicked:
        return {"update_id": update_id, "my_chat_member": {
            "chat": {"id": chat, "type": "private"}, "from": user, "date": 1700000000,
            "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True, "first_name": "Bot"}},
            "new_chat_member": {"status": "kicked", "until_date": 0,
                                "user": {"id": 1, "is_bot": True, "first_name": "Bot"}}}}
    return {"update_id": update_id, "message": {"message_id": update_id, "date": 1700000000, "text": text,
                                                "chat": {"id": chat, "type": "private"}, "from": user}}


def send(client, body: dict, secret: str | None = SECRET):
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
    return client.post(HOOK, json=body, headers=headers)


def telegram_states(engine, member_id) -> dict[str, str]:
    with Session(engine) as s:
        return {r.topic: r.status for r in s.scalars(select(ConsentState).where(
            ConsentState.member_id == member_id, ConsentState.channel == "telegram"))}


def test_start_with_the_deep_link_ties_the_chat_to_the_member_and_grants_the_topics(bot, engine):
    client, core, member_id, _ = bot
    token = link(client, core)
    assert len(token) <= 64 and all(c.isalnum() or c in "_-" for c in token)
    r = send(client, update(f"/start {token}"))
    assert r.json() == {"ok": True, "handled": "start", "linked": True}
    with Session(engine) as s:
        assert s.get(Member, member_id).telegram_chat_id == "4242"
        sources = {r.source for r in s.scalars(select(ConsentRecord).where(ConsentRecord.channel == "telegram"))}
    assert telegram_states(engine, member_id) == {"*": "granted", "promotions": "granted", "news": "granted"}
    assert sources == {"telegram"}


def test_a_link_works_once_and_a_forged_one_never(bot, engine):
    client, core, member_id, _ = bot
    token = link(client, core)
    send(client, update(f"/start {token}"))
    again = send(client, update(f"/start {token}", chat=999, update_id=2))
    forged = send(client, update("/start " + token[:-2] + "zz", chat=999, update_id=3))
    assert again.json()["linked"] is False and forged.json()["linked"] is False
    with Session(engine) as s:
        assert s.get(Member, member_id).telegram_chat_id == "4242"
        assert s.scalar(select(Member.id).where(Member.telegram_chat_id == "999")) is None


def test_an_expired_link_links_nothing(bot, engine):
    client, core, member_id, _ = bot
    token = link(client, core)
    from storage.tables import MemberLink
    with session_scope(engine) as s:
        for row in s.scalars(select(MemberLink)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert send(client, update(f"/start {token}")).json()["linked"] is False
    assert telegram_states(engine, member_id) == {}


@pytest.mark.parametrize("secret", [None, "w" * 39, "x" * 40])
def test_updates_without_the_right_secret_are_refused_and_change_nothing(bot, engine, secret):
    client, core, member_id, _ = bot
    token = link(client, core)
    r = send(client, update(f"/start {token}"), secret=secret)
    assert r.status_code == 403
    assert telegram_states(engine, member_id) == {}


def test_a_program_without_a_bot_refuses_updates(bot):
    client, *_ = bot
    r = client.post("/webhooks/telegram/other", json=update("/stop"), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert r.status_code == 403


@pytest.mark.parametrize("how", ["/stop", "blocked"])
def test_stop_or_blocking_the_bot_revokes_telegram(bot, engine, how):
    client, core, member_id, _ = bot
    send(client, update(f"/start {link(client, core)}"))
    body = update(kicked=True, update_id=5) if how == "blocked" else update("/stop", update_id=5)
    assert send(client, body).json()["handled"] == "stop"
    assert telegram_states(engine, member_id)["*"] == "revoked"


def test_a_text_message_is_a_reply_to_the_latest_telegram_delivery(bot, engine):
    client, core, member_id, program_id = bot
    send(client, update(f"/start {link(client, core)}"))
    cid = make_campaign(engine, program_id, channels=["telegram"])
    with session_scope(engine) as s:
        d = Delivery(campaign_id=cid, member_id=member_id, status="sent", channel="telegram",
                     provider_message_id="4242:7", sent_at=utcnow())
        s.add(d)
        s.flush()
        did = d.id
    for _ in range(2):  # Telegram redelivers an update it got no 200 for: one reply
        send(client, update("Спасибо!", update_id=9))
    with Session(engine) as s:
        assert [r.kind for r in s.scalars(select(Response).where(Response.delivery_id == did))] == ["replied"]


def test_a_deep_link_needs_a_bot_and_valid_topics(bot, engine):
    client, core, *_ = bot
    r = client.post("/api/v1/members/M000001/telegram-link", params={"program": "shop"},
                    json={"topics": ["Bad Topic"]}, headers={"Authorization": f"Bearer {core}"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "topics"
    r = client.post("/api/v1/members/NOPE/telegram-link", params={"program": "shop"}, json={},
                    headers={"Authorization": f"Bearer {core}"})
    assert r.status_code == 404 and r.json()["field"] == "external_id"
