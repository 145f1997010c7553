"""What crosses the workflow/activity boundary: frozen dataclasses and StrEnums only.

New fields get defaults so that running workflows keep replaying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

TASK_QUEUE = "clarion"


class RunState(StrEnum):
    waiting = "waiting"      # before the start time, or between steps
    running = "running"
    paused = "paused"
    budget_exhausted = "budget_exhausted"
    completed = "completed"
    cancelled = "cancelled"


class Deferral(StrEnum):
    """Why a planned delivery is not sent yet (its ``reason`` while it stays ``planned``)."""

    outside_window = "outside_window"      # the member's send window or quiet hours: sent when it opens
    budget_exhausted = "budget_exhausted"  # sent if the budget is raised
    paced = "paced"                        # a slow provider rate: the page's time ran out, sent by the next one


@dataclass(frozen=True)
class Counts:
    """Outcomes of deliveries handled so far (this run of the workflow and the ones before it).

    ``reasons`` breaks down suppressed / held-out / failed deliveries by reason. Deliveries left planned
    for now (outside the window, budget exhausted) are not outcomes: ``Progress.pending`` shows them.
    """

    audience: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    in_doubt: int = 0
    already_done: int = 0    # rows found finished by an earlier attempt or run: not sent again
    held_out: int = 0
    cost: str = "0"          # Decimal as text: what the sent messages cost
    reasons: dict[str, int] = field(default_factory=dict)
    queued: int = 0          # in a print batch not handed over yet (direct mail)

    def __add__(self, other: Counts) -> Counts:
        reasons = dict(self.reasons)
        for k, v in other.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
        return Counts(
            audience=self.audience + other.audience, sent=self.sent + other.sent,
            suppressed=self.suppressed + other.suppressed, failed=self.failed + other.failed,
            in_doubt=self.in_doubt + other.in_doubt, already_done=self.already_done + other.already_done,
            held_out=self.held_out + other.held_out,
            cost=str(Decimal(self.cost) + Decimal(other.cost)), reasons=reasons,
            queued=self.queued + other.queued,
        )


@dataclass(frozen=True)
class StepPlan:
    """A step of a campaign: ``main``, or a follow-up sent ``after_s`` seconds after the previous step."""

    name: str = "main"
    after_s: float = 0.0


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
    end_at: str | None = None             # ISO 8601; deliveries still pending then are dropped
    occurrence: str | None = None         # the wave; None = "wave-1", or the scheduled time when recurring
    recurring: bool = False               # started by a Temporal Schedule: one wave per start
    step_index: int = 0                   # carried over: which step (0 = main, then the follow-ups)
    phase: str = "pages"                  # carried over: "pages" (first pass) or "pending" (deferred rows)
    step_done_at: str | None = None       # carried over: when the previous step finished (follow-up timer)
    steps: list[StepPlan] = field(default_factory=lambda: [StepPlan()])
    hand_over: bool = False               # direct mail is among the channels: hand each step's letters over


@dataclass(frozen=True)
class Progress:
    state: RunState
    total: int | None
    counts: Counts
    cursor: int
    run_rounds: int = 0
    step: str = "main"
    next_open: str | None = None          # when deferred deliveries are due next (ISO 8601)
    pending: dict[str, int] = field(default_factory=dict)  # planned deliveries by deferral reason


@dataclass(frozen=True)
class CampaignRef:
    campaign_id: int
    step: str = "main"
    occurrence: str = "wave-1"
    now: str | None = None


@dataclass(frozen=True)
class AudienceCount:
    total: int


@dataclass(frozen=True)
class PlanPages:
    campaign_id: int
    after: int
    page_size: int
    pages: int
    step: str = "main"
    occurrence: str = "wave-1"
    pending_only: bool = False            # page over the step's planned (deferred) deliveries only
    now: str | None = None


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
    now: str | None = None                # the workflow's clock (ISO 8601): windows, caps, due times
    pending_only: bool = False            # only the planned rows already there (no new members)


@dataclass(frozen=True)
class BatchResult:
    counts: Counts
    budget_exhausted: bool = False
    deferred: dict[str, int] = field(default_factory=dict)   # left planned, by reason


@dataclass(frozen=True)
class PendingSummary:
    """Planned deliveries of a step not sent yet, by reason, and when the earliest window opens."""

    by_reason: dict[str, int]
    next_open: str | None = None          # ISO 8601; None = no window opens (or none deferred by window)


@dataclass(frozen=True)
class ExpirePending:
    campaign_id: int
    step: str
    occurrence: str
    reason: str = "campaign_ended"
    every_occurrence: bool = False        # a triggered campaign: its pending reactions, whatever the event


@dataclass(frozen=True)
class TriggeredInput:
    campaign_id: int
    cursor: int = 0                       # last event row id examined
    poll_seconds: float = 1.0             # how often to look for new events when idle
    batch_size: int = 500
    counts: Counts = field(default_factory=Counts)
    matched: int = 0
    paused: bool = False
    end_at: str | None = None
    rounds_per_run: int | None = None     # test hook, as in BroadcastInput
    # deliver_due activities in flight each round, the members split between them by id (1: the runs started
    # before this field existed replay as they ran)
    concurrency: int = 1


@dataclass(frozen=True)
class MatchEvents:
    campaign_id: int
    after: int                            # event row id
    now: str
    limit: int = 1000


@dataclass(frozen=True)
class MatchResult:
    cursor: int                           # the last event row id examined
    examined: int
    matched: int                          # deliveries created (planned or held out or suppressed)
    more: bool                            # more events are waiting


@dataclass(frozen=True)
class DeliverDue:
    campaign_id: int
    now: str
    limit: int = 500
    # this activity's share of the members: member id mod partitions == partition (a member's reactions
    # always meet in one share, so once-per-member, cooldown and cancel-if see all of them)
    partition: int = 0
    partitions: int = 1


@dataclass(frozen=True)
class DueResult:
    counts: Counts
    more: bool                            # more due deliveries are waiting
    next_due: str | None = None           # the earliest planned delivery not due yet (ISO 8601)
    budget_exhausted: bool = False


@dataclass(frozen=True)
class ScheduledRunInput:
    """One run of a date-based trigger (birthday, inactivity, points expiring) from a Temporal Schedule."""

    campaign_id: int
    batch_size: int = 500


@dataclass(frozen=True)
class StatusChange:
    campaign_id: int
    status: str


@dataclass(frozen=True)
class HandOver:
    """Hand over a step's queued direct-mail letters as a print-ready batch (``activities.direct_mail``)."""

    campaign_id: int
    step: str = "main"
    occurrence: str | None = "wave-1"     # None = every occurrence (a triggered campaign: one per event)
    now: str | None = None                # ISO 8601: dates the batch name when ``occurrence`` is None


@dataclass(frozen=True)
class HandOverResult:
    letters: int                          # letters in this batch (0: nothing was queued, nothing written)
    pages: int
    batch: str | None                     # the batch's name (the PDF's stem), kept in stored_message.batch
    path: str | None                      # the PDF; its manifest is beside it (.json)
    more: bool = False                    # more letters are queued: another part follows (``part_size``)
    handed_over: int = 0                  # letters of the step (and wave) handed over so far, by anyone


@dataclass(frozen=True)
class SendConfirmations:
    """A round of double opt-in confirmations: up to ``limit`` pending requests, oldest first."""

    limit: int = 200


@dataclass(frozen=True)
class ConfirmationsSent:
    sent: int = 0
    in_doubt: int = 0
    failed: int = 0
    expired: int = 0
    more: bool = False            # more requests are pending: go again now


@dataclass(frozen=True)
class ConfirmationSenderInput:
    poll_seconds: float = 5.0
    rounds_per_run: int = 500     # continue-as-new after this many rounds
