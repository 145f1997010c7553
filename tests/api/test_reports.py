"""Reports over HTTP and the CLI: a purchase posted by the loyalty core is attributed and shows in the campaign's
JSON and CSV; campaigns of a period compared; clear errors naming the field; roles."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import app as cli
from app.keys import create_key
from app.settings import Settings
from storage.db import session_scope
from storage.tables import Campaign, Delivery, Member, Role
from tests.conftest import free_port
from tests.factories import make_campaign, seed_members

Q = {"program": "shop"}


@pytest.fixture
def api(engine, tmp_path):
    program_id = seed_members(engine, 4)
    cid = make_campaign(engine, program_id, holdout=0.5)
    sent = datetime.now(UTC) - timedelta(days=1)
    with session_scope(engine) as s:
        m1, m2, m3, m4 = s.scalars(select(Member.id).order_by(Member.id))
        s.add_all([Delivery(campaign_id=cid, member_id=m1, status="sent", channel="email", locale="en",
                            sent_at=sent, cost=1),
                   Delivery(campaign_id=cid, member_id=m2, status="sent", channel="email", locale="ru",
                            sent_at=sent, cost=1),
                   Delivery(campaign_id=cid, member_id=m3, status="held_out", reason="control", channel="email",
                            locale="en", created_at=sent),
                   Delivery(campaign_id=cid, member_id=m4, status="held_out", reason="control", channel="email",
                            locale="ru", created_at=sent)])
        s.get(Campaign, cid).started_at = sent
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield client, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _buy(client, keys, member, amount):
    r = client.post("/api/v1/events/batch", params=Q, headers=auth(keys[Role.core]), json={"events": [{
        "id": f"r-{member}", "type": "purchase", "member": member, "occurred_at": datetime.now(UTC).isoformat(),
        "payload": {"amount": amount}}]})
    assert r.status_code == 202, r.text
    return r.json()


def test_a_purchase_posted_by_the_core_shows_in_the_json_and_csv_report(api):
    client, keys = api
    assert _buy(client, keys, "M000001", 40)["attributed"] == 1
    assert _buy(client, keys, "M000003", 10)["attributed"] == 1     # a control member: counted the same way
    r = client.get("/api/v1/reports/campaigns/spring", params=Q, headers=auth(keys[Role.analyst]))
    assert r.status_code == 200, r.text
    total = r.json()["total"]
    assert (total["treated"], total["treated_converted"], total["control"], total["control_converted"]) == (2, 1, 2, 1)
    assert (total["revenue"], total["control_revenue"], total["cost"]) == (40.0, 10.0, 2.0)
    assert total["uplift"]["uplift"] == 0 and total["incremental_revenue"] == pytest.approx(30.0)  # (20 − 5) × 2
    assert total["roi"] == pytest.approx(14.0)
    assert [d["key"] for d in r.json()["by_locale"]] == ["en", "ru"]
    same = client.get("/api/v1/campaigns/spring/report", params=Q, headers=auth(keys[Role.marketer])).json()
    assert same["total"] == total

    r = client.get("/api/v1/reports/campaigns/spring", params={**Q, "format": "csv"},
                   headers=auth(keys[Role.analyst]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="shop-spring.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["dimension"] == "total" and rows[0]["revenue"] == "40.0000" and rows[0]["converted"] == "1"


def test_campaigns_compared_over_a_period(api):
    client, keys = api
    today = datetime.now(UTC).date()
    r = client.get("/api/v1/reports/campaigns", params={**Q, "from": str(today - timedelta(days=3)),
                                                        "to": str(today)}, headers=auth(keys[Role.analyst]))
    assert r.status_code == 200, r.text
    assert [c["campaign"] for c in r.json()["campaigns"]] == ["spring"]
    assert r.json()["campaigns"][0]["total"]["sent"] == 2
    r = client.get("/api/v1/reports/campaigns", params={**Q, "to": str(today - timedelta(days=5))},
                   headers=auth(keys[Role.analyst]))
    assert r.json()["campaigns"] == []
    r = client.get("/api/v1/reports/campaigns", params={**Q, "format": "csv"}, headers=auth(keys[Role.analyst]))
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["name"], x["campaign"], x["sent"]) for x in rows] == [("Spring sale", "spring", "2")]


def test_errors_name_the_field_and_roles_are_checked(api):
    client, keys = api
    h = auth(keys[Role.analyst])
    r = client.get("/api/v1/reports/campaigns/nope", params=Q, headers=h)
    assert r.status_code == 404 and r.json()["field"] == "key"
    r = client.get("/api/v1/reports/campaigns", params={**Q, "from": "yesterday"}, headers=h)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "from"
    r = client.get("/api/v1/reports/campaigns", params={**Q, "from": "2026-11-30T10:00:00"}, headers=h)
    assert r.status_code == 422 and "offset" in r.json()["problems"][0]["message"]
    r = client.get("/api/v1/reports/campaigns", params={**Q, "from": "2026-11-30", "to": "2026-11-01"}, headers=h)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "to"
    r = client.get("/api/v1/reports/campaigns/spring", params={**Q, "format": "xml"}, headers=h)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "query.format"
    r = client.get("/api/v1/reports/campaigns/spring", params={"program": "other"}, headers=h)
    assert r.status_code == 404 and r.json()["field"] == "program"
    for role, code in ((Role.pos, 403), (Role.core, 403), (Role.marketer, 200), (Role.admin, 200)):
        assert client.get("/api/v1/reports/campaigns/spring", params=Q, headers=auth(keys[role])).status_code == code
    assert client.get("/api/v1/reports/campaigns/spring", params=Q).status_code == 401


def test_cli_report_formats(api, db_url, monkeypatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    runner = CliRunner()
    r = runner.invoke(cli, ["report", "spring", "--program", "shop", "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("campaign,dimension,key,audience,held_out,control")
    r = runner.invoke(cli, ["report", "spring", "--program", "shop", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["total"]["sent"] == 2
    r = runner.invoke(cli, ["report", "spring", "--program", "shop"])
    assert r.exit_code == 0 and "by channel" in r.stdout and "by locale" in r.stdout
    r = runner.invoke(cli, ["report", "spring", "--program", "shop", "--format", "xml"])
    assert r.exit_code == 2 and "--format" in r.stderr
    r = runner.invoke(cli, ["report", "nope", "--program", "shop"])
    assert r.exit_code != 0 and "not found" in r.output
