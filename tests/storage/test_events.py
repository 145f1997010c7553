"""Events stored once per (program, id) on a real SQLite file and, when CI provides it, PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from members.events import UNKNOWN_MEMBER, EventIn, ingest_events
from members.service import ensure_program
from storage.db import make_engine
from storage.tables import Event, Member
from tests.factories import seed_members

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def eng(any_db_url):
    e = make_engine(any_db_url)
    yield e
    e.dispose()


def purchase(id_: str, member: str = "M000001", amount: float = 10, **over) -> dict:
    raw = {"id": id_, "type": "purchase", "member": member, "occurred_at": "2024-05-01T14:30:00+03:00",
           "payload": {"amount": amount, "currency": "EUR"}}
    raw.update(over)
    return raw


def stored(eng, program_id: int) -> list[tuple[str, str]]:
    with Session(eng) as s:
        return [tuple(r) for r in s.execute(select(Event.source_event_id, Event.type).where(
            Event.program_id == program_id).order_by(Event.source_event_id))]


def test_an_event_is_stored_with_member_payload_and_utc_time(eng):
    program_id = seed_members(eng, 1)
    result = ingest_events(engine=eng, program_id=program_id, items=[purchase("r-1")], now=NOW)
    assert (result.accepted, result.duplicates, result.errors) == (1, 0, [])
    with Session(eng) as s:
        row = s.scalar(select(Event))
        member_id = s.scalar(select(Member.id).where(Member.external_id == "M000001"))
    assert row.member_id == member_id and row.type == "purchase"
    assert row.payload == {"amount": 10, "currency": "EUR"}
    at = row.occurred_at if row.occurred_at.tzinfo else row.occurred_at.replace(tzinfo=UTC)  # SQLite: naive UTC
    assert at == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)


def test_the_same_event_twice_is_one_row_and_the_second_is_a_duplicate(eng):
    program_id = seed_members(eng, 1)
    first = ingest_events(engine=eng, program_id=program_id, items=[purchase("r-1")], now=NOW)
    again = ingest_events(engine=eng, program_id=program_id, items=[EventIn(**purchase("r-1", amount=99))],
                          now=NOW)
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates, again.errors) == (0, 1, [])
    assert stored(eng, program_id) == [("r-1", "purchase")]
    with Session(eng) as s:
        assert s.scalar(select(Event.payload)) == {"amount": 10, "currency": "EUR"}  # the first one stays


def test_the_same_id_twice_in_one_batch_is_one_row(eng):
    program_id = seed_members(eng, 2)
    result = ingest_events(engine=eng, program_id=program_id, now=NOW, items=[
        purchase("r-1"), purchase("r-2", member="M000002"), purchase("r-1", member="M000002")])
    assert (result.accepted, result.duplicates) == (2, 1)
    assert stored(eng, program_id) == [("r-1", "purchase"), ("r-2", "purchase")]


def test_ids_are_per_program(eng):
    shop = seed_members(eng, 1)
    cafe = seed_members(eng, 1, program="cafe")
    for program_id in (shop, cafe):
        assert ingest_events(engine=eng, program_id=program_id, items=[purchase("r-1")], now=NOW).accepted == 1
    assert stored(eng, shop) == stored(eng, cafe) == [("r-1", "purchase")]


def test_a_batch_keeps_the_good_and_reports_the_bad_by_index_and_field(eng):
    program_id = seed_members(eng, 2)
    items = [
        purchase("ok-1"),
        {**purchase("bad-type"), "type": "refund"},
        purchase("naive", occurred_at="2024-05-01T14:30:00"),
        {**purchase("no-amount"), "payload": {"currency": "EUR"}},
        purchase("negative", amount=-5),
        purchase("stranger", member="NOBODY"),
        {**purchase("huge"), "type": "custom:note", "payload": {"text": "x" * 70_000}},
        "not an object",
        purchase("ok-2", member="M000002", type="registration", payload={}),
    ]
    result = ingest_events(engine=eng, program_id=program_id, items=items, now=NOW)
    assert (result.accepted, result.duplicates, result.refused) == (2, 0, 7)
    assert [(e.index, e.id, e.field) for e in result.errors] == [
        (1, "bad-type", "type"), (2, "naive", "occurred_at"), (3, "no-amount", "payload.amount"),
        (4, "negative", "payload.amount"), (5, "stranger", "member"), (6, "huge", "payload"),
        (7, None, "event")]
    assert result.errors[4].message == UNKNOWN_MEMBER
    assert stored(eng, program_id) == [("ok-1", "purchase"), ("ok-2", "registration")]


def test_members_of_another_program_are_unknown(eng):
    seed_members(eng, 1)
    other = ensure_program(engine=eng, key="cafe", name="Cafe").id
    result = ingest_events(engine=eng, program_id=other, items=[purchase("r-1")], now=NOW)
    assert [(e.field, e.message) for e in result.errors] == [("member", UNKNOWN_MEMBER)]
    assert stored(eng, other) == []


def test_concurrent_sends_of_the_same_events_leave_one_row_each(eng):
    program_id = seed_members(eng, 3)
    batch = [purchase(f"r-{i}", member=f"M00000{i % 3 + 1}") for i in range(50)]
    threads, results, start = [], [], threading.Barrier(6)

    def send(items: list[dict]) -> None:
        start.wait()
        results.append(ingest_events(engine=eng, program_id=program_id, items=items, now=NOW))

    for n in range(6):  # three whole batches, three single events: all racing on the same ids
        items = batch if n % 2 == 0 else [batch[0]]
        threads.append(threading.Thread(target=send, args=(items,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and not any(r.errors for r in results)
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 50
    assert sum(r.accepted for r in results) == 50  # the database said which inserts were new
    assert sum(r.accepted + r.duplicates for r in results) == 3 * 50 + 3
