"""Provider accounts per program (admin), the sandbox outbox (labelled), and devices registered by the app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from storage.db import session_scope
from storage.tables import ChannelAccount, PushToken, Role, SandboxMessage
from tests.conftest import free_port
from tests.factories import seed_members

TWILIO = {"account_sid": "AC" + "4" * 32, "auth_token": "secret-auth-token-1234", "sender": "+15005550006"}


@pytest.fixture
def api(engine, tmp_path):
    seed_members(engine, 2)
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port()), engine=engine)
    keys = {role: create_key(engine=engine, role=role) for role in Role}
    with TestClient(app) as client:
        yield client, {r: {"Authorization": f"Bearer {k}"} for r, k in keys.items()}


def test_only_an_admin_sets_accounts_and_secrets_never_come_back(api, engine):
    client, auth = api
    r = client.put("/api/v1/programs/shop/channels/sms", json={"provider": "twilio", "config": TWILIO},
                   headers=auth[Role.marketer])
    assert r.status_code == 403
    r = client.put("/api/v1/programs/shop/channels/sms", json={"provider": "twilio", "config": TWILIO,
                                                              "rate_per_s": 10}, headers=auth[Role.admin])
    assert r.status_code == 200, r.text
    assert r.json()["config"]["auth_token"] == "****1234" and r.json()["rate_per_s"] == 10
    listed = client.get("/api/v1/programs/shop/channels", headers=auth[Role.admin]).json()["channels"]
    by = {c["channel"]: c for c in listed}
    assert by["sms"]["sandbox"] is False and "secret-auth-token" not in str(listed)
    assert by["telegram"]["sandbox"] is True and by["telegram"]["rate_per_s"] is None   # nothing leaves
    r = client.put("/api/v1/programs/shop/channels/push", headers=auth[Role.admin], json={
        "provider": "fcm", "config": {"project_id": "shop-app", "service_account_file": "/etc/fcm.json"}})
    assert r.json()["rate_per_s"] == 500.0        # the provider's default when the account does not say
    assert by["receipt"] == {**by["receipt"], "provider": "clarion", "sandbox": False}
    with Session(engine) as s:
        assert s.scalar(select(ChannelAccount.config)).get("auth_token") == TWILIO["auth_token"]


@pytest.mark.parametrize(("body", "field"), [
    ({"provider": "twilio", "config": {**TWILIO, "account_sid": "AC123"}}, "config.account_sid"),
    ({"provider": "twilio", "config": {**TWILIO, "sender": "5550006"}}, "config.sender"),
    ({"provider": "twilio", "config": {k: v for k, v in TWILIO.items() if k != "auth_token"}}, "config.auth_token"),
    ({"provider": "fcm", "config": TWILIO}, "provider"),
    ({"provider": "twilio", "config": {**TWILIO, "max_segments": 99}}, "config.max_segments"),
])
def test_a_bad_account_is_refused_naming_the_field_and_nothing_is_stored(api, engine, body, field):
    client, auth = api
    r = client.put("/api/v1/programs/shop/channels/sms", json=body, headers=auth[Role.admin])
    assert r.status_code == 422 and field in [p["field"] for p in r.json()["problems"]], r.text
    with Session(engine) as s:
        assert s.scalars(select(ChannelAccount)).all() == []


def test_a_telegram_account_checks_the_token_and_the_webhook_secret(api):
    client, auth = api
    r = client.put("/api/v1/programs/shop/channels/telegram", headers=auth[Role.admin], json={
        "provider": "telegram", "config": {"bot_token": "nope", "bot_username": "shop_bot", "webhook_secret": "short"}})
    fields = {p["field"] for p in r.json()["problems"]}
    assert r.status_code == 422 and {"config.bot_token", "config.webhook_secret"} <= fields


def test_removing_an_account_puts_the_channel_back_in_the_sandbox(api):
    client, auth = api
    client.put("/api/v1/programs/shop/channels/sms", json={"provider": "twilio", "config": TWILIO},
               headers=auth[Role.admin])
    assert client.delete("/api/v1/programs/shop/channels/sms", headers=auth[Role.admin]).json() == {
        "channel": "sms", "sandbox": True}
    assert client.delete("/api/v1/programs/shop/channels/sms", headers=auth[Role.admin]).status_code == 404


def test_the_sandbox_outbox_is_labelled_and_filtered(api, engine):
    client, auth = api
    with session_scope(engine) as s:
        for ch in ("sms", "telegram", "sms"):
            s.add(SandboxMessage(program_id=1, channel=ch, provider="twilio", method="POST", url="u", headers={},
                                 body=f"Body={ch}"))
    r = client.get("/api/v1/sandbox/messages", params={"channel": "sms"}, headers=auth[Role.marketer])
    body = r.json()
    assert r.status_code == 200 and body["sandbox"] is True and body["total"] == 2
    assert [m["channel"] for m in body["messages"]] == ["sms", "sms"]
    assert client.get("/api/v1/sandbox/messages", headers=auth[Role.core]).status_code == 403


def test_the_app_registers_and_removes_devices_and_a_token_moves_with_the_device(api, engine):
    client, auth = api
    token = "fcm-device-token-" + "a" * 40
    url = "/api/v1/members/M000001/push-tokens"
    for _ in range(2):
        r = client.post(url, params={"program": "shop"}, json={"token": token, "platform": "ios"},
                        headers=auth[Role.core])
        assert r.status_code == 201 and r.json()["devices"] == 1
    r = client.post("/api/v1/members/M000002/push-tokens", params={"program": "shop"}, json={"token": token},
                    headers=auth[Role.core])
    assert r.json()["devices"] == 1
    with Session(engine) as s:
        assert len(s.scalars(select(PushToken)).all()) == 1     # the device changed hands
    r = client.request("DELETE", "/api/v1/members/M000002/push-tokens", params={"program": "shop"},
                       json={"token": token}, headers=auth[Role.core])
    assert r.status_code == 200 and r.json()["devices"] == 0
    r = client.request("DELETE", url, params={"program": "shop"}, json={"token": token}, headers=auth[Role.core])
    assert r.status_code == 404 and r.json()["field"] == "token"
    r = client.post(url, params={"program": "shop"}, json={"token": "short"}, headers=auth[Role.core])
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "token"
    assert client.post(url, params={"program": "shop"}, json={"token": token},
                       headers=auth[Role.marketer]).status_code == 403


# --- the CLI ----------------------------------------------------------------------------------------

@pytest.fixture
def cli(engine, db_url, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    seed_members(engine, 1)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(app, list(args), **kw)


def test_cli_sets_an_account_from_a_file_and_never_prints_the_secret(cli, tmp_path):
    f = tmp_path / "sms.yaml"
    f.write_text("\n".join(f"{k}: '{v}'" for k, v in TWILIO.items()))
    r = cli("channels", "set", "shop", "sms", "--provider", "twilio", "--config", str(f), "--rate", "5")
    assert r.exit_code == 0, r.output
    r = cli("channels", "list", "shop")
    assert "****1234" in r.stdout and "secret-auth-token" not in r.stdout and "sandbox" in r.stdout


def test_cli_names_each_bad_field_and_exits_2(cli):
    r = cli("channels", "set", "shop", "sms", "--provider", "twilio", input='{"account_sid": "AC1"}')
    assert r.exit_code == 2
    assert "config.account_sid" in r.stderr and "config.auth_token" in r.stderr


def test_cli_outbox_is_labelled_sandbox(cli, engine):
    with session_scope(engine) as s:
        s.add(SandboxMessage(program_id=1, channel="sms", provider="twilio", method="POST", url="https://x/Messages.json",
                             headers={}, body="To=%2B1&Body=hi", delivery_id=7))
    r = cli("outbox", "--program", "shop")
    assert r.exit_code == 0 and "SANDBOX outbox: 1 recorded, nothing sent (sms 1)" in r.stdout
