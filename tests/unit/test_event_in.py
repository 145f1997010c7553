"""An event as the loyalty core sends it: every refusal names the field and says what to send instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from members.events import EventIn, parse_event

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(**over):
    raw = {"id": "r-1", "type": "purchase", "member": "M1", "occurred_at": "2024-05-01T14:30:00+03:00",
           "payload": {"amount": 12.5, "currency": "EUR", "store": "S1",
                       "items": [{"sku": "A", "category": "milk", "qty": 2, "price": 6.25}]}}
    raw.update(over)
    return raw


def fields(raw) -> list[str]:
    parsed = parse_event(raw, now=NOW)
    assert not isinstance(parsed, EventIn), "expected a refusal"
    return [f for f, _ in parsed]


def test_a_full_purchase_is_accepted_with_its_offset_kept():
    e = parse_event(event(), now=NOW)
    assert isinstance(e, EventIn)
    assert e.occurred_at == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    assert e.occurred_at.utcoffset() == timedelta(hours=3)


@pytest.mark.parametrize("type_", ["registration", "card_activated", "tier_changed", "points_expiring",
                                   "custom:birthday-party.v2"])
def test_other_types_need_no_amount(type_):
    assert isinstance(parse_event(event(type=type_, payload={}), now=NOW), EventIn)


def test_naive_time_is_refused_with_an_example_offset():
    parsed = parse_event(event(occurred_at="2024-05-01T14:30:00"), now=NOW)
    assert [f for f, _ in parsed] == ["occurred_at"]
    assert "+03:00" in parsed[0][1] and "Z" in parsed[0][1]


def test_time_more_than_a_day_ahead_is_refused_but_a_few_hours_ahead_is_fine():
    assert fields(event(occurred_at=(NOW + timedelta(days=1, minutes=1)).isoformat())) == ["occurred_at"]
    ahead = (NOW + timedelta(hours=20)).astimezone(timezone(timedelta(hours=-5))).isoformat()
    assert isinstance(parse_event(event(occurred_at=ahead), now=NOW), EventIn)


@pytest.mark.parametrize(("payload", "field", "says"), [
    ({}, "payload.amount", "required"),
    ({"amount": -1}, "payload.amount", ">= 0"),
    ({"amount": "12.50"}, "payload.amount", "not text"),
    ({"amount": True}, "payload.amount", "true/false"),
    ({"amount": 1, "currency": "eur"}, "payload.currency", "EUR"),
    ({"amount": 1, "currency": "EURO"}, "payload.currency", "3-letter"),
    ({"amount": 1, "store": 7}, "payload.store", ""),
    ({"amount": 1, "items": {"sku": "A"}}, "payload.items", ""),
    ({"amount": 1, "items": [{"qty": -2}]}, "payload.items.0.qty", ">= 0"),
    ({"amount": 1, "items": [{"sku": "A"}, {"price": "x"}]}, "payload.items.1.price", "number"),
])
def test_purchase_payload_errors_name_the_payload_field(payload, field, says):
    parsed = parse_event(event(payload=payload), now=NOW)
    assert [f for f, _ in parsed] == [field]
    assert says.lower() in parsed[0][1].lower()


def test_unknown_keys_in_a_purchase_payload_and_its_items_are_kept():
    e = parse_event(event(payload={"amount": 0, "receipt": "R-9", "items": [{"sku": "A", "discount": 1}]}),
                    now=NOW)
    assert e.payload == {"amount": 0, "receipt": "R-9", "items": [{"sku": "A", "discount": 1}]}


def test_a_payload_over_64_kb_is_refused_saying_its_size():
    parsed = parse_event(event(type="custom:note", payload={"text": "é" * 40_000}), now=NOW)
    assert [f for f, _ in parsed] == ["payload"] and "64 KB" in parsed[0][1] and "80011 bytes" in parsed[0][1]


@pytest.mark.parametrize(("over", "field"), [
    ({"type": "refund"}, "type"),
    ({"type": "custom:"}, "type"),
    ({"type": "custom:Has Spaces"}, "type"),
    ({"id": ""}, "id"),
    ({"id": "x" * 129}, "id"),
    ({"member": ""}, "member"),
    ({"colour": "red"}, "colour"),
    ({"payload": {"amount": float("nan")}}, "payload"),
])
def test_bad_fields_are_named(over, field):
    assert fields(event(**over)) == [field]


def test_every_problem_of_an_item_is_reported_and_a_non_object_is_refused():
    assert fields(event(type="nope", occurred_at="2024-05-01 10:00", member="")) == ["type", "member",
                                                                                    "occurred_at"]
    assert parse_event(["not", "an", "object"], now=NOW) == [("event", "must be a JSON object, not list")]
