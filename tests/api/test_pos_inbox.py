"""The pull channels over HTTP: what a till gets to print on a member's receipt and what the app's inbox shows,
with the rows each step writes. Reservation timing and races on both databases: tests/storage/test_pickup.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlmodel import Session

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from channels.receipt import display_width
from storage.db import session_scope
from storage.tables import ChannelAccount, Role, StoredMessage, utcnow
from tests.conftest import free_port
from tests.storage.test_pickup import delivery_of, message, responses, seed, stored

XMAS_TITLE = "Ваш подарок к празднику"
XMAS_BODY = ("Анна, покажите этот чек на кассе и получите скидку 15% на всё, включая товары со скидкой "
             "и новогодние наборы. Предложение действует в магазинах «Лавка» до 31 декабря.")


@pytest.fixture
def api(engine, tmp_path):
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield client, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def till(client, keys, *, card="C-1", store="S1", checkout="K1", width=42, role=Role.pos, **extra):
    params = {"program": "shop", "card": card, "store": store, "checkout": checkout, "width": width, **extra}
    return client.get("/api/v1/pos/receipt-messages", params=params, headers=auth(keys[role]))


def printed(client, keys, message_id, *, checkout="K1", receipt="R-100"):
    return client.post(f"/api/v1/pos/receipt-messages/{message_id}/printed", headers=auth(keys[Role.pos]),
                       json={"receipt_number": receipt, "store": "S1", "checkout": checkout})


def ids(r) -> list[int]:
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["messages"]]


def inbox_url(member="A1", suffix=""):
    return f"/api/v1/members/{member}/inbox{suffix}"


def soon():
    return utcnow() + timedelta(days=1)


# --- the till ------------------------------------------------------------------------------


def test_the_till_is_for_pos_keys_and_the_inbox_for_core_keys(api, engine):
    client, keys = api
    seeded = seed(engine)
    stored(engine, seeded)
    inbox_id = stored(engine, seeded, channel="inbox")
    assert till(client, keys, role=Role.core).status_code == 403
    assert client.get("/api/v1/pos/receipt-messages", params={"program": "shop"}).status_code == 401
    assert client.get(inbox_url(), params={"program": "shop"}).status_code == 401
    assert client.get(inbox_url(), params={"program": "shop"}, headers=auth(keys[Role.pos])).status_code == 403
    assert client.post(inbox_url(suffix=f"/{inbox_id}/read"), params={"program": "shop"},
                       headers=auth(keys[Role.pos])).status_code == 403
    assert len(ids(till(client, keys, role=Role.pos))) == 1
    assert len(ids(till(client, keys, role=Role.admin, checkout="K1"))) == 1
    for role in (Role.core, Role.admin):
        r = client.get(inbox_url(), params={"program": "shop"}, headers=auth(keys[role]))
        assert r.status_code == 200 and [m["id"] for m in r.json()["messages"]] == [inbox_id]


@pytest.mark.parametrize("width", [32, 42, 48])
def test_a_cyrillic_message_is_laid_out_to_fit_the_printer(api, engine, width):
    client, keys = api
    message_id = stored(engine, seed(engine), title=XMAS_TITLE, body=XMAS_BODY, coupon="XMAS-7F3K")
    r = till(client, keys, width=width)
    [got] = r.json()["messages"]
    assert r.json()["width"] == width and got["id"] == message_id and got["campaign"] == "xmas"
    assert all(display_width(line) <= width for line in got["lines"])
    assert got["lines"][0] == "-" * width
    assert XMAS_TITLE in [line.strip() for line in got["lines"]]
    assert " ".join(b for blk in got["blocks"] if blk["kind"] == "text" for b in blk["lines"]) == XMAS_BODY
    assert got["lines"][-1].strip() == "XMAS-7F3K"
    assert got["coupon"] == {"code": "XMAS-7F3K", "barcode": {"type": "CODE128", "data": "XMAS-7F3K"},
                             "qr": {"data": "XMAS-7F3K"}}


def test_a_coupon_a_barcode_cannot_carry_is_printed_as_text(api, engine):
    client, keys = api
    stored(engine, seed(engine), body="Скидка", coupon="ПОДАРОК")
    [got] = till(client, keys).json()["messages"]
    assert got["coupon"] is None and got["lines"][-1] == "ПОДАРОК"


@pytest.mark.parametrize(("params", "field"), [
    ({"width": 40}, "query.width"),
    ({"card": None}, "query.card"),
    ({"checkout": "K 1"}, "query.checkout"),
    ({"store": None}, "query.store"),
    ({"format": "pdf"}, "query.format"),
])
def test_a_bad_or_missing_parameter_is_422_naming_it(api, engine, params, field):
    client, keys = api
    stored(engine, seed(engine))
    query = {"program": "shop", "card": "C-1", "store": "S1", "checkout": "K1", "width": 42, **params}
    r = client.get("/api/v1/pos/receipt-messages", params={k: v for k, v in query.items() if v is not None},
                   headers=auth(keys[Role.pos]))
    assert r.status_code == 422 and [p["field"] for p in r.json()["problems"]] == [field]
    with Session(engine) as s:
        assert s.scalar(select(StoredMessage.state)) == "pending"


def test_an_unknown_or_blocked_card_gets_an_empty_list_and_an_unknown_program_404(api, engine):
    client, keys = api
    seeded = seed(engine)
    message_id = stored(engine, seeded)
    for card in ("NO-SUCH-CARD", "C-OLD"):
        r = till(client, keys, card=card)
        assert r.status_code == 200 and r.json() == {"width": 42, "reserved_until": None, "messages": []}
    assert message(engine, message_id).state == "pending"
    r = till(client, keys, program="nope")
    assert r.status_code == 404 and r.json()["field"] == "program"


def test_a_checkout_gets_at_most_the_programs_limit_oldest_first(api, engine):
    client, keys = api
    seeded = seed(engine)
    made = [stored(engine, seeded, body=f"m{i}", created_at=utcnow() - timedelta(hours=5 - i)) for i in range(5)]
    assert ids(till(client, keys, checkout="K1")) == made[:2]           # no account: 2
    with session_scope(engine) as s:
        s.add(ChannelAccount(program_id=seeded.program_id, channel="receipt", provider="clarion",
                             config={"max_per_checkout": 3}))
    assert ids(till(client, keys, checkout="K2")) == made[2:]           # the program's limit: 3 (2 were held)
    stored(engine, seeded, member_id=seeded.other_member_id)
    assert ids(till(client, keys, checkout="K3")) == []                 # the others are held; B2's is not A1's


def test_a_second_checkout_gets_nothing_while_held_and_the_same_checkout_gets_the_same(api, engine):
    client, keys = api
    seeded = seed(engine)
    made = [stored(engine, seeded, created_at=utcnow() - timedelta(minutes=2 - i)) for i in range(2)]
    first = till(client, keys, checkout="K1")
    assert ids(first) == made
    assert ids(till(client, keys, checkout="K2")) == []
    assert ids(till(client, keys, store="S2", checkout="K1")) == []      # K1 of another store is another till
    again = till(client, keys, checkout="K1")
    assert ids(again) == made and again.json()["reserved_until"] >= first.json()["reserved_until"]
    row = message(engine, made[0])
    assert (row.state, row.reserved_by) == ("reserved", "S1/K1")
    with session_scope(engine) as s:   # the hold lapses without a print
        s.execute(update(StoredMessage).values(reserved_until=utcnow() - timedelta(seconds=1)))
    assert ids(till(client, keys, checkout="K2")) == made
    assert message(engine, made[0]).reserved_by == "S1/K2"


def test_expired_messages_are_never_handed_out_and_are_marked_expired(api, engine):
    client, keys = api
    seeded = seed(engine)
    gone = stored(engine, seeded, expires_at=utcnow() - timedelta(minutes=1), created_at=utcnow() - timedelta(days=2))
    live = stored(engine, seeded, expires_at=soon())
    assert ids(till(client, keys)) == [live]
    assert message(engine, gone).state == "expired"
    r = printed(client, keys, gone)
    assert r.status_code == 409 and r.json()["field"] == "id" and "expired" in r.json()["message"]
    assert delivery_of(engine, gone).status == "sent" and responses(engine) == []


def test_a_printed_message_is_delivered_once_even_when_posted_twice(api, engine):
    client, keys = api
    message_id = stored(engine, seed(engine))
    assert ids(till(client, keys)) == [message_id]
    first = printed(client, keys, message_id, receipt="R-100")
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "done" and first.json()["delivery_status"] == "delivered"
    second = printed(client, keys, message_id, receipt="R-100")
    assert second.status_code == 200 and second.json() == first.json()
    row = message(engine, message_id)
    assert (row.state, row.receipt_number) == ("done", "R-100")
    assert delivery_of(engine, message_id).status == "delivered"
    assert responses(engine) == [("delivered", f"receipt:{message_id}")]
    assert ids(till(client, keys, checkout="K2")) == []                 # printed: never handed out again


def test_printing_a_message_held_or_printed_by_another_checkout_is_409_and_unknown_is_404(api, engine):
    client, keys = api
    seeded = seed(engine)
    message_id = stored(engine, seeded)
    inbox_id = stored(engine, seeded, channel="inbox")
    assert ids(till(client, keys, checkout="K1")) == [message_id]
    r = printed(client, keys, message_id, checkout="K2")
    assert r.status_code == 409 and r.json()["field"] == "checkout" and "another checkout" in r.json()["message"]
    assert message(engine, message_id).state == "reserved" and responses(engine) == []
    assert printed(client, keys, message_id, checkout="K1").status_code == 200
    r = printed(client, keys, message_id, checkout="K2")
    assert r.status_code == 409 and r.json()["field"] == "id"
    for unknown in (999_999, inbox_id):
        r = printed(client, keys, unknown)
        assert r.status_code == 404 and r.json()["field"] == "id"
    r = client.post(f"/api/v1/pos/receipt-messages/{message_id}/printed", headers=auth(keys[Role.pos]),
                    json={"store": "S1", "checkout": "K1"})
    assert r.status_code == 422 and [p["field"] for p in r.json()["problems"]] == ["receipt_number"]


def test_escpos_format_returns_the_printer_bytes_of_every_message(api, engine):
    client, keys = api
    seeded = seed(engine)
    made = [stored(engine, seeded, title=XMAS_TITLE, body=XMAS_BODY, coupon=f"XMAS-{i}",
                   created_at=utcnow() - timedelta(minutes=2 - i)) for i in range(2)]
    r = till(client, keys, width=32, format="escpos")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.content.startswith(b"\x1b@") and r.content.count(b"\x1b@") == 2
    assert "Ваш подарок".encode("cp866") in r.content and b"{BXMAS-1" in r.content
    assert r.headers["x-message-ids"] == ",".join(map(str, made))
    r = client.get("/api/v1/pos/receipt-messages", params={
        "program": "shop", "card": "C-1", "store": "S1", "checkout": "K1", "width": 48},
        headers={**auth(keys[Role.pos]), "Accept": "application/vnd.escpos"})
    assert r.content.startswith(b"\x1b@") and r.headers["x-message-ids"] == ",".join(map(str, made))
    empty = till(client, keys, checkout="K2", format="escpos")
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["x-message-ids"] == ""


# --- the app inbox -------------------------------------------------------------------------


def inbox(client, keys, member="A1", **params):
    return client.get(inbox_url(member), params={"program": "shop", **params}, headers=auth(keys[Role.core]))


def act(client, keys, message_id, what, member="A1"):
    return client.post(inbox_url(member, f"/{message_id}/{what}"), params={"program": "shop"},
                       headers=auth(keys[Role.core]))


def test_the_inbox_lists_unread_messages_newest_first_without_expired_ones(api, engine):
    client, keys = api
    seeded = seed(engine)
    old = stored(engine, seeded, channel="inbox", title="Old", body="Hi", link="app://offers/1",
                 created_at=utcnow() - timedelta(days=2))
    new = stored(engine, seeded, channel="inbox", title="New", body="Hello", expires_at=soon(), created_at=utcnow())
    stored(engine, seeded, channel="inbox", expires_at=utcnow() - timedelta(seconds=1))
    stored(engine, seeded, channel="receipt")
    stored(engine, seeded, channel="inbox", member_id=seeded.other_member_id)
    r = inbox(client, keys)
    assert r.status_code == 200 and r.json()["unread"] == 2
    got = r.json()["messages"]
    assert [m["id"] for m in got] == [new, old]
    assert {k: got[1][k] for k in ("title", "body", "link", "campaign", "read")} == {
        "title": "Old", "body": "Hi", "link": "app://offers/1", "campaign": "xmas", "read": False}
    assert got[0]["created_at"] and got[0]["expires_at"]


def test_reading_a_message_delivers_it_once_and_keeps_it_with_include_read(api, engine):
    client, keys = api
    message_id = stored(engine, seed(engine), channel="inbox")
    for _ in range(2):
        r = act(client, keys, message_id, "read")
        assert r.status_code == 200 and r.json()["read"] is True and r.json()["id"] == message_id
    assert message(engine, message_id).state == "done"
    assert delivery_of(engine, message_id).status == "delivered"
    assert responses(engine) == [("opened", f"inbox-read:{message_id}")]
    assert inbox(client, keys).json() == {"messages": [], "unread": 0}
    assert [(m["id"], m["read"]) for m in inbox(client, keys, include_read="true").json()["messages"]] == [
        (message_id, True)]


def test_a_dismissed_message_leaves_the_inbox_once(api, engine):
    client, keys = api
    message_id = stored(engine, seed(engine), channel="inbox")
    for _ in range(2):
        r = act(client, keys, message_id, "dismiss")
        assert r.status_code == 200 and r.json() == {"id": message_id, "dismissed": True}
    assert inbox(client, keys, include_read="true").json() == {"messages": [], "unread": 0}
    assert message(engine, message_id).state == "dismissed"
    assert delivery_of(engine, message_id).status == "sent"             # dismissed unread is not delivered
    assert responses(engine) == [("dismissed", f"inbox-dismiss:{message_id}")]
    r = act(client, keys, message_id, "read")
    assert r.status_code == 409 and r.json()["field"] == "id"


def test_another_members_message_or_an_unknown_member_is_404(api, engine):
    client, keys = api
    seeded = seed(engine)
    theirs = stored(engine, seeded, channel="inbox", member_id=seeded.other_member_id)
    receipt = stored(engine, seeded, channel="receipt")
    for message_id in (theirs, receipt, 999_999):
        for what in ("read", "dismiss"):
            r = act(client, keys, message_id, what)
            assert r.status_code == 404 and r.json()["field"] == "id", r.text
    assert message(engine, theirs).state == "pending" and responses(engine) == []
    r = inbox(client, keys, member="NOBODY")
    assert r.status_code == 404 and r.json()["field"] == "external_id" and "NOBODY" in r.json()["message"]
    assert act(client, keys, theirs, "read", member="NOBODY").json()["field"] == "external_id"
