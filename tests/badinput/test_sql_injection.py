"""SQL in every field that reaches a query: member lookups by external id (API and CLI), the program and other
query parameters, report periods, the till's card and store, suppressions, segment conditions sent to the
estimate. Each is refused with a 4xx naming the field, or taken as the literal text it is: ``%`` and ``_``
are not wildcards, ``\\`` is not an escape, nothing matches that would not match as text. The tables are
intact afterwards. (Segment SQL itself, on SQLite and PostgreSQL: tests/storage/test_segments_sql.py.)"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from storage.tables import Role
from tests.badinput.conftest import counts
from tests.storage.test_pickup import seed, stored

EVIL = ["' OR 1=1 --", "\"; DROP TABLE member; --", "M000001' --", "M00000_", "M%", "%", "_", "\\", "M000001\\",
        "' UNION SELECT email FROM member --"]
PROGRAM_EVIL = ["' OR 1=1 --", "shop'; DROP TABLE program; --", "%", "sho_", "shop\\", "s%"]


def members(engine) -> int:
    with engine.connect() as c:
        return c.exec_driver_sql("SELECT count(*) FROM member WHERE erased_at IS NULL").scalar()


@pytest.mark.parametrize("external_id", EVIL)
def test_a_member_lookup_by_an_sql_string_finds_nobody_and_changes_nothing(api, external_id):
    path = f"/api/v1/members/{quote(external_id, safe='')}"
    before = counts(api.engine)
    answers = {
        "get": api.client.get(path, params={"program": "shop"}, headers=api.auth(Role.core)),
        "export": api.client.get(f"{path}/export", params={"program": "shop"}, headers=api.auth(Role.core)),
        "inbox": api.client.get(f"{path}/inbox", params={"program": "shop"}, headers=api.auth(Role.core)),
        "erase": api.client.post(f"{path}/erase", params={"program": "shop"}, headers=api.auth(Role.admin)),
        "device": api.client.post(f"{path}/push-tokens", params={"program": "shop"}, headers=api.auth(Role.core),
                                  json={"token": "device-token-0123456789"}),
    }
    for what, r in answers.items():
        assert r.status_code == 404, (what, r.text)
        assert r.json()["field"] == "external_id", (what, r.json())
    assert counts(api.engine) == before and members(api.engine) == 3


def test_an_sql_string_as_an_external_id_is_stored_and_found_as_written(api):
    for n, external_id in enumerate(EVIL):
        path = f"/api/v1/members/{quote(external_id, safe='')}"
        r = api.client.put(path, params={"program": "shop"}, headers=api.auth(Role.core),
                           json={"first_name": external_id, "attributes": {"note": external_id}})
        assert r.status_code == 200, r.text
        assert members(api.engine) == 4 + n
    for external_id in EVIL:
        r = api.client.get(f"/api/v1/members/{quote(external_id, safe='')}", params={"program": "shop"},
                           headers=api.auth(Role.core))
        assert r.status_code == 200 and r.json()["external_id"] == r.json()["first_name"] == external_id


@pytest.mark.parametrize("program", PROGRAM_EVIL)
def test_an_sql_string_as_the_program_is_a_4xx_naming_it_on_every_route(api, program):
    """Refused by the key's pattern (422), or, ``sho_`` being a valid key, not found as written (404)."""
    q = {"program": program}
    before = counts(api.engine)
    answers = [
        api.client.get("/api/v1/members/M000001", params=q, headers=api.auth()),
        api.client.put("/api/v1/members/M000001", params=q, headers=api.auth(), json={}),
        api.client.post("/api/v1/events", params=q, headers=api.auth(), json={
            "id": "e-1", "type": "registration", "member": "M000001", "occurred_at": "2026-01-01T10:00:00+00:00"}),
        api.client.get("/api/v1/reports/campaigns", params=q, headers=api.auth()),
        api.client.get("/api/v1/reports/campaigns/spring", params=q, headers=api.auth()),
        api.client.get("/api/v1/sandbox/messages", params=q, headers=api.auth()),
        api.client.post("/api/v1/suppressions", params=q, headers=api.auth(),
                        json={"items": [{"channel": "email", "reason": "bounce", "external_id": "M000001"}]}),
        api.client.get("/api/v1/pos/receipt-messages", headers=api.auth(),
                       params={**q, "card": "C-1", "store": "S1", "checkout": "K1", "width": 42}),
        api.client.get(f"/api/v1/programs/{quote(program, safe='')}/settings", headers=api.auth()),
    ]
    for r in answers:
        if program == "sho_":
            assert r.status_code == 404 and r.json()["field"] in ("program", "key"), (r.request.url, r.text)
            continue
        assert r.status_code == 422, (r.request.url, r.text)
        fields = [p["field"] for p in r.json()["problems"]]
        assert "query.program" in fields or "path.key" in fields, (r.request.url, fields)
    assert counts(api.engine) == before


@pytest.mark.parametrize("field", ["from", "to"])
@pytest.mark.parametrize("value", ["' OR 1=1 --", "2026-11-01'; DROP TABLE campaign; --", "%", "2026-11-0_"])
def test_an_sql_string_in_a_report_period_is_422_naming_it(api, field, value):
    r = api.client.get("/api/v1/reports/campaigns", params={"program": "shop", field: value},
                       headers=api.auth(Role.analyst))
    assert r.status_code == 422, r.text
    assert [p["field"] for p in r.json()["problems"]] == [field]


