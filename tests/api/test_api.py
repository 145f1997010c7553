"""The HTTP API without Temporal: API keys and roles, clear 4xx errors naming the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from members.service import ensure_program
from storage.tables import ApiKey, Member, Role
from tests.conftest import free_port


@pytest.fixture
def api(engine, tmp_path):
    ensure_program(engine=engine, key="shop", name="Shop")
    # Temporal is deliberately unreachable (a closed port): these routes must not need it
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield client, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys_are_stored_hashed(engine):
    key = create_key(engine=engine, role=Role.core)
    with Session(engine) as s:
        row = s.scalar(select(ApiKey))
    assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64


def test_missing_or_wrong_key_is_401_json_and_wrong_role_is_403(api):
    client, keys = api
    body = {"email": "a@example.com"}
    r = client.put("/api/v1/members/A1", params={"program": "shop"}, json=body)
    assert r.status_code == 401 and "API key is required" in r.json()["detail"]
    r = client.put("/api/v1/members/A1", params={"program": "shop"}, json=body,
                   headers=auth(keys[Role.core][:-2] + "xx"))
    assert r.status_code == 401 and r.json()["detail"] == "the API key is not valid"
    r = client.put("/api/v1/members/A1", params={"program": "shop"}, json=body, headers=auth(keys[Role.analyst]))
    assert r.status_code == 403 and "analyst" in r.json()["detail"]
    for role in (Role.core, Role.admin):
        r = client.put("/api/v1/members/A1", params={"program": "shop"}, json=body, headers=auth(keys[role]))
        assert r.status_code == 200, r.text


def test_put_member_normalizes_contacts_and_records_consent(api, engine):
    client, keys = api
    r = client.put("/api/v1/members/A1", params={"program": "shop"}, headers=auth(keys[Role.core]), json={
        "first_name": "Anna", "email": "Anna@Example.COM", "phone": "+7 (912) 345-67-89", "locale": "ru_RU",
        "time_zone": "Europe/Moscow", "attributes": {"tier": "gold"},
        "consents": [{"channel": "email", "topic": "promotions"}]})
    assert r.status_code == 200, r.text
    assert r.json()["email"] == "Anna@example.com" and r.json()["phone"] == "+79123456789"
    assert r.json()["locale"] == "ru-RU"
    with Session(engine) as s:
        assert s.scalar(select(Member.attributes)) == {"tier": "gold"}


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "nope"}, "email"),
    ({"phone": "12345"}, "phone"),
    ({"time_zone": "Mars/Base"}, "time_zone"),
    ({"locale": "zz-QQ"}, "locale"),
    ({"colour": "red"}, "colour"),
    ({"consents": [{"channel": "fax", "topic": "news"}]}, "consents.0.channel"),
])
def test_bad_member_is_422_naming_the_field_and_writes_nothing(api, engine, body, field):
    client, keys = api
    r = client.put("/api/v1/members/A1", params={"program": "shop"}, json=body, headers=auth(keys[Role.core]))
    assert r.status_code == 422
    assert [p["field"] for p in r.json()["problems"]] == [field]
    with Session(engine) as s:
        assert s.scalar(select(Member)) is None


def test_unknown_program_is_404_naming_it(api):
    client, keys = api
    r = client.put("/api/v1/members/A1", params={"program": "nope"}, json={}, headers=auth(keys[Role.core]))
    assert r.status_code == 404 and r.json()["field"] == "program"


def test_bulk_keeps_good_members_and_reports_bad_ones_by_index(api, engine):
    client, keys = api
    members = [{"external_id": "A1", "email": "a@example.com"}, {"external_id": "A2", "email": "bad"},
               {"email": "c@example.com"}, {"external_id": "A4"}]
    r = client.post("/api/v1/members/bulk", params={"program": "shop"}, json={"members": members},
                    headers=auth(keys[Role.core]))
    assert r.status_code == 200
    assert r.json()["created"] == 2
    assert [(e["index"], e["field"]) for e in r.json()["errors"]] == [(1, "email"), (2, "external_id")]
    with Session(engine) as s:
        assert sorted(s.scalars(select(Member.external_id))) == ["A1", "A4"]


def test_campaign_spec_errors_name_the_path(api):
    client, keys = api
    spec = {"key": "x", "name": "X", "program": "shop", "topic": "promotions", "channels": ["email"],
            "audience": {"filter": [{"field": "tier", "op": "like", "value": "gold"}]}, "template": "double_points"}
    r = client.post("/api/v1/campaigns", json=spec, headers=auth(keys[Role.marketer]))
    assert r.status_code == 422
    assert {p["field"] for p in r.json()["problems"]} == {"audience.filter[0].field", "audience.filter[0].op"}
    r = client.post("/api/v1/campaigns", content=b"key: [unclosed", headers={
        **auth(keys[Role.marketer]), "Content-Type": "application/yaml"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"].startswith("line ")
    r = client.post("/api/v1/campaigns", json=spec, headers=auth(keys[Role.core]))
    assert r.status_code == 403


def test_unsubscribe_with_a_forged_token_is_404_and_openapi_is_served(api):
    client, _ = api
    assert client.post("/u/forged.token", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert client.get("/u/forged.token").status_code == 404
    assert "/api/v1/members/{external_id}" in client.get("/openapi.json").json()["paths"]


def test_valid_launch_without_temporal_is_503_saying_so(api, engine):
    client, keys = api
    spec = {"key": "x", "name": "X", "program": "shop", "topic": "promotions", "channels": ["email"],
            "audience": {"all": True}, "template": "double_points"}
    r = client.post("/api/v1/campaigns", json=spec, headers=auth(keys[Role.marketer]))
    assert r.status_code == 503 and "cannot reach Temporal" in r.json()["message"]
