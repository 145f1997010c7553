"""The pull channels' service (channels.pickup) on a real SQLite file and, when CI provides it, PostgreSQL:
reservations that lapse, two tills at once, forward-only deliveries. The HTTP side is tests/api/test_pos_inbox.py.

The helpers below write the rows a campaign run leaves behind (a ``sent`` delivery and its stored message);
tests/api/test_pos_inbox.py uses them too."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlmodel import Session

from channels import pickup
from storage.db import make_engine, session_scope
from storage.tables import Campaign, Card, ChannelAccount, Delivery, Member, Program, Response, StoredMessage

T0 = datetime(2024, 12, 20, 10, 0, tzinfo=UTC)


# --- helpers (rows as a campaign run leaves them) ------------------------------------------


@dataclass(frozen=True)
class Seeded:
    program_id: int
    member_id: int
    other_member_id: int
    campaign_id: int


def seed(engine, *, program: str = "shop", max_per_checkout: int | None = None,
         reservation_s: int | None = None) -> Seeded:
    """A program with member A1 (active card C-1, blocked card C-OLD), member B2 (card C-2) and a campaign."""
    with session_scope(engine) as s:
        prog = Program(key=program, name="Shop")
        s.add(prog)
        s.flush()
        a = Member(program_id=prog.id, external_id="A1")
        b = Member(program_id=prog.id, external_id="B2")
        s.add_all([a, b])
        s.flush()
        s.add_all([Card(member_id=a.id, number="C-1"), Card(member_id=a.id, number="C-OLD", status="blocked"),
                   Card(member_id=b.id, number="C-2")])
        campaign = Campaign(program_id=prog.id, key="xmas", name="Xmas", topic="promotions", spec={}, spec_hash="x",
                            status="running")
        s.add(campaign)
        config = {k: v for k, v in (("max_per_checkout", max_per_checkout), ("reservation_s", reservation_s))
                  if v is not None}
        if config:
            s.add(ChannelAccount(program_id=prog.id, channel="receipt", provider="clarion", config=config))
        s.flush()
        return Seeded(prog.id or 0, a.id or 0, b.id or 0, campaign.id or 0)


def stored(engine, seeded: Seeded, *, channel: str = "receipt", body: str = "Hello", title: str | None = "Gift",
           coupon: str | None = None, link: str | None = None, created_at: datetime = T0,
           expires_at: datetime | None = None, member_id: int | None = None, delivery_status: str = "sent",
           **state) -> int:
    """A stored message with its delivery (status ``delivery_status``); ``state`` sets its row's state fields."""
    member = member_id or seeded.member_id
    with session_scope(engine) as s:
        d = Delivery(campaign_id=seeded.campaign_id, member_id=member, occurrence=uuid.uuid4().hex,
                     status=delivery_status, channel=channel, sent_at=created_at)
        s.add(d)
        s.flush()
        m = StoredMessage(program_id=seeded.program_id, campaign_id=seeded.campaign_id, member_id=member,
                          delivery_id=d.id, channel=channel, title=title, body=body, coupon=coupon, link=link,
                          expires_at=expires_at, created_at=created_at, updated_at=created_at, **state)
        s.add(m)
        s.flush()
        return m.id or 0


def message(engine, message_id: int) -> StoredMessage:
    with Session(engine) as s:
        return s.get(StoredMessage, message_id)


def delivery_of(engine, message_id: int) -> Delivery:
    with Session(engine) as s:
        return s.get(Delivery, s.get(StoredMessage, message_id).delivery_id)


def responses(engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(r.kind, r.provider_event_id) for r in s.scalars(select(Response).order_by(Response.id))]


def reserve(engine, *, checkout: str = "K1", store: str = "S1", card: str = "C-1", now: datetime = T0) -> list[int]:
    held = pickup.reserve_receipt_messages(engine=engine, program="shop", card=card, store=store,
                                           checkout=checkout, now=now)
    return [m.id for m in held.messages]


# --- tests ---------------------------------------------------------------------------------


@pytest.fixture
def eng(any_db_url):
    e = make_engine(any_db_url)
    yield e
    e.dispose()


def test_a_reservation_holds_for_its_time_then_goes_to_the_next_checkout(eng):
    seeded = seed(eng, reservation_s=60)
    ids = [stored(eng, seeded, created_at=T0 - timedelta(minutes=i)) for i in range(2)]
    assert reserve(eng, checkout="K1") == ids[::-1]                                   # oldest first
    assert reserve(eng, checkout="K2", now=T0 + timedelta(seconds=59)) == []           # still held by K1
    assert reserve(eng, checkout="K1", now=T0 + timedelta(seconds=30)) == ids[::-1]    # same checkout: the same
    # K1's ask at +30 s extended its hold to +90 s
    assert reserve(eng, checkout="K2", now=T0 + timedelta(seconds=89)) == []
    assert reserve(eng, checkout="K2", now=T0 + timedelta(seconds=91)) == ids[::-1]    # lapsed: K2 gets them
    row = message(eng, ids[0])
    assert (row.state, row.reserved_by) == ("reserved", "S1/K2")
    assert pickup._utc(row.reserved_until) == T0 + timedelta(seconds=151)


