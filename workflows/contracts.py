"""What crosses the workflow/activity boundary: frozen dataclasses and StrEnums only.

New fields get defaults so that running workflows keep replaying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

TASK_QUEUE = "clarion"


class RunState(StrEnum):
    waiting = "waiting"      # before the start time
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


@dataclass(frozen=True)
class Counts:
    """Outcomes of deliveries handled so far (this run of the workflow and the ones before it)."""

    audience: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    in_doubt: int = 0
    already_done: int = 0    # rows found finished by an earlier attempt or run: not sent again

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (self.audience, self.sent, self.suppressed, self.failed, self.in_doubt, self.already_done)


@dataclass(frozen=True)
class BroadcastInput:
    campaign_id: int
    start_at: str | None = None           # ISO 8601 with offset; None = now
    page_size: int = 500
    concurrency: int = 4                  # delivery batches in flight at once
    # carried over by continue-as-new
    cursor: int = 0                       # last member id handled (keyset)
    counts: Counts = field(default_factory=Counts)
    total: int | None = None              # audience size counted at launch
    paused: bool = False
    started: bool = False
    # test hook: continue as new after this many rounds (None = when Temporal suggests it)
    rounds_per_run: int | None = None


@dataclass(frozen=True)
class Progress:
    state: RunState
    total: int | None
    counts: Counts
    cursor: int
    run_rounds: int = 0


@dataclass(frozen=True)
class CampaignRef:
    campaign_id: int


@dataclass(frozen=True)
class AudienceCount:
    total: int


@dataclass(frozen=True)
class PlanPages:
    campaign_id: int
    after: int
    page_size: int
    pages: int


@dataclass(frozen=True)
class PageBounds:
    """A page of the audience: member ids in (after, upto]."""

    after: int
    upto: int


@dataclass(frozen=True)
class PagePlan:
    pages: list[PageBounds]


@dataclass(frozen=True)
class DeliverBatch:
    campaign_id: int
    after: int
    upto: int
    step: str = "main"
    occurrence: str = "wave-1"


@dataclass(frozen=True)
class BatchResult:
    counts: Counts


@dataclass(frozen=True)
class StatusChange:
    campaign_id: int
    status: str
