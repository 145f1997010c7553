"""Member profiles from the loyalty core and CSV rows: normalized, or refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from members.profile import MemberIn
from members.service import RowError, parse_row
from storage.tables import MemberKind


def refusal(**fields) -> dict[str, str]:
    """{field: message} of a refused profile."""
    with pytest.raises(ValidationError) as info:
        MemberIn(**fields)
    return {".".join(map(str, e["loc"])): e["msg"].removeprefix("Value error, ") for e in info.value.errors()}


# --- MemberIn --------------------------------------------------------------------------------------

def test_minimal_profile_has_defaults():
    member = MemberIn()

    assert member.kind == MemberKind.individual
    assert (member.email, member.phone, member.locale, member.time_zone) == (None, None, None, None)
    assert member.attributes == {} and member.consents == []


def test_email_is_trimmed_and_domain_lowercased():
    assert MemberIn(email="  Anna.Smith@Example.COM ").email == "Anna.Smith@example.com"


@pytest.mark.parametrize("bad", ["not-an-email", "anna@", "@example.com", "anna@@example.com", "anna@exa mple.com"])
def test_malformed_email_is_refused(bad):
    assert refusal(email=bad)["email"].startswith("not a valid email address")


@pytest.mark.parametrize("empty", ["", "   "])
def test_blank_email_means_no_email(empty):
    assert MemberIn(email=empty).email is None


@pytest.mark.parametrize(("raw", "e164"), [
    ("+7 912 345-67-89", "+79123456789"),
    ("+7 (912) 345 67 89", "+79123456789"),
    ("+44 20 7946 0958", "+442079460958"),
    ("  +79123456789 ", "+79123456789"),
])
def test_phone_is_normalized_to_e164(raw, e164):
    assert MemberIn(phone=raw).phone == e164


def test_phone_without_country_code_is_refused():
    assert refusal(phone="8 912 345-67-89") == {
        "phone": "not a phone number in international form (+country code)"}


@pytest.mark.parametrize("bad", ["+7 000", "+1 555 0100"])
def test_impossible_phone_number_is_refused(bad):
    assert refusal(phone=bad) == {"phone": "not a valid phone number"}


def test_text_in_place_of_phone_is_refused():
    assert "phone" in refusal(phone="call me")


def test_iana_time_zone_is_kept():
    assert MemberIn(time_zone="Asia/Yekaterinburg").time_zone == "Asia/Yekaterinburg"


@pytest.mark.parametrize("bad", ["Mars/Olympus", "MSK", "europe/moscow"])
def test_unknown_time_zone_is_refused_and_named(bad):
    message = refusal(time_zone=bad)["time_zone"]

    assert f"unknown time zone {bad!r}" in message
    assert "Europe/Moscow" in message


@pytest.mark.parametrize(("raw", "locale"), [("ru_RU", "ru-RU"), ("ru-ru", "ru-RU"), ("en", "en")])
def test_locale_is_normalized(raw, locale):
    assert MemberIn(locale=raw).locale == locale


def test_unknown_locale_is_refused():
    assert refusal(locale="klingon") == {"locale": "unknown locale 'klingon'"}


def test_unknown_profile_field_is_refused():
    assert refusal(nickname="Ann") == {"nickname": "Extra inputs are not permitted"}


def test_unknown_member_kind_is_refused():
    assert "kind" in refusal(kind="robot")


def test_flat_attributes_are_kept():
    attrs = {"tier": "gold", "visits": 3, "spent": 12.5, "vip": True, "city": None}

    assert MemberIn(attributes=attrs).attributes == attrs


def test_nested_attribute_is_refused_and_named():
    assert refusal(attributes={"tier": "gold", "cards": [1, 2]}) == {
        "attributes": "attribute 'cards': only text, numbers, true/false or null"}


def test_consent_for_unknown_channel_is_refused():
    assert "consents.0.channel" in refusal(consents=[{"channel": "fax", "topic": "promotions"}])


# --- parse_row (CSV import) ------------------------------------------------------------------------

def test_csv_row_becomes_a_normalized_profile():
    ext, member = parse_row(2, {
        "external_id": " M-001 ",
        "first_name": " Анна ",
        "email": "Anna@Example.com",
        "phone": "+7 912 345-67-89",
        "locale": "ru_RU",
        "time_zone": "Europe/Moscow",
        "kind": "individual",
    })

    assert ext == "M-001"
    assert (member.first_name, member.email, member.phone, member.locale, member.time_zone) == (
        "Анна", "Anna@example.com", "+79123456789", "ru-RU", "Europe/Moscow")


def test_attr_columns_become_attributes():
    _, member = parse_row(2, {"external_id": "m1", "attr.tier": "gold", "attr.city": "Kazan"})

    assert member.attributes == {"tier": "gold", "city": "Kazan"}


@pytest.mark.parametrize(("value", "action"), [
    ("yes", "granted"), ("YES", "granted"), ("true", "granted"), ("1", "granted"),
    ("no", "revoked"), ("No", "revoked"), ("false", "revoked"), ("0", "revoked"),
])
def test_consent_column_yes_grants_and_no_revokes(value, action):
    _, member = parse_row(2, {"external_id": "m1", "consent.email.promotions": value})

    assert [(c.channel, c.topic, c.action) for c in member.consents] == [("email", "promotions", action)]


def test_blank_consent_column_records_nothing():
    _, member = parse_row(2, {"external_id": "m1", "consent.email.promotions": "  "})

    assert member.consents == []


def test_consent_value_other_than_yes_or_no_is_refused():
    assert parse_row(4, {"external_id": "m1", "consent.email.promotions": "maybe"}) == RowError(
        4, "m1", "consent.email.promotions", "use yes or no, not 'maybe'")


def test_consent_column_without_topic_is_refused():
    assert parse_row(4, {"external_id": "m1", "consent.email": "yes"}) == RowError(
        4, "m1", "consent.email", "use consent.<channel>.<topic>")


def test_unknown_csv_column_is_named_with_its_line():
    assert parse_row(7, {"external_id": "m1", "emial": "a@b.co"}) == RowError(7, "m1", "emial", "unknown column")


def test_attributes_column_must_be_written_as_attr_columns():
    assert parse_row(7, {"external_id": "m1", "attributes": "{}"}) == RowError(7, "m1", "attributes", "unknown column")


@pytest.mark.parametrize("ext", ["", "   ", None])
def test_row_without_external_id_is_refused(ext):
    assert parse_row(3, {"external_id": ext, "email": "a@b.co"}) == RowError(3, None, "external_id", "missing")


def test_row_with_more_values_than_columns_is_refused():
    assert parse_row(5, {"external_id": "m1", None: ["extra"]}) == RowError(
        5, "m1", "row", "more values than columns")


def test_row_with_fewer_values_than_columns_uses_what_is_there():
    ext, member = parse_row(5, {"external_id": "m1", "email": None})

    assert (ext, member.email) == ("m1", None)


def test_bad_time_zone_in_csv_is_named_with_line_and_column():
    error = parse_row(9, {"external_id": "m1", "time_zone": "Mars/Olympus"})

    assert (error.line, error.external_id, error.field) == (9, "m1", "time_zone")
    assert "unknown time zone 'Mars/Olympus'" in error.message


def test_bad_phone_in_csv_is_named_with_line_and_column():
    assert parse_row(9, {"external_id": "m1", "phone": "12"}) == RowError(
        9, "m1", "phone", "not a phone number in international form (+country code)")


def test_bad_email_in_csv_is_named():
    error = parse_row(9, {"external_id": "m1", "email": "nope"})

    assert (error.field, error.message.startswith("not a valid email address")) == ("email", True)


def test_unknown_csv_column_is_refused_even_when_blank():
    assert parse_row(7, {"external_id": "m1", "emial": ""}) == RowError(7, "m1", "emial", "unknown column")