def test_a_lapsed_reservation_is_released_to_pending_when_the_card_comes_back(eng):
    seeded = seed(eng, max_per_checkout=1, reservation_s=60)
    first, second = stored(eng, seeded, created_at=T0 - timedelta(hours=2)), stored(eng, seeded)
    assert reserve(eng, checkout="K1") == [first]
    assert reserve(eng, checkout="K2", now=T0 + timedelta(minutes=5)) == [first]
    assert message(eng, second).state == "pending"


def test_two_tills_at_once_never_both_get_one_message(eng):
    seeded = seed(eng, max_per_checkout=2)
    for round_ in range(8):
        ids = {stored(eng, seeded, created_at=T0 + timedelta(seconds=i)) for i in range(3)}
        now = T0 + timedelta(days=round_ + 1)      # earlier rounds' holds have lapsed; their rows are done below
        barrier, got = threading.Barrier(2), {}

        def till(checkout: str, now: datetime = now, barrier: threading.Barrier = barrier,
                 got: dict = got) -> None:
            barrier.wait()
            got[checkout] = reserve(eng, checkout=checkout, now=now)

        threads = [threading.Thread(target=till, args=(k,)) for k in ("K1", "K2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not set(got["K1"]) & set(got["K2"]), got
        assert set(got["K1"]) | set(got["K2"]) == ids
        with Session(eng) as s:
            held = {m.id: m.reserved_by for m in s.scalars(select(StoredMessage).where(
                StoredMessage.id.in_(ids)))}
        assert held == {**{i: "S1/K1" for i in got["K1"]}, **{i: "S1/K2" for i in got["K2"]}}
        for checkout, taken in got.items():
            for message_id in taken:
                pickup.mark_printed(engine=eng, message_id=message_id, store="S1", checkout=checkout,
                                    receipt_number=f"R{message_id}", now=now)


def test_two_checkouts_printing_one_message_at_once_one_wins(eng):
    seeded = seed(eng)
    message_id = stored(eng, seeded)
    barrier, outcomes = threading.Barrier(2), {}

    def till(checkout: str) -> None:
        barrier.wait()
        try:
            pickup.mark_printed(engine=eng, message_id=message_id, store="S1", checkout=checkout,
                                receipt_number=checkout, now=T0)
            outcomes[checkout] = "printed"
        except pickup.MessageConflict:
            outcomes[checkout] = "conflict"

    threads = [threading.Thread(target=till, args=(k,)) for k in ("K1", "K2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["conflict", "printed"]
    assert responses(eng) == [("delivered", f"receipt:{message_id}")]


def test_printing_after_the_hold_lapsed_is_accepted_unless_another_checkout_took_it(eng):
    seeded = seed(eng, reservation_s=60)
    a, b = stored(eng, seeded), stored(eng, seeded, created_at=T0 + timedelta(seconds=1))
    assert reserve(eng, checkout="K1") == [a, b]
    later = T0 + timedelta(minutes=10)
    done = pickup.mark_printed(engine=eng, message_id=a, store="S1", checkout="K1", receipt_number="R1", now=later)
    assert (done.delivery_status, done.receipt_number) == ("delivered", "R1")
    assert reserve(eng, checkout="K2", now=later) == [b]
    with pytest.raises(pickup.MessageConflict) as exc:
        pickup.mark_printed(engine=eng, message_id=b, store="S1", checkout="K1", receipt_number="R1", now=later)
    assert exc.value.field == "checkout"


def test_a_delivery_moves_forward_only(eng):
    seeded = seed(eng)
    in_doubt = stored(eng, seeded, delivery_status="in_doubt")
    failed = stored(eng, seeded, delivery_status="failed")
    for message_id in (in_doubt, failed):
        pickup.mark_printed(engine=eng, message_id=message_id, store="S1", checkout="K1", receipt_number="R",
                            now=T0)
    assert delivery_of(eng, in_doubt).status == "delivered"      # the till printed it: it reached the member
    assert delivery_of(eng, failed).status == "failed"           # never moved back or sideways


def test_inbox_read_and_dismiss_on_both_databases(eng):
    seeded = seed(eng)
    first = stored(eng, seeded, channel="inbox", created_at=T0 - timedelta(hours=1))
    second = stored(eng, seeded, channel="inbox")
    box = pickup.inbox_messages(engine=eng, program="shop", external_id="A1", now=T0)
    assert ([m.id for m in box.messages], box.unread) == ([second, first], 2)
    assert pickup.mark_read(engine=eng, program="shop", external_id="A1", message_id=first, now=T0).read
    pickup.dismiss(engine=eng, program="shop", external_id="A1", message_id=second, now=T0)
    box = pickup.inbox_messages(engine=eng, program="shop", external_id="A1", now=T0, include_read=True)
    assert ([(m.id, m.read) for m in box.messages], box.unread) == ([(first, True)], 0)
    assert delivery_of(eng, first).status == "delivered" and delivery_of(eng, second).status == "sent"
