"""Starting and waking the deployment's double opt-in sender (workflows.confirmations)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from app.settings import Settings
from workflows.confirmations import CONFIRMATIONS_WORKFLOW_ID, ConfirmationSender
from workflows.contracts import ConfirmationSenderInput

log = logging.getLogger(__name__)


async def wake_confirmations(client: Client, settings: Settings) -> bool:
    """Start the sender if it is not running, and wake it (signal-with-start). Best effort: a request stored
    while Temporal cannot be reached is found by the sender's next poll. True when Temporal took it."""
    try:
        await client.start_workflow(
            ConfirmationSender.run, ConfirmationSenderInput(), id=CONFIRMATIONS_WORKFLOW_ID,
            task_queue=settings.temporal_task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="wake")
    except RPCError as exc:
        log.warning("could not wake the confirmation sender: %s", exc.message)
        return False
    return True


async def wake_soon(app_state: Any) -> None:
    """From a request that queued a confirmation: wake the sender within 2 s or leave it to its poll."""
    try:
        client = await asyncio.wait_for(app_state.temporal(), timeout=2.0)
        await asyncio.wait_for(wake_confirmations(client, app_state.settings), timeout=2.0)
    except Exception:  # noqa: BLE001 - Temporal away: nothing is lost, the sender polls
        log.info("confirmation sender not woken (Temporal unavailable); its next poll sends the request")
