"""How the CLARION_TEMPORAL_* settings become temporalio's Client.connect arguments (TLS, mTLS, API key,
namespace), and the errors that name the setting to fix; no network: Client.connect is replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import TLSConfig

from app.errors import TemporalUnavailable
from app.settings import Settings
from app.temporal import TemporalSettingsError, connect, tls_config

CERT = b"-----BEGIN CERTIFICATE-----\nMIIBclient\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n"
CA = b"-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    files = {"cert": tmp_path / "client.pem", "key": tmp_path / "client.key", "ca": tmp_path / "ca.pem"}
    for name, data in (("cert", CERT), ("key", KEY), ("ca", CA)):
        files[name].write_bytes(data)
    return files


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, temporal_address="temporal.example:7233", **kw)  # type: ignore[call-arg]


def test_plain_connection_has_no_tls_unless_asked():
    assert tls_config(_settings()) is False
    assert tls_config(_settings(temporal_tls=True)) is True


def test_an_api_key_turns_tls_on_with_the_system_cas():
    # Temporal Cloud's API-key endpoints only speak TLS; the SDK would do the same with tls=None
    assert tls_config(_settings(temporal_api_key=SecretStr("k"))) is True


def test_client_certificate_key_ca_and_server_name_become_one_tls_config(pems):
    tls = tls_config(_settings(temporal_tls_cert=pems["cert"], temporal_tls_key=pems["key"],
                               temporal_tls_ca=pems["ca"], temporal_tls_server_name="temporal.internal"))
    assert tls == TLSConfig(client_cert=CERT, client_private_key=KEY, server_root_ca_cert=CA,
                            domain="temporal.internal")


def test_mtls_without_a_private_ca_checks_the_server_against_the_system_cas(pems):
    tls = tls_config(_settings(temporal_tls_cert=pems["cert"], temporal_tls_key=pems["key"]))
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert, tls.domain) == (CERT, KEY, None,
                                                                                              None)


def test_a_private_ca_alone_is_server_side_tls(pems):
    tls = tls_config(_settings(temporal_tls_ca=pems["ca"]))
    assert tls == TLSConfig(server_root_ca_cert=CA)


def test_settings_are_read_from_the_documented_environment_variables(pems, monkeypatch):
    for name in [n for n in os.environ if n.startswith("CLARION_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLARION_TEMPORAL_ADDRESS", "ns.acct.tmprl.cloud:7233")
    monkeypatch.setenv("CLARION_TEMPORAL_NAMESPACE", "ns.acct")
    monkeypatch.setenv("CLARION_TEMPORAL_TLS_CERT", str(pems["cert"]))
    monkeypatch.setenv("CLARION_TEMPORAL_TLS_KEY", str(pems["key"]))
    monkeypatch.setenv("CLARION_TEMPORAL_TLS_CA", str(pems["ca"]))
    monkeypatch.setenv("CLARION_TEMPORAL_TLS_SERVER_NAME", "ns.acct.tmprl.cloud")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.temporal_target == "ns.acct.tmprl.cloud:7233" and s.temporal_namespace == "ns.acct"
    assert tls_config(s) == TLSConfig(client_cert=CERT, client_private_key=KEY, server_root_ca_cert=CA,
                                      domain="ns.acct.tmprl.cloud")


def test_a_certificate_without_its_key_names_both_settings(pems):
    with pytest.raises(TemporalSettingsError) as err:
        tls_config(_settings(temporal_tls_cert=pems["cert"]))
    assert str(err.value) == ("CLARION_TEMPORAL_TLS_CERT is set but CLARION_TEMPORAL_TLS_KEY is not: "
                              "mTLS needs the client certificate and its key")
    with pytest.raises(TemporalSettingsError, match="CLARION_TEMPORAL_TLS_KEY is set but CLARION_TEMPORAL_TLS_CERT"):
        tls_config(_settings(temporal_tls_key=pems["key"]))


def test_a_missing_file_names_the_setting_and_the_path(pems, tmp_path):
    gone = tmp_path / "nope" / "ca.pem"
    with pytest.raises(TemporalSettingsError) as err:
        tls_config(_settings(temporal_tls_ca=gone))
    assert str(err.value) == f"CLARION_TEMPORAL_TLS_CA: no file at {gone}"
    with pytest.raises(TemporalSettingsError, match=r"^CLARION_TEMPORAL_TLS_KEY: no file at "):
        tls_config(_settings(temporal_tls_cert=pems["cert"], temporal_tls_key=tmp_path / "gone.key"))


def test_an_unreadable_file_names_the_setting(pems, tmp_path):
    with pytest.raises(TemporalSettingsError, match=r"^CLARION_TEMPORAL_TLS_CERT: cannot read .*: Is a directory"):
        tls_config(_settings(temporal_tls_cert=tmp_path, temporal_tls_key=pems["key"]))
    if os.geteuid() == 0:
        return  # root reads files whatever their mode
    pems["key"].chmod(0)
    with pytest.raises(TemporalSettingsError, match=r"^CLARION_TEMPORAL_TLS_KEY: cannot read .*Permission denied"):
        tls_config(_settings(temporal_tls_cert=pems["cert"], temporal_tls_key=pems["key"]))


def test_a_file_that_is_not_pem_names_the_setting(pems, tmp_path):
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(TemporalSettingsError, match=r"^CLARION_TEMPORAL_TLS_CA: .*ca.der is not a PEM file"):
        tls_config(_settings(temporal_tls_ca=der))


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    seen: list[dict] = []

    async def fake_connect(target: str, **kw: object) -> str:
        seen.append({"target": target, **kw})
        return "client"

    monkeypatch.setattr(Client, "connect", fake_connect)
    return seen


async def test_connect_passes_address_namespace_api_key_and_tls(calls, pems):
    s = _settings(temporal_namespace="clarion-prod.a1b2c", temporal_api_key=SecretStr("secret-key"))
    assert await connect(s) == "client"
    assert calls == [{"target": "temporal.example:7233", "namespace": "clarion-prod.a1b2c", "tls": True,
                      "api_key": "secret-key"}]
    calls.clear()
    await connect(_settings(temporal_tls_cert=pems["cert"], temporal_tls_key=pems["key"]))
    assert calls[0]["tls"] == TLSConfig(client_cert=CERT, client_private_key=KEY) and calls[0]["api_key"] is None


async def test_bad_tls_settings_fail_before_any_connection_is_tried(calls, pems):
    with pytest.raises(TemporalUnavailable, match="CLARION_TEMPORAL_TLS_KEY is set"):
        await connect(_settings(temporal_tls_key=pems["key"]))
    assert calls == []


async def test_an_unreachable_external_temporal_says_where_and_how(monkeypatch):
    async def refuse(target: str, **kw: object) -> None:
        raise RuntimeError("Failed client connect: transport error")

    monkeypatch.setattr(Client, "connect", refuse)
    with pytest.raises(TemporalUnavailable) as err:
        await connect(_settings(temporal_namespace="clarion", temporal_tls=True))
    assert str(err.value) == ("cannot reach Temporal at temporal.example:7233 (namespace 'clarion', TLS on): "
                              "Failed client connect: transport error")
