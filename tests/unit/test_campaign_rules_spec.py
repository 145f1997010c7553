"""The campaign rules in a spec and in program settings: valid ones parse, every mistake names its path."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.rules import ProgramRules, daily_window, parse_duration, program_rules, quiet_hours_for
from campaigns.schedule import DEFAULT_QUIET_HOURS, parse_hhmm
from campaigns.spec import load_spec, parse_spec
from tests.unit.test_campaign_spec import base, problems_of




FULL = """\
key: spring
name: Spring
program: acme
topic: promotions
channels: [email]
audience: {all: true}
template: double_points
budget: 1500.50
holdout: 0.1
start_at: 2026-12-01T10:00:00+03:00
end_at: 2026-12-08T00:00:00+03:00
send_window: {from: "10:00", to: "20:00", days: [mon, tue, wed, thu, fri]}
caps:
  - {max: 1, per: 1d, scope: campaign}
follow_ups:
  - {step: reminder, after: 3d, to: not_bought}
"""


def test_a_spec_with_every_broadcast_rule_parses():
    spec = load_spec(FULL)
    assert spec.budget == Decimal("1500.50") and spec.holdout == 0.1
    assert spec.send_window is not None and spec.send_window.days == ["mon", "tue", "wed", "thu", "fri"]
    window = daily_window(spec.send_window)
    assert (window.start, window.end, window.days) == (parse_hhmm("10:00"), parse_hhmm("20:00"),
                                                       frozenset(range(5)))
    assert spec.caps[0].per == timedelta(days=1) and spec.caps[0].scope == "campaign"
    assert spec.steps == ["main", "reminder"] and spec.template_for("reminder") == "double_points"
    # what is stored (JSON) reads back the same: running campaigns keep their rules
    assert parse_spec(spec.model_dump(mode="json", by_alias=True)) == spec


@pytest.mark.parametrize(("change", "path"), [
    ({"budget": -5}, "budget"),
    ({"budget": 0}, "budget"),
    ({"budget": "a lot"}, "budget"),
    ({"holdout": 0.7}, "holdout"),
    ({"send_window": {"from": "25:00", "to": "20:00"}}, "send_window.from"),
    ({"send_window": {"from": "10:00", "to": "20:00", "days": ["funday"]}}, "send_window.days"),
    ({"caps": [{"max": 0, "per": "1d"}]}, "caps[0].max"),
    ({"caps": [{"max": 1, "per": "soon"}]}, "caps[0].per"),
    ({"follow_ups": [{"step": "r", "after": "3d", "to": "ignored"}]}, "follow_ups[0].to"),
    ({"recurring": {"cron": "every monday"}}, "recurring.cron"),
    ({"recurring": {"cron": "0 10 * * mon", "time_zone": "Mars/Olympus"}}, "recurring.time_zone"),
    ({"end_at": "2026-12-01T10:00:00"}, "end_at"),
])
def test_a_bad_rule_is_reported_at_its_path(change, path):
    assert [p for p, _ in problems_of(base(**change))] == [path]


def test_an_end_before_the_start_is_refused():
    [(path, message)] = problems_of(base(start_at="2026-12-02T10:00:00+03:00", end_at="2026-12-01T10:00:00+03:00"))
    assert "end_at must be after start_at" in message


def test_a_triggered_campaign_needs_a_trigger_and_a_broadcast_none():
    assert "needs a trigger" in problems_of(base(kind="triggered"))[0][1]
    assert "kind: triggered" in problems_of(base(trigger={"event": "purchase"}))[0][1]


def test_a_trigger_on_an_event_with_conditions_delay_and_cancel_if_parses():
    spec = parse_spec(base(kind="triggered", trigger={
        "event": "purchase", "where": [{"field": "amount", "op": "gte", "value": 1000},
                                       {"field": "store", "op": "in", "value": ["s1", "s2"]}],
        "delay": "2h", "cancel_if": {"event": "purchase"}, "cooldown": "7d"}))
    assert spec.trigger is not None and spec.trigger.delay == timedelta(hours=2)
    assert spec.trigger.cooldown == timedelta(days=7)


@pytest.mark.parametrize(("trigger", "path"), [
    ({"event": "bought"}, "trigger.event"),
    ({"event": "purchase", "where": [{"field": "amount", "op": "gte", "value": "lots"}]}, "trigger.where[0]"),
    ({"event": "purchase", "where": [{"field": "amount; drop table", "value": 1}]}, "trigger.where[0].field"),
    ({"event": "purchase", "delay": "100d"}, "trigger"),
    ({"event": "purchase", "on": "birthday"}, "trigger"),
    ({"on": "inactivity"}, "trigger"),
])
def test_a_bad_trigger_is_reported_at_its_path(trigger, path):
    assert [p for p, _ in problems_of(base(kind="triggered", trigger=trigger))] == [path]


def test_date_rule_triggers_parse():
    spec = parse_spec(base(kind="triggered", trigger={"on": "birthday", "days": 3}))
    assert spec.trigger is not None and spec.trigger.on == "birthday"


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_durations_read_as_written(n, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{n}{unit}") == timedelta(seconds=n * seconds)


def test_program_rules_default_and_override_quiet_hours_per_channel():
    rules = program_rules({"quiet_hours": {"sms": {"from": "22:00", "to": "08:00"}, "push": None}})
    sms = quiet_hours_for(rules, "sms")
    assert (sms.start, sms.end) == (parse_hhmm("22:00"), parse_hhmm("08:00"))
    assert quiet_hours_for(rules, "push") is None                       # switched off
    assert quiet_hours_for(rules, "telegram") == DEFAULT_QUIET_HOURS["telegram"]  # default 21:00-09:00
    assert quiet_hours_for(rules, "email") is None                      # email is exempt


@pytest.mark.parametrize("settings", [
    {"unit_costs": {"fax": 1}},
    {"unit_costs": {"sms": -1}},
    {"quiet_hours": {"pigeon": None}},
    {"quiet_hours": {"sms": {"from": "21:00", "to": "21:00"}}},
    {"caps": [{"max": 3}]},
    {"colour": "red"},
])
def test_bad_program_rules_are_refused(settings):
    with pytest.raises(ValueError):
        ProgramRules.model_validate(settings)
