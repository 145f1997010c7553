"""The signals every campaign workflow answers, and the state they set. Deterministic; no I/O."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow


class CampaignControls:
    """pause / resume / cancel, a budget changed in the database, a new end date."""

    def __init__(self) -> None:
        self._paused = False
        self._cancelled = False
        self._budget_changes = 0
        self._end_at: datetime | None = None

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancelled = True

    @workflow.signal
    def budget_changed(self) -> None:
        """The budget limit was changed in the database: try the members it did not reach again."""
        self._budget_changes += 1

    @workflow.signal
    def set_end(self, end_at: str | None) -> None:
        self._end_at = datetime.fromisoformat(end_at) if end_at else None
