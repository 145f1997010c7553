"""End to end on `clarion up` (real Temporal dev server, worker, API, mail server): a budget that runs out
and is raised over HTTP, a triggered campaign fed by the loyalty core's events, and a recurring broadcast
on a Temporal Schedule in the program's time zone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.e2e.test_broadcast_e2e import _maildir, stack  # noqa: F401  (the module-scoped stack fixture)

pytestmark = pytest.mark.e2e

# this module's `clarion up` keeps the worker in its own process (the broadcast e2e runs it as a child process)
UP_WORKERS = 0


def _auth(stack: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack['key']}"}


def _members(stack: dict[str, Any], prefix: str, n: int) -> None:
    members = [{"external_id": f"{prefix}{i:03d}", "first_name": "Alice", "locale": "en",
                "email": f"{prefix.lower()}{i}@e2e.example", "time_zone": "Europe/Moscow",
                "attributes": {"cohort": prefix}, "consents": [{"channel": "email", "topic": "promotions"}]}
               for i in range(1, n + 1)]
    r = httpx.post(f"{stack['base']}/api/v1/members/bulk", params={"program": "shop"},
                   json={"members": members}, headers=_auth(stack))
    assert r.status_code == 200 and not r.json()["errors"], r.text


def _status(stack: dict[str, Any], key: str) -> dict[str, Any]:
    r = httpx.get(f"{stack['base']}/api/v1/campaigns/{key}", params={"program": "shop"}, headers=_auth(stack))
    assert r.status_code == 200, r.text
    return r.json()


def _wait(stack: dict[str, Any], key: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(stack, key)
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def _mailed(stack: dict[str, Any], prefix: str) -> list[str]:
    return sorted(str(m["To"]) for m in _maildir(stack["var"]) if str(m["To"]).startswith(prefix.lower()))


def test_budget_runs_out_then_is_raised_over_http(stack):
    _members(stack, "B", 30)
    r = httpx.put(f"{stack['base']}/api/v1/programs/shop/settings", headers=_auth(stack),
                  json={"unit_costs": {"email": "0.5"}})
    assert r.status_code == 200 and r.json() == {"unit_costs": {"email": "0.5"}}, r.text
    bad = httpx.put(f"{stack['base']}/api/v1/programs/shop/settings", headers=_auth(stack),
                    json={"unit_costs": {"email": "-1"}})
    assert bad.status_code == 422 and "unit_costs" in bad.text
    spec = {"key": "budgeted", "name": "Budgeted", "program": "shop", "topic": "promotions",
            "channels": ["email"], "template": "double_points", "budget": "5",
            "audience": {"filter": [{"field": "attributes.cohort", "value": "B"}]}}
    est = httpx.post(f"{stack['base']}/api/v1/campaigns/estimate", json=spec, headers=_auth(stack)).json()
    assert (est["audience"], est["within_budget"], est["over_budget"]) == (30, 10, True)

    assert httpx.post(f"{stack['base']}/api/v1/campaigns", json=spec, headers=_auth(stack)).status_code == 202
    status = _wait(stack, "budgeted", lambda s: s["status"] == "budget_exhausted")
    assert status["counts"]["sent"] == 10 and status["pending"] == {"budget_exhausted": 20}, status
    assert status["budget"] == {"limit": "5.0000", "spent": "5.0000"}
    assert len(_mailed(stack, "B")) == 10

    r = httpx.put(f"{stack['base']}/api/v1/campaigns/budgeted/budget", params={"program": "shop"},
                  json={"limit": "100"}, headers=_auth(stack))
    assert r.status_code == 200, r.text
    status = _wait(stack, "budgeted", lambda s: s["status"] == "completed")
    assert status["counts"]["sent"] == 30 and status["budget"]["spent"] == "15.0000", status
    mailed = _mailed(stack, "B")
    assert len(mailed) == len(set(mailed)) == 30  # the rest, nobody twice
    r = httpx.post(f"{stack['base']}/api/v1/campaigns/budgeted/pause", params={"program": "shop"},
                   headers=_auth(stack))
    assert r.status_code == 409 and "'budgeted' is not running" in r.json()["message"], r.text


def test_triggered_thank_you_follows_a_purchase_posted_by_the_loyalty_core(stack):
    _members(stack, "T", 3)
    spec = {"key": "thanks", "name": "Thanks", "program": "shop", "kind": "triggered", "topic": "promotions",
            "channels": ["email"], "template": "thank_you",
            "audience": {"filter": [{"field": "attributes.cohort", "value": "T"}]},
            "trigger": {"event": "purchase", "where": [{"field": "amount", "op": "gte", "value": 1000}]}}
    assert httpx.post(f"{stack['base']}/api/v1/campaigns", json=spec, headers=_auth(stack)).status_code == 202
    now = datetime.now(UTC).isoformat()
    events = [{"id": "p-1", "type": "purchase", "member": "T001", "occurred_at": now, "payload": {"amount": 1500}},
              {"id": "p-2", "type": "purchase", "member": "T002", "occurred_at": now, "payload": {"amount": 400}},
              {"id": "p-1", "type": "purchase", "member": "T001", "occurred_at": now, "payload": {"amount": 1500}}]
    r = httpx.post(f"{stack['base']}/api/v1/events/batch", params={"program": "shop"},
                   json={"events": events}, headers=_auth(stack))
    assert r.status_code == 202 and (r.json()["accepted"], r.json()["duplicates"]) == (2, 1), r.text
    status = _wait(stack, "thanks", lambda s: s["counts"]["sent"] >= 1)
    assert status["status"] == "running"
    time.sleep(2.5)  # a couple more polls: still one message, none for the small purchase
    assert _mailed(stack, "T") == ["t1@e2e.example"]
    [mail] = [m for m in _maildir(stack["var"]) if str(m["To"]) == "t1@e2e.example"]
    assert "your purchase of 1500 EUR" in mail.get_body(("plain",)).get_content()  # the event, in the message
    assert _status(stack, "thanks")["counts"]["sent"] == 1


def test_recurring_broadcast_runs_on_a_temporal_schedule_in_program_time(stack):
    spec = {"key": "mondays", "name": "Every Monday", "program": "shop", "topic": "promotions",
            "channels": ["email"], "template": "double_points", "audience": {"all": True},
            "recurring": {"cron": "0 10 * * mon", "time_zone": "Asia/Vladivostok"}}
    r = httpx.post(f"{stack['base']}/api/v1/campaigns", json=spec, headers=_auth(stack))
    assert r.status_code == 202, r.text
    schedule = r.json()["schedule"]
    assert schedule and not schedule["paused"] and len(schedule["next_runs"]) == 3
    runs = [datetime.fromisoformat(t).astimezone(ZoneInfo("Asia/Vladivostok")) for t in schedule["next_runs"]]
    assert all((t.weekday(), t.hour, t.minute) == (0, 10, 0) for t in runs), runs
    assert runs[1] - runs[0] == timedelta(days=7)

    r = httpx.post(f"{stack['base']}/api/v1/campaigns/mondays/pause", params={"program": "shop"},
                   headers=_auth(stack))
    assert r.status_code == 200 and r.json()["schedule"]["paused"] is True and r.json()["status"] == "paused"
    # launching the same spec again is the same schedule
    again = httpx.post(f"{stack['base']}/api/v1/campaigns", json=spec, headers=_auth(stack))
    assert again.status_code == 202 and again.json()["schedule"]["paused"] is True