def test_an_sql_string_in_a_filter_of_the_outbox_is_422_naming_it(api):
    for params, field in (({"channel": "sms' OR 1=1 --"}, "query.channel"), ({"channel": "%"}, "query.channel"),
                          ({"before_id": "1 OR 1=1"}, "query.before_id"), ({"limit": "10; --"}, "query.limit")):
        r = api.client.get("/api/v1/sandbox/messages", params=params, headers=api.auth(Role.analyst))
        assert r.status_code == 422 and [p["field"] for p in r.json()["problems"]] == [field], r.text


def test_an_sql_string_as_a_card_or_store_at_the_till_gets_nothing_and_holds_nothing(api):
    seeded = seed(api.engine, program="till")
    held = stored(api.engine, seeded)                     # a receipt message waiting for card C-1
    before = counts(api.engine)
    for card, store in [("%", "S1"), ("C-_", "S1"), ("C-1' OR '1'='1", "S1"), ("C-1' --", "S1"), ("C-1\\", "S1"),
                        ("' UNION SELECT number FROM card --", "S1")]:
        r = api.client.get("/api/v1/pos/receipt-messages", headers=api.auth(Role.pos), params={
            "program": "till", "card": card, "store": store, "checkout": "K1", "width": 42})
        assert r.status_code == 200 and r.json()["messages"] == [], (card, r.text)
    r = api.client.get("/api/v1/pos/receipt-messages", headers=api.auth(Role.pos), params={
        "program": "till", "card": "C-1", "store": "S1 OR 1=1", "checkout": "K1", "width": 42})
    assert r.status_code == 422 and [p["field"] for p in r.json()["problems"]] == ["query.store"]
    assert counts(api.engine) == before
    r = api.client.get("/api/v1/pos/receipt-messages", headers=api.auth(Role.pos), params={
        "program": "till", "card": "C-1", "store": "%", "checkout": "_", "width": 42})
    assert [m["id"] for m in r.json()["messages"]] == [held]     # the real card: the store's name is just text


def test_sql_strings_in_suppressions_match_no_member_and_suppress_nothing(api):
    items = [{"channel": "email", "reason": "bounce", "address": a} for a in ("%@test.example", "m_@test.example",
                                                                               "' OR 1=1 --", "m1@test.example' --")]
    items += [{"channel": "sms", "reason": "provider", "address": "+7%"},
              {"channel": "email", "reason": "complaint", "external_id": "M00000_"}]
    before = counts(api.engine)
    r = api.client.post("/api/v1/suppressions", params={"program": "shop"}, headers=api.auth(Role.core),
                        json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["suppressed"] == 0 and r.json()["unknown"] == list(range(len(items)))
    assert counts(api.engine) == before


@pytest.mark.parametrize("value", ["%", "_", "\\", "' OR 1=1 --", "basic' OR '1'='1", "gold\"; DROP TABLE member; --"])
def test_sql_strings_in_segment_conditions_of_an_estimate_select_nobody(api, value):
    spec = {"key": "x", "name": "X", "program": "shop", "topic": "promotions", "channels": ["email"],
            "template": "double_points", "audience": {"rules": {"any": [
                {"field": "tier", "op": "eq", "value": value},
                {"field": "tier", "op": "contains", "value": value},
                {"field": "tier", "op": "in", "value": [value]},
                {"not": {"field": "tier", "op": "ne", "value": value}},
                {"field": "email", "op": "contains", "value": value},
                {"field": "locale", "op": "eq", "value": value}]},
                "include": [value], "exclude": []}}
    before = counts(api.engine)
    r = api.client.post("/api/v1/campaigns/estimate", json=spec, headers=api.auth(Role.analyst))
    assert r.status_code == 200, r.text
    assert r.json()["audience"] == 0              # every seeded member has tier basic and an email: as text, no match
    assert counts(api.engine) == before and members(api.engine) == 3


@pytest.mark.parametrize("field", ["attributes.tier') OR 1=1 --", "attributes.x\"]", "attributes.%", "tier; --"])
def test_sql_in_a_segment_field_name_is_422_naming_the_field(api, field):
    spec = {"key": "x", "name": "X", "program": "shop", "topic": "promotions", "channels": ["email"],
            "template": "double_points", "audience": {"rules": {"field": field, "op": "eq", "value": "gold"}}}
    r = api.client.post("/api/v1/campaigns/estimate", json=spec, headers=api.auth(Role.analyst))
    assert r.status_code == 422, r.text
    assert [p["field"] for p in r.json()["problems"]] == ["audience.rules.field"]


# --- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("external_id", ["' OR 1=1 --", "M00000_", "%", "M000001' --"])
def test_cli_member_commands_find_nobody_by_an_sql_string(cli, api, external_id):
    before = counts(api.engine)
    for args in (("members", "export", external_id, "-p", "shop"),
                 ("members", "erase", external_id, "-p", "shop", "--yes"),
                 ("consent", "history", external_id, "-p", "shop")):
        r = cli(*args)
        assert r.exit_code == 1, (args, r.output)
        assert external_id in r.stderr and ("not found" in r.stderr or "no member" in r.stderr), (args, r.stderr)
    assert counts(api.engine) == before and members(api.engine) == 3


@pytest.mark.parametrize("key", ["' OR 1=1 --", "sprin_", "%"])
def test_cli_report_of_an_sql_string_names_the_campaign_not_found(cli, api, key):
    r = cli("report", key, "-p", "shop")
    assert r.exit_code == 1, r.output
    assert f"campaign {key!r} not found" in r.stderr
