"""Campaign spec files: a valid spec parses; every mistake is reported with the path of the bad field."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from campaigns.spec import CampaignSpec, SpecError, load_spec, parse_spec
from storage.tables import ChannelName

VALID_YAML = """\
key: double-points-june
name: Double points week
program: acme
topic: promotions
channels: [email]
audience:
  filter:
    - field: attributes.tier
      op: in
      value: [gold, silver]
    - field: locale
      value: ru-RU
template: double_points
locale_default: ru_RU
start_at: 2026-12-01T10:00:00+03:00
"""


def base(**changes) -> dict:
    spec = {
        "key": "dp",
        "name": "Double points",
        "program": "acme",
        "topic": "promotions",
        "channels": ["email"],
        "audience": {"all": True},
        "template": "double_points",
    }
    spec.update(changes)
    return spec


def problems_of(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def paths_of(data) -> list[str]:
    return [path for path, _ in problems_of(data)]


def test_valid_spec_file_parses_into_campaign_fields():
    spec = load_spec(VALID_YAML)

    assert isinstance(spec, CampaignSpec)
    assert spec.key == "double-points-june"
    assert spec.channels == [ChannelName.email]
    assert spec.kind == "broadcast"
    assert [(c.field, c.op.value, c.value) for c in spec.audience.filter] == [
        ("attributes.tier", "in", ["gold", "silver"]),
        ("locale", "eq", "ru-RU"),
    ]
    assert spec.locale_default == "ru-RU"
    assert spec.start_at == datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=3)))


def test_audience_all_without_filter_is_valid():
    spec = parse_spec(base())

    assert spec.audience.all is True
    assert spec.audience.filter == []


def test_unknown_filter_op_is_reported_at_its_path():
    data = base(audience={"filter": [{"field": "locale", "op": "like", "value": "ru"}]})

    problems = problems_of(data)

    assert [p for p, _ in problems] == ["audience.filter[0].op"]
    assert "'in'" in problems[0][1]


def test_bad_op_in_second_condition_names_index_one():
    data = base(audience={"filter": [
        {"field": "locale", "value": "ru"},
        {"field": "kind", "op": "between", "value": "x"},
    ]})

    assert paths_of(data) == ["audience.filter[1].op"]


def test_in_op_with_single_value_asks_for_a_list():
    data = base(audience={"filter": [{"field": "locale", "op": "in", "value": "ru"}]})

    assert problems_of(data) == [("audience.filter[0]", "op 'in' needs a list value")]


def test_eq_op_with_a_list_asks_for_a_single_value():
    data = base(audience={"filter": [{"field": "locale", "op": "eq", "value": ["ru", "en"]}]})

    assert problems_of(data) == [("audience.filter[0]", "op 'eq' needs a single value, not a list")]


def test_filter_on_unknown_member_field_is_refused_with_the_allowed_fields():
    data = base(audience={"filter": [{"field": "salary", "value": 1}]})

    [(path, message)] = problems_of(data)

    assert path == "audience.filter[0].field"
    assert "'salary'" in message and "attributes.<name>" in message


@pytest.mark.parametrize("audience", [{}, {"all": False}, {"filter": []}])
def test_audience_with_neither_all_nor_filter_is_refused(audience):
    assert problems_of(base(audience=audience)) == [
        ("audience", "set all: true, rules, filter or include")]


def test_audience_with_both_all_and_filter_is_refused():
    data = base(audience={"all": True, "filter": [{"field": "locale", "value": "ru"}]})

    assert paths_of(data) == ["audience"]


def test_unknown_channel_is_reported_at_its_list_position():
    [(path, message)] = problems_of(base(channels=["fax"]))

    assert path == "channels[0]"
    assert "'email'" in message


def test_every_channel_may_be_listed_as_a_fallback_order():
    order = ["telegram", "push", "sms", "whatsapp", "email", "inbox", "receipt", "direct_mail"]
    spec = parse_spec(base(channels=order))
    assert [c.value for c in spec.channels] == order


def test_a_channel_listed_twice_is_refused():
    [(path, message)] = problems_of(base(channels=["email", "sms", "email"]))

    assert path == "channels"
    assert "once" in message


def test_empty_channel_list_is_refused():
    assert paths_of(base(channels=[])) == ["channels"]


def test_naive_start_time_is_refused_with_an_example_offset():
    [(path, message)] = problems_of(base(start_at="2026-12-01T10:00:00"))

    assert path == "start_at"
    assert "+03:00" in message


def test_naive_start_time_written_as_yaml_timestamp_is_refused():
    text = VALID_YAML.replace("2026-12-01T10:00:00+03:00", "2026-12-01 10:00:00")

    with pytest.raises(SpecError) as info:
        load_spec(text)

    assert [p for p, _ in info.value.problems] == ["start_at"]


def test_unknown_top_level_field_is_named():
    assert problems_of(base(colour="red")) == [("colour", "Extra inputs are not permitted")]


def test_unknown_field_inside_a_condition_is_named():
    data = base(audience={"filter": [{"field": "locale", "value": "ru", "negate": True}]})

    assert paths_of(data) == ["audience.filter[0].negate"]


def test_every_missing_required_field_is_listed():
    assert sorted(paths_of({"name": "x"})) == sorted(
        ["key", "program", "topic", "channels", "audience", "template"])


@pytest.mark.parametrize("key", ["Double", "-dp", "dp week", "", "x" * 65])
def test_key_outside_slug_pattern_is_refused(key):
    assert paths_of(base(key=key)) == ["key"]


def test_unknown_default_locale_is_refused():
    assert problems_of(base(locale_default="xx-zz")) == [("locale_default", "unknown locale 'xx-zz'")]


@pytest.mark.parametrize("data", [None, [], "key: dp", 3])
def test_spec_that_is_not_a_mapping_is_refused(data):
    assert paths_of(data) == [""]


def test_empty_yaml_file_is_refused():
    with pytest.raises(SpecError) as info:
        load_spec("")

    assert [p for p, _ in info.value.problems] == [""]


def test_bad_yaml_reports_line_and_column():
    text = "key: dp\nchannels: [email\nname: x\n"

    with pytest.raises(SpecError) as info:
        load_spec(text)

    [(where, message)] = info.value.problems
    assert where.startswith("line 3, column ")
    assert message.startswith("not valid YAML")


def test_spec_error_text_lists_every_problem_with_its_path():
    error = SpecError([("channels[0]", "bad channel"), ("start_at", "naive")])

    assert str(error) == "channels[0]: bad channel; start_at: naive"


def test_filter_value_of_wrong_type_is_one_problem_at_the_value_path():
    data = base(audience={"filter": [{"field": "locale", "value": {"lang": "ru"}}]})

    assert paths_of(data) == ["audience.filter[0].value"]


def test_variants_errors_name_their_path():
    problems = dict(problems_of(base(variants=[{"key": "a", "share": 50}, {"key": "b", "share": 49.9}])))
    assert "variant shares add up to 99.9, not 100" in problems["variants"]
    problems = dict(problems_of(base(variants=[{"key": "a", "share": 0}, {"key": "b", "share": 100}])))
    assert "variants[0].share" in problems


def test_variant_templates_and_channels_are_what_the_main_step_uses():
    spec = parse_spec(base(template="double_points", variants=[
        {"key": "a", "share": 50}, {"key": "b", "share": 50, "template": "weekend_offer", "channels": ["sms"]}],
        follow_ups=[{"step": "again", "after": "2d", "to": "not_opened"}]))
    assert spec.template_for("main", "b") == "weekend_offer" and spec.template_for("main", "a") == "double_points"
    assert [c.value for c in spec.channels_for("main", "b")] == ["sms"]
    assert spec.template_for("again", "b") == "double_points"     # follow-ups keep the campaign's
    assert spec.all_templates == ["double_points", "weekend_offer"]


def test_attribution_window_and_report_segments():
    base = {"key": "k", "name": "N", "program": "acme", "topic": "promotions", "channels": ["email"],
            "audience": {"all": True}, "template": "t"}
    spec = parse_spec(base)
    assert spec.attribution_window == timedelta(days=7) and spec.segments == {}
    spec = parse_spec({**base, "attribution_window": "36h",
                       "segments": {"gold": {"field": "tier", "value": "gold"},
                                    "kazan": {"field": "city", "value": "Kazan"}}})
    assert spec.attribution_window == timedelta(hours=36) and list(spec.segments) == ["gold", "kazan"]
    for bad, path in [({"attribution_window": "30m"}, "attribution_window"),
                      ({"attribution_window": "91d"}, "attribution_window"),
                      ({"segments": {"other": {"field": "tier", "value": "x"}}}, "segments"),
                      ({"segments": {"Gold!": {"field": "tier", "value": "x"}}}, "segments"),
                      ({"segments": {f"s{i}": {"field": "tier", "value": "x"} for i in range(11)}}, "segments"),
                      ({"segments": {"g": {"field": "nope", "value": 1}}}, "segments.g.field")]:
        with pytest.raises(SpecError) as err:
            parse_spec({**base, **bad})
        assert err.value.problems[0][0] == path, err.value.problems


def test_a_spec_stored_before_new_defaulted_fields_is_the_same_spec():
    from app.campaigns import _same_spec, spec_hash

    base = {"key": "k", "name": "N", "program": "acme", "topic": "promotions", "channels": ["email"],
            "audience": {"all": True}, "template": "t"}
    spec = parse_spec(base)
    stored = spec.model_dump(mode="json")
    for newer in ("attribution_window", "segments", "variants"):
        stored.pop(newer)
    assert spec_hash(parse_spec(stored)) == spec_hash(spec) and _same_spec(stored, spec)
    assert not _same_spec({**stored, "name": "Other"}, spec)
    assert not _same_spec({"broken": True}, spec)
