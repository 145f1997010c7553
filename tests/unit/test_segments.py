"""Segment rules: every field type and operator validates; each mistake is one problem at the path of
the rule; the older audience forms stay valid and dump as before; the CLI reads specs, segment files
and bare rules."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

import campaigns.spec
from app.segment_cli import load_segment, segment_app
from campaigns.segments import MAX_DEPTH, Audience, DaysAgo, Op, Rule, error_path, problems


def problems_of(audience: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        Audience.model_validate(audience)
    return problems(info.value, ("audience",))


def one_problem(audience: Any) -> tuple[str, str]:
    found = problems_of(audience)
    assert len(found) == 1, found
    return found[0]


def rules(r: Any, **more: Any) -> dict[str, Any]:
    return {"rules": r, **more}


def leaf(field: str, op: str | None = None, value: Any = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"field": field, **kw}
    if op is not None:
        out["op"] = op
    if value is not None:
        out["value"] = value
    return out


# --- valid rules ---------------------------------------------------------------------------------


VALID = [
    leaf("tier", "in", ["gold", "silver"]),
    leaf("tier", "eq", 7),                                  # whole numbers are read as text for text fields
    leaf("city", "eq", "Kazan"),
    leaf("city", value="Kazan"),                             # op defaults to eq
    leaf("city", "contains", "az"),
    leaf("city", "exists"),
    leaf("city", "exists", False),
    leaf("kind", "eq", "legal_entity"),
    leaf("kind", "not_in", ["individual"]),
    leaf("locale", "in", ["ru", "ru-RU"]),
    leaf("time_zone", "ne", "Europe/Moscow"),
    leaf("email", "exists"),
    leaf("birthday_month", "eq", 12),
    leaf("birthday_month", "between", [11, 2]),             # months wrap around the new year
    leaf("birthday", "lt", date(2000, 1, 1)),
    leaf("registered_at", "gte", "2025-01-01"),
    leaf("registered_at", "gte", {"days_ago": 30}),
    leaf("registered_at", "between", ["2024-01-01", "2024-12-31"]),
    leaf("attributes.score", "gt", 3),
    leaf("attributes.score", "between", [1.5, 3]),
    leaf("attributes.score", "in", [1, 2.5]),
    leaf("attributes.vip", "eq", True),
    leaf("attributes.vip", "ne", False),
    leaf("attributes.joined", "gte", "2025-01-01"),
    leaf("attributes.joined", "lt", {"days_ago": 10}),
    leaf("attributes.tags", "contains", "vip"),
    leaf("attributes.lucky", "contains", 7),
    leaf("attributes.note", "exists", False),
    leaf("purchases.count", "gte", 2, days=30),
    leaf("purchases.count", "eq", 0),
    leaf("purchases.count", "between", [1, 3], days=7),
    leaf("purchases.sum", "gt", 5000, days=90),
    leaf("purchases.sum", "lte", 99.5),
    leaf("purchases.last_at", "lt", {"days_ago": 60}),
    leaf("purchases.last_at", "gte", "2025-01-01"),
    leaf("purchases.last_at", "lt", "2025-01-01T10:00:00+03:00"),
    leaf("purchases.last_at", "gt", datetime(2025, 1, 1, tzinfo=timezone.utc)),
    leaf("purchases.last_at", "between", [{"days_ago": 90}, {"days_ago": 30}]),
    leaf("purchases.last_at", "exists", False),
    leaf("purchases.category", "in", ["coffee"], days=30),
    leaf("purchases.category", "ne", "tea"),
    leaf("purchases.store", "eq", "store-12", days=30),
    leaf("purchases.store", "eq", 12),
    leaf("card.status", "eq", "active"),
    leaf("card.status", "exists"),
    leaf("consent", channel="email", topic="promotions"),
    leaf("consent", channel="sms", topic="*", value=False),
    {"all": [leaf("tier", "eq", "gold"), {"any": [leaf("city", "eq", "Kazan"), {"not": leaf("kind", "eq", "individual")}]}]},
]


@pytest.mark.parametrize("rule", VALID, ids=lambda r: json.dumps(r, default=str)[:70])
def test_valid_rule_parses_and_survives_a_json_round_trip(rule):
    audience = Audience.model_validate(rules(rule))

    dumped = audience.model_dump(mode="json")
    again = Audience.model_validate(json.loads(json.dumps(dumped)))

    assert again == audience
    assert again.model_dump(mode="json") == dumped


def test_values_are_normalized_to_their_field_type():
    r = Audience.model_validate(rules({"all": [
        leaf("tier", "in", ["gold", 7]),
        leaf("registered_at", "gte", "2025-01-01"),
        leaf("purchases.last_at", "lt", {"days_ago": 60}),
        leaf("purchases.last_at", "lt", "2025-01-01T10:00:00+03:00"),
        leaf("city", "exists"),
        leaf("consent", channel="email", topic="promotions"),
    ]})).rules
    assert r is not None and r.all is not None
    tier, registered, relative, absolute, city, consent = r.all

    assert tier.op is Op.in_ and tier.value == ["gold", "7"]
    assert registered.value == date(2025, 1, 1)
    assert relative.value == DaysAgo(days_ago=60)
    assert absolute.value == datetime(2025, 1, 1, 10, tzinfo=timezone(timedelta(hours=3)))
    assert city.value is True
    assert consent.op is Op.eq and consent.value is True


def test_rules_dump_only_the_keys_that_were_set_with_not_spelled_as_in_yaml():
    audience = Audience.model_validate(rules({"not": leaf("tier", value="gold")}, exclude=["M1"]))

    assert audience.model_dump(mode="json") == {
        "all": False, "filter": [], "rules": {"not": {"field": "tier", "op": "eq", "value": "gold"}},
        "exclude": ["M1"]}


@pytest.mark.parametrize("depth", [1, MAX_DEPTH])
def test_groups_nest_up_to_the_bound(depth):
    node: dict[str, Any] = leaf("tier", value="gold")
    for i in range(depth):
        node = {("all", "any", "not")[i % 3]: node if i % 3 == 2 else [node]}

    Audience.model_validate(rules(node))


# --- one problem, at the rule's path -------------------------------------------------------------


def test_operator_not_allowed_for_a_text_field_names_the_nested_path_and_the_allowed_operators():
    data = rules({"all": [leaf("tier", value="gold"), {"any": [leaf("city", "gt", "Kazan")]}]})

    assert one_problem(data) == (
        "audience.rules.all[1].any[0].op",
        "'gt' is not allowed for field 'city' (text): use eq, ne, in, not_in, exists, contains")


@pytest.mark.parametrize(("rule", "path", "words"), [
    (leaf("tier", "like", "gold"), "op", ["'like' is not an operator", "contains"]),
    (leaf("salary", "gt", 3), "field", ["unknown field 'salary'", "attributes.<name>", "purchases.count"]),
    (leaf("attributes.bad-name", value=1), "field", ["unknown field 'attributes.bad-name'"]),
    (leaf("kind", "contains", "ind"), "op", ["(enum)", "eq, ne, in, not_in"]),
    (leaf("birthday_month", "contains", 1), "op", ["(month)"]),
    (leaf("registered_at", "in", ["2025-01-01"]), "op", ["(date)"]),
    (leaf("purchases.count", "exists"), "op", ["'exists' is not allowed for field 'purchases.count'"]),
    (leaf("purchases.last_at", "eq", "2025-01-01"), "op", ["gt, gte, lt, lte, between, exists"]),
    (leaf("consent", "ne", True, channel="email", topic="promotions"), "op", ["(consent)"]),
    # values of the wrong type
    (leaf("tier", "eq", 3.5), "value", ["takes text, not 3.5"]),
    (leaf("city", "eq", False), "value", ["quote the text"]),
    (leaf("kind", "eq", "company"), "value", ["'company' is not a kind", "individual or legal_entity"]),
    (leaf("purchases.count", "gte", "two", days=30), "value", ["takes a number, not 'two'"]),
    (leaf("purchases.sum", "gt", True), "value", ["takes a number"]),
    (leaf("purchases.sum", "gt", float("inf")), "value", ["takes a number"]),
    (leaf("birthday_month", "eq", 13), "value", ["month number 1-12"]),
    (leaf("registered_at", "gte", "yesterday"), "value", ["YYYY-MM-DD or {days_ago: N}"]),
    (leaf("registered_at", "gte", "2025-02-30"), "value", ["not a calendar date"]),
    (leaf("registered_at", "gte", "2025-01-01T10:00:00+00:00"), "value", ["takes a date (YYYY-MM-DD), not a time"]),
    (leaf("purchases.last_at", "lt", "2025-01-01T10:00:00"), "value", ["time zone offset"]),
    (leaf("purchases.last_at", "lt", {"days_ago": -1}), "value", ["{days_ago: N}"]),
    (leaf("purchases.last_at", "lt", {"days": 3}), "value", ["{days_ago: N}"]),
    (leaf("attributes.vip", "gt", True), "value", ["'gt' does not apply to a true/false value"]),
    (leaf("attributes.x", "contains", {"days_ago": 3}), "value", ["does not apply to a date value"]),
    (leaf("attributes.x", "eq", datetime(2025, 1, 1, tzinfo=timezone.utc)), "value", ["not times"]),
    (leaf("attributes.x", "eq", {"a": 1}), "value", ["{days_ago: N}"]),
    # values of the wrong shape for the operator
    (leaf("tier", "in", "gold"), "value", ["'in' takes a non-empty list"]),
    (leaf("tier", "not_in", []), "value", ["non-empty list"]),
    (leaf("tier", "eq", ["gold"]), "value", ["one value, not a list (use in)"]),
    (leaf("tier", "in", ["gold", 3.5]), "value", ["item 1:", "3.5"]),
    (leaf("tier", "eq"), "value", ["'eq' needs a value"]),
    (leaf("tier", "exists", "yes"), "value", ["'exists' takes true or false"]),
    (leaf("purchases.sum", "between", [10, 5]), "value", ["low <= high"]),
    (leaf("purchases.sum", "between", [10]), "value", ["[low, high]"]),
    (leaf("attributes.x", "in", [1, "a"]), "value", ["one kind", "number and text"]),
    (leaf("attributes.x", "in", list(range(1001))), "value", ["at most 1000"]),
    # days, channel, topic
    (leaf("purchases.count", "gte", 2, days=0), "days", ["from 1 to"]),
    (leaf("purchases.count", "gte", 2, days="30"), "days", ["whole number"]),
    (leaf("tier", "eq", "gold", days=30), "days", ["applies to purchases.count"]),
    (leaf("purchases.last_at", "lt", {"days_ago": 60}, days=5), "days", ["{days_ago: N}"]),
    (leaf("consent", channel="fax", topic="promotions"), "channel", ["'fax' is not one", "email, sms"]),
    (leaf("consent", topic="promotions"), "channel", ["needs channel"]),
    (leaf("consent", channel="email"), "topic", ["needs topic", "'*'"]),
    (leaf("consent", channel="email", topic="Promo Tions"), "topic", ["needs topic"]),
    (leaf("consent", channel="email", topic="promotions", value="yes"), "value", ["true"]),
    (leaf("city", "eq", "x", channel="email"), "channel", ["'channel' applies to field 'consent' only"]),
    (leaf("city", "eq", "x", negate=True), "negate", ["Extra inputs are not permitted"]),
])
def test_each_mistake_is_one_problem_at_the_key_of_the_nested_rule(rule, path, words):
    where, message = one_problem(rules({"all": [leaf("tier", value="gold"), {"not": rule}]}))

    assert where == f"audience.rules.all[1].not.{path}"
    for word in words:
        assert word in message


@pytest.mark.parametrize(("rule", "path", "words"), [
    ({"all": []}, "rules.all", ["non-empty list of rules"]),
    ({"any": {"field": "tier", "value": "gold"}}, "rules.any", ["non-empty list of rules"]),
    ({"not": [leaf("tier", value="gold")]}, "rules.not", ["takes one rule", "not: {any: [...]}"]),
    ({"all": [leaf("tier", value="gold")], "any": [leaf("tier", value="gold")]}, "rules", ["one of all, any, not"]),
    ({"all": [leaf("tier", value="gold")], "field": "city"}, "rules", ["'all' groups rules and takes no field"]),
    ({"op": "eq", "value": 3}, "rules", ["needs field", "found op, value"]),
    ({"feild": "tier"}, "rules", ["found feild"]),
    ({"all": [3]}, "rules.all[0]", ["a rule is a mapping"]),
    ([leaf("tier", value="gold")], "rules", ["wrap a list in all: [...]"]),
])
def test_badly_shaped_groups_are_one_problem_each(rule, path, words):
    where, message = one_problem(rules(rule))

    assert where == f"audience.{path}"
    for word in words:
        assert word in message


def test_too_deep_nesting_is_refused_before_it_is_walked():
    node: dict[str, Any] = leaf("tier", value="gold")
    for _ in range(MAX_DEPTH + 1):
        node = {"not": node}
    deeper: dict[str, Any] = node
    for _ in range(5000):  # far past any recursion limit
        deeper = {"all": [deeper]}

    for data in (node, deeper):
        where, message = one_problem(rules(data))
        assert where == "audience.rules"
        assert f"at most {MAX_DEPTH} levels" in message


def test_too_many_rules_are_refused():
    where, message = one_problem(rules({"any": [leaf("tier", value=f"t{i}") for i in range(300)]}))

    assert where == "audience.rules" and "at most 200 rules" in message


def test_several_mistakes_are_each_reported_at_their_own_path():
    data = rules({"all": [leaf("tier", "gt", "gold"), leaf("purchases.count", "gte", "x"),
                          {"any": [leaf("nope", value=1)]}]})

    assert [p for p, _ in problems_of(data)] == [
        "audience.rules.all[0].op", "audience.rules.all[1].value", "audience.rules.all[2].any[0].field"]


@pytest.mark.parametrize(("audience", "path", "words"), [
    ({}, "audience", ["set all: true, rules, filter or include"]),
    ({"all": False}, "audience", ["set all: true"]),
    ({"all": True, "rules": leaf("tier", value="gold")}, "audience", ["all: true / rules"]),
    ({"filter": [{"field": "locale", "value": "ru"}], "rules": leaf("tier", value="gold")}, "audience",
     ["filter / rules"]),
    ({"all": True, "include": "M1"}, "audience.include", ["list of member external ids"]),
    ({"all": True, "exclude": ["M1", ""]}, "audience.exclude", ["item 1"]),
    ({"all": True, "exclude": ["M1"] * 5001}, "audience.exclude", ["at most 5000"]),
    ({"all": True, "colour": "red"}, "audience.colour", ["Extra inputs"]),
])
def test_audience_level_mistakes(audience, path, words):
    where, message = one_problem(audience)

    assert where == path
    for word in words:
        assert word in message


def test_injection_strings_are_just_values_to_the_model():
    evil = "'; DROP TABLE member; --"

    audience = Audience.model_validate(rules(leaf("city", "in", [evil]), include=[evil], exclude=[evil]))

    assert audience.rules is not None and audience.rules.value == [evil]
    assert audience.include == [evil]


def test_error_paths_render_as_dotted_paths_with_indexes():
    with pytest.raises(ValidationError) as info:
        Audience.model_validate(rules({"all": [leaf("tier", value="gold"), {"any": [leaf("city", "gt", 3)]}]}))

    [err] = info.value.errors()
    assert error_path(("audience", *err["loc"])) == "audience.rules.all[1].any[0].op"
    assert err["msg"].startswith("'gt' is not allowed")  # no "Value error, " prefix to strip


# --- the older forms -------------------------------------------------------------------------------


def old_dump(audience: dict[str, Any]) -> dict[str, Any]:
    """What campaigns.spec.Audience dumped before segments existed."""
    return {"all": audience.get("all", False), "filter": [
        {"field": c["field"], "op": c.get("op", "eq"), "value": c["value"]} for c in audience.get("filter", [])]}


@pytest.mark.parametrize("audience", [
    {"all": True},
    {"filter": [{"field": "attributes.tier", "op": "in", "value": ["gold", "silver"]},
                {"field": "locale", "value": "ru-RU"}]},
    {"filter": [{"field": "attributes.score", "op": "ne", "value": 3}, {"field": "kind", "value": True}]},
])
def test_older_forms_stay_valid_and_dump_exactly_as_before(audience):
    parsed = Audience.model_validate(audience)
    dumped = parsed.model_dump(mode="json")

    assert dumped == old_dump(audience)
    assert hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest() == \
        hashlib.sha256(json.dumps(old_dump(audience), sort_keys=True).encode()).hexdigest()
    assert Audience.model_validate(dumped) == parsed


@pytest.mark.parametrize(("audience", "expected"), [
    ({"filter": [{"field": "locale", "op": "like", "value": "ru"}]}, "audience.filter[0].op"),
    ({"filter": [{"field": "locale", "op": "in", "value": "ru"}]}, "audience.filter[0]"),
    ({"filter": [{"field": "salary", "value": 1}]}, "audience.filter[0].field"),
    ({"filter": [{"field": "locale", "value": {"lang": "ru"}}]}, "audience.filter[0].value"),
    ({"filter": [{"field": "locale", "value": "ru", "negate": True}]}, "audience.filter[0].negate"),
])
def test_older_filter_mistakes_keep_their_paths(audience, expected):
    assert one_problem(audience)[0] == expected


def test_older_filter_value_of_wrong_type_is_one_problem_with_a_hint():
    assert one_problem({"filter": [{"field": "locale", "value": {"lang": "ru"}}]}) == (
        "audience.filter[0].value", "use text, a number, true/false, or a list of those")


SPEC = {"key": "dp", "name": "Double points", "program": "acme", "topic": "promotions", "channels": ["email"],
        "template": "double_points"}


def test_spec_reports_a_bad_nested_rule_at_its_path():
    data = {**SPEC, "audience": rules({"all": [leaf("tier", value="gold"), {"any": [leaf("city", "gt", 3)]}]})}

    with pytest.raises(campaigns.spec.SpecError) as info:
        campaigns.spec.parse_spec(data)

    assert info.value.problems == [("audience.rules.all[1].any[0].op",
                                    "'gt' is not allowed for field 'city' (text): use eq, ne, in, not_in, "
                                    "exists, contains")]


def test_spec_keeps_the_message_of_a_bad_rule_value():
    data = {**SPEC, "audience": rules(leaf("purchases.count", "gte", "two", days=30))}

    with pytest.raises(campaigns.spec.SpecError) as info:
        campaigns.spec.parse_spec(data)

    assert info.value.problems == [("audience.rules.value",
                                    "field 'purchases.count' (number) takes a number, not 'two'")]


# --- the CLI: reading files ----------------------------------------------------------------------------


def test_cli_reads_a_campaign_spec_a_segment_file_and_bare_rules():
    spec = "key: dp\nprogram: shop\naudience:\n  rules: {field: tier, value: gold}\n"
    segment = "program: shop\nrules: {field: tier, value: gold}\nexclude: [M1]\n"
    bare = "all:\n  - {field: tier, value: gold}\n  - {field: purchases.count, days: 30, op: gte, value: 2}\n"

    assert load_segment(spec)[0] == "shop"
    assert load_segment(spec, program="other")[0] == "other"
    assert load_segment(segment)[1].exclude == ["M1"]
    key, audience = load_segment(bare, program="shop")
    assert key == "shop" and audience.rules is not None and len(audience.rules.all or []) == 2
    assert load_segment("program: shop\nall: true\n")[1].all is True


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    app = typer.Typer()
    app.add_typer(segment_app, name="segment")

    def run(text: str, *args: str):
        path = tmp_path / "segment.yaml"
        path.write_text(text, encoding="utf-8")
        return CliRunner().invoke(app, ["segment", "count", str(path), *args])
    return run


@pytest.mark.parametrize(("text", "args", "line"), [
    ("program: shop\naudience:\n  rules:\n    all:\n      - {field: tier, value: gold}\n"
     "      - any: [{field: city, op: gt, value: Kazan}]\n", [],
     "audience.rules.all[1].any[0].op: 'gt' is not allowed for field 'city' (text)"),
    ("any:\n  - {field: tier, op: in, value: gold}\n", ["--program", "shop"],
     "any[0].value: 'in' takes a non-empty list"),
    ("all: [{field: tier, value: gold}]\n", [], "program: the file names no program"),
    ("program: shop\nall: [{field: tier, value: gold}\n", [], "not valid YAML"),
    ("- just\n- a list\n", ["-p", "shop"], "the file must be a mapping"),
    ("program: shop\ncolour: red\n", [], "found no audience"),
    ("program: shop\nall: true\n", ["--now", "2026-01-01T10:00:00"], "--now: give a time zone offset"),
])
def test_cli_bad_file_is_one_line_naming_the_path_and_exit_code_2(cli, text, args, line):
    result = cli(text, *args)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and line in lines[0], result.output


def test_audience_clause_takes_the_older_spec_audience_too():
    from sqlalchemy.dialects import sqlite

    from campaigns.audience import audience_clause

    older = campaigns.spec.CampaignSpec.model_validate({**SPEC, "audience": {
        "filter": [{"field": "attributes.tier", "op": "in", "value": ["gold"]}]}}).audience

    sql = str(audience_clause(1, older).compile(dialect=sqlite.dialect()))

    assert "json_extract(member.attributes" in sql and "member.program_id" in sql


def test_cli_lists_every_field_with_its_operators(tmp_path, monkeypatch):
    app = typer.Typer()
    app.add_typer(segment_app, name="segment")

    result = CliRunner().invoke(app, ["segment", "fields"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    for name in ("purchases.last_at", "birthday_month", "card.status", "consent", "attributes.<name>"):
        assert name in result.output
