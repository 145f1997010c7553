"""Bad campaign specs and campaign changes, over the API and the CLI: malformed YAML or JSON, a spec that is
not UTF-8, an unknown segment field, a negative budget, an end before the start, a triggered campaign without
a trigger. Each is a 422 (API) or exit 2 (CLI) naming the field, refused before Temporal is needed (none
runs here), and no table changes."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient

from app.api.main import create_app
from storage.tables import Role
from tests.badinput.conftest import counts
from tests.factories import campaign_spec, make_campaign, seed_members

YAML = {"Content-Type": "application/yaml"}
JSON = {"Content-Type": "application/json"}


def spec_yaml(**over: object) -> str:
    return yaml.safe_dump(campaign_spec(**over), sort_keys=False, allow_unicode=True)


BAD_SPECS = {
    # name: (body, content type, the field the answer must name, words of its message)
    "malformed YAML": (b"key: spring\nname: [unclosed\nprogram: shop\n", YAML, "line 3, column 8",
                       "not valid YAML"),
    "malformed JSON": (b'{"key": "spring", "name": ', JSON, "body", "not valid JSON"),
    "YAML not UTF-8": (spec_yaml(name="Caf\u00e9").encode("utf-8").replace("Caf\u00e9".encode(), b"Caf\xe9"),
                       YAML, "body", "not UTF-8"),
    "JSON not UTF-8": (json.dumps(campaign_spec()).encode().replace(b"Spring", b"Spr\xefng"), JSON, "body",
                       "not UTF-8"),
    "unknown segment field": (spec_yaml(audience={"rules": {"all": [
        {"field": "tier", "op": "eq", "value": "gold"},
        {"any": [{"field": "shoe_size", "op": "eq", "value": 42}]}]}}).encode(), YAML,
        "audience.rules.all[1].any[0].field", "unknown field 'shoe_size'"),
    "negative budget": (json.dumps(campaign_spec(budget=-5)).encode(), JSON, "budget", "greater than 0"),
    "zero budget": (spec_yaml(budget=0).encode(), YAML, "budget", "greater than 0"),
    "end before start": (spec_yaml(start_at="2026-12-08T10:00:00+03:00", end_at="2026-12-01T10:00:00+03:00"
                                   ).encode(), YAML, "end_at", "end_at must be after start_at"),
    "end equal to start": (json.dumps(campaign_spec(start_at="2026-12-08T10:00:00+03:00",
                                                    end_at="2026-12-08T07:00:00Z")).encode(), JSON, "end_at",
                           "must be after start_at"),
    "triggered without a trigger": (json.dumps(campaign_spec(kind="triggered")).encode(), JSON, "trigger",
                                    "needs a trigger"),
    "unknown time zone of a recurrence": (spec_yaml(recurring={"cron": "0 10 * * mon", "time_zone": "Mars/Base"}
                                                    ).encode(), YAML, "recurring.time_zone", "Mars/Base"),
    "unknown default locale": (spec_yaml(locale_default="zz-QQ").encode(), YAML, "locale_default",
                               "unknown locale"),
}


@pytest.mark.parametrize("route", ["/api/v1/campaigns", "/api/v1/campaigns/estimate"])
@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_is_422_naming_its_field_and_nothing_is_written(api, route, case):
    body, headers, field, words = BAD_SPECS[case]
    before = counts(api.engine)
    r = api.client.post(route, content=body, headers={**api.auth(Role.marketer), **headers})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [p["field"] for p in problems] == [field], problems
    assert words in problems[0]["message"]
    assert counts(api.engine) == before


@pytest.mark.parametrize(("limit", "words"), [(-5, "greater than 0"), (0, "greater than 0"),
                                              ("NaN", "finite"), ("-Infinity", "finite"),
                                              ("a lot", "valid decimal"), (0.00001, "4 decimal places")])
def test_a_bad_budget_change_is_422_naming_limit_before_temporal_is_asked(api, limit, words):
    make_campaign(api.engine, api.program_id)
    before = counts(api.engine)
    r = api.client.put("/api/v1/campaigns/spring/budget", params={"program": "shop"}, json={"limit": limit},
                       headers=api.auth(Role.marketer))
    assert r.status_code == 422, r.text       # was 503: Temporal was reached for before the body was checked
    [problem] = r.json()["problems"]
    assert problem["field"] == "limit" and words in problem["message"]
    assert counts(api.engine) == before


@pytest.mark.parametrize(("end_at", "words"), [("2026-12-01T10:00:00", "timezone"), ("next week", "datetime")])
def test_a_bad_end_date_is_422_naming_end_at_before_temporal_is_asked(api, end_at, words):
    make_campaign(api.engine, api.program_id)
    before = counts(api.engine)
    r = api.client.put("/api/v1/campaigns/spring/end", params={"program": "shop"}, json={"end_at": end_at},
                       headers=api.auth(Role.marketer))
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert problem["field"] == "end_at" and words in problem["message"]
    assert counts(api.engine) == before


# --- the CLI ---------------------------------------------------------------------------------


CLI_SPECS = {
    "malformed YAML": ("key: spring\nname: [unclosed\nprogram: shop\n", "line 3, column 8: not valid YAML"),
    "not a mapping": ("- key: spring\n- name: x\n", "the spec must be a mapping"),
    "unknown segment field": (spec_yaml(audience={"rules": {"field": "shoe_size", "op": "eq", "value": 42}}),
                              "audience.rules.field: unknown field 'shoe_size'"),
    "negative budget": (spec_yaml(budget=-5), "budget: Input should be greater than 0"),
    "end before start": (spec_yaml(start_at="2026-12-08T10:00:00+03:00", end_at="2026-12-01T10:00:00+03:00"),
                         "end_at: end_at must be after start_at"),
    "unknown time zone": (spec_yaml(recurring={"cron": "0 10 * * mon", "time_zone": "Mars/Base"}),
                          "recurring.time_zone: unknown time zone 'Mars/Base'"),
}


@pytest.mark.parametrize("command", [("campaign", "launch"), ("campaign", "estimate")])
@pytest.mark.parametrize("case", list(CLI_SPECS))
def test_cli_refuses_a_bad_spec_with_exit_2_naming_its_field(cli, engine, tmp_path, command, case):
    text, expected = CLI_SPECS[case]
    path = tmp_path / "spec.yaml"
    path.write_text(text, "utf-8")
    before = counts(engine)
    r = cli(*command, path)
    assert r.exit_code == 2, r.output
    assert expected in " ".join(r.stderr.split())      # rich wraps long lines
    assert counts(engine) == before


@pytest.mark.parametrize(("text", "expected"), [
    ("key: spring\nname: [unclosed\n", "line 3, column 1: not valid YAML"),
    ("program: shop\naudience:\n  rules: {field: shoe_size, op: eq, value: 42}\n",
     "audience.rules.field: unknown field 'shoe_size'"),
])
def test_cli_segment_count_refuses_a_bad_file_with_exit_2_naming_its_field(cli, engine, tmp_path, text, expected):
    path = tmp_path / "segment.yaml"
    path.write_text(text, "utf-8")
    r = cli("segment", "count", path)
    assert r.exit_code == 2, r.output
    assert expected in " ".join(r.stderr.split())


@pytest.mark.parametrize(("command", "expected"), [
    (("campaign", "budget", "spring", "a lot", "-p", "shop"), "budget: 'a lot' is not an amount"),
    (("campaign", "budget", "-p", "shop", "spring", "--", "-5"), "budget: Input should be greater than 0"),
    (("campaign", "budget", "spring", "0", "-p", "shop"), "budget: Input should be greater than 0"),
    (("campaign", "budget", "spring", "NaN", "-p", "shop"), "budget: Input should be a finite number"),
    (("campaign", "budget", "spring", "0.00001", "-p", "shop"), "budget: Decimal input should have no more than 4"),
    (("campaign", "end", "spring", "next week", "-p", "shop"), "end_at: 'next week' is not a date and time"),
    (("campaign", "end", "spring", "2026-12-01T10:00:00", "-p", "shop"), "end_at: give a time zone offset"),
    (("campaign", "end", "spring", "2026-12-01T10:00:00+03:00", "-p", "shop"),
     "end_at: end_at must be after the campaign's start (2026-12-08T10:00:00+03:00)"),
])
def test_cli_refuses_a_bad_amount_or_date_with_exit_2_before_temporal_is_asked(cli, engine, command, expected):
    make_campaign(engine, seed_members(engine, 1), start_at="2026-12-08T10:00:00+03:00")
    before = counts(engine)
    r = cli(*command)           # nothing listens on the Temporal port
    assert r.exit_code == 2, r.output     # was 1 naming Temporal for -5, 0, NaN, a naive date, an end before start
    assert expected in " ".join(r.stderr.split()) and "Temporal" not in r.stderr
    assert counts(engine) == before


def test_an_end_before_the_campaigns_start_is_422_naming_end_at(api):
    """The check is app.campaigns.check_end, which the route calls before it reaches Temporal: a client that
    fails any call stands in for Temporal (nothing may be asked of it), and an unreachable one too."""
    make_campaign(api.engine, api.program_id, start_at="2026-12-08T10:00:00+03:00")
    with TestClient(create_app(api.settings, engine=api.engine, client=NoTemporal())) as client:
        answers = [client.put("/api/v1/campaigns/spring/end", params={"program": "shop"}, json={"end_at": end_at},
                              headers=api.auth(Role.marketer))
                   for end_at in ("2026-12-01T10:00:00+03:00", "2026-12-08T07:00:00Z")]
    # and before Temporal is reached for: with it unreachable, still the 422 (was a 503)
    answers.append(api.client.put("/api/v1/campaigns/spring/end", params={"program": "shop"},
                                  json={"end_at": "2026-12-01T10:00:00+03:00"}, headers=api.auth(Role.marketer)))
    for r in answers:
        assert r.status_code == 422, r.text      # was: the end date signalled to the running workflow
        [problem] = r.json()["problems"]
        assert problem["field"] == "end_at" and "after the campaign's start" in problem["message"]


class NoTemporal:
    """A Temporal client that must not be used: any call is an error the test would see as a 500."""

    def __getattr__(self, name: str):
        raise AssertionError(f"Temporal was asked for {name}")


@pytest.mark.parametrize("command", [("campaign", "launch"), ("campaign", "estimate"),
                                     ("programs", "settings", "shop")])
def test_cli_refuses_a_file_that_is_not_utf8_naming_it_and_the_byte(cli, engine, tmp_path, command):
    path = tmp_path / "spec.yaml"
    data = spec_yaml(name="Cafe").encode().replace(b"Cafe", b"Caf\xe9")      # Latin-1, not UTF-8
    path.write_bytes(data)
    before = counts(engine)
    r = cli(*command, path)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception   # was a UnicodeDecodeError
    at = data.index(b"\xe9")
    assert f"{path}: not UTF-8 text (byte {at}); save the file as UTF-8" in " ".join(r.stderr.split())
    assert counts(engine) == before


def test_cli_refuses_a_channel_config_that_is_not_utf8_naming_it_and_the_byte(cli, engine, tmp_path):
    path = tmp_path / "sms.yaml"
    data = "account_sid: AC1\nauth_token: t\nsender: Café\n".encode("latin-1")
    path.write_bytes(data)
    before = counts(engine)
    r = cli("channels", "set", "shop", "sms", "--provider", "twilio", "--config", path)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception   # was a UnicodeDecodeError
    at = data.index(b"\xe9")
    assert f"{path}: not UTF-8 text (byte {at})" in " ".join(r.stderr.split())
    assert counts(engine) == before
