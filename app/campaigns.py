"""Launch and steer campaigns: the database row and the Temporal workflow, together."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from analytics.report import CampaignReport, campaign_report, compare_campaigns
from app.errors import Conflict, Invalid, NotFound
from app.settings import Settings
from campaigns.spec import CampaignSpec, SpecError, parse_spec
from members.service import get_program
from storage.db import session_scope
from storage.tables import Campaign, CampaignStatus, ChannelName
from templates.render import Renderer, TemplateProblem
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import (
    BroadcastInput,
    Counts,
    Progress,
    RunState,
    ScheduledRunInput,
    StepPlan,
    TriggeredInput,
)
from workflows.triggered import ScheduledTriggerRun, TriggeredCampaign


@dataclass(frozen=True)
class CampaignView:
    key: str
    program: str
    status: str
    workflow_id: str
    total: int | None
    counts: Counts
    live: bool  # True = from the workflow's query; False = from the database (workflow gone)
    pending: dict[str, int] | None = None     # planned deliveries not sent yet, by reason
    next_open: str | None = None
    budget_limit: str | None = None
    budget_spent: str | None = None
    schedule: dict | None = None               # recurring / date-rule campaigns: the Temporal Schedule


def workflow_id(program_key: str, campaign_key: str, kind: str = "broadcast") -> str:
    """No personal data: the program's and the campaign's keys only."""
    return f"{kind}/{program_key}/{campaign_key}"


def uses_schedule(spec: CampaignSpec) -> bool:
    return spec.recurring is not None or (spec.trigger is not None and spec.trigger.on is not None)


def spec_hash(spec: CampaignSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _same_spec(stored: dict[str, Any], spec: CampaignSpec) -> bool:
    """The stored spec, read by today's model, is this one (a spec stored before a field with a default was
    added hashes differently, yet launching it again is the same run)."""
    try:
        return spec_hash(parse_spec(stored)) == spec_hash(spec)
    except SpecError:
        return False


def check_template(spec: CampaignSpec, renderer: Renderer) -> None:
    """Every step's template compiles in every locale, for every channel of that step, and has a body in
    its default locale for each of them."""
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    pairs = [(spec.template_for(step, v), spec.channels_for(step, v))
             for step in spec.steps for v in ([None] + [x.key for x in spec.variants] if step == "main" else [None])]
    for name, channels in pairs:
        for channel in (c.value for c in channels):
            if (name, channel) in seen:
                continue
            seen.add((name, channel))
            try:
                meta = renderer.meta(name)
                if channel == "email":
                    for locale in meta["locales"]:
                        renderer.compiled(name, locale)
                renderer.resolve_locale(name, None, None, channel=channel)
                for locale in meta["channel_locales"].get(channel, []) if channel != "email" else []:
                    renderer.channel_compiled(name, channel, locale)
            except TemplateProblem as exc:
                problems.append(("template", str(exc)))
    if problems:
        raise Invalid(list(dict.fromkeys(problems)))


async def launch(*, engine: Engine, client: Client, settings: Settings, spec: CampaignSpec,
                 renderer: Renderer) -> CampaignView:
    """Create (or find) the campaign row and start its workflow (or Temporal Schedule). Launching the
    same spec twice is one run; a finished campaign is not run again; a different spec under a used key
    is a conflict."""
    check_template(spec, renderer)
    digest = spec_hash(spec)
    # the versions it launches with: rendered as they are now for as long as it runs
    pinned = {name: renderer.store.pin(name) for name in spec.all_templates}
    campaign_id, wf_id, status, program_tz = _campaign_row(engine, spec, digest, pinned)
    if status in (CampaignStatus.completed, CampaignStatus.cancelled):
        raise Conflict(f"campaign {spec.key!r} already ran ({status}); nothing was sent again", field="key")
    if uses_schedule(spec):
        await _ensure_schedule(client, settings, spec, campaign_id, wf_id, program_tz)
    else:
        workflow, arg = _workflow_and_input(spec, campaign_id, settings)
        try:
            await client.start_workflow(
                workflow, arg, id=wf_id, task_queue=settings.temporal_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        except WorkflowAlreadyStartedError:
            pass  # it ran before (a closed run): the row's status says how it ended
    return await status_of(engine=engine, client=client, program=spec.program, key=spec.key)


def _campaign_row(engine: Engine, spec: CampaignSpec, digest: str,
                  pinned: dict[str, int]) -> tuple[int, str, str, str]:
    """(id, workflow id, status, program time zone) of the campaign's row, written now if there is none.
    Two launches at once (two API processes, a double click) may both find none and both write it: the
    unique key (program, key) lets one in, and the other, refused, reads the row the first one wrote."""
    for attempt in (1, 2):
        try:
            with session_scope(engine) as s:
                program = get_program(s, spec.program)
                row = s.scalar(select(Campaign).where(Campaign.program_id == program.id, Campaign.key == spec.key))
                if row is None:
                    kind = "triggered" if spec.kind == "triggered" else "broadcast"
                    row = Campaign(program_id=program.id, key=spec.key, name=spec.name, kind=spec.kind,
                                   topic=spec.topic, spec=spec.model_dump(mode="json"), spec_hash=digest,
                                   status=CampaignStatus.scheduled, budget_limit=spec.budget,
                                   workflow_id=workflow_id(program.key, spec.key, kind), template_versions=pinned)
                    s.add(row)
                    s.flush()
                elif row.spec_hash != digest and not _same_spec(row.spec, spec):
                    raise Conflict(f"campaign {spec.key!r} was already launched with a different spec; "
                                   "give the new one another key", field="key")
                return row.id or 0, row.workflow_id or "", row.status, program.time_zone
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _workflow_and_input(spec: CampaignSpec, campaign_id: int, settings: Settings,
                        recurring: bool = False) -> tuple[object, object]:
    end_at = spec.end_at.isoformat() if spec.end_at else None
    if spec.kind == "triggered":
        return TriggeredCampaign.run, TriggeredInput(campaign_id=campaign_id, end_at=end_at,
                                                     poll_seconds=settings.trigger_poll_s,
                                                     concurrency=settings.trigger_concurrency)
    start_at = spec.start_at.isoformat() if spec.start_at and not recurring else None
    steps = [StepPlan("main", 0.0), *(StepPlan(f.step, f.after.total_seconds()) for f in spec.follow_ups)]
    return BroadcastCampaign.run, BroadcastInput(
        campaign_id=campaign_id, start_at=start_at, page_size=settings.page_size,
        concurrency=settings.pages_in_flight, end_at=None if recurring else end_at, steps=steps,
        recurring=recurring, hand_over=ChannelName.direct_mail in spec.all_channels)


async def _ensure_schedule(client: Client, settings: Settings, spec: CampaignSpec, campaign_id: int,
                           schedule_id: str, program_tz: str) -> None:
    """Recurring broadcasts (cron in the program's time zone) and date rules (hourly) on Temporal Schedules."""
    if spec.recurring is not None:
        workflow, arg = _workflow_and_input(spec, campaign_id, settings, recurring=True)
        sched_spec = ScheduleSpec(cron_expressions=[spec.recurring.cron],
                                  time_zone_name=spec.recurring.time_zone or program_tz,
                                  start_at=spec.start_at, end_at=spec.end_at)
    else:
        workflow, arg = ScheduledTriggerRun.run, ScheduledRunInput(campaign_id=campaign_id)
        sched_spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))],
                                  start_at=spec.start_at, end_at=spec.end_at)
    try:
        await client.create_schedule(
            schedule_id,
            Schedule(action=ScheduleActionStartWorkflow(workflow, arg, id=f"{schedule_id}/run",
                                                        task_queue=settings.temporal_task_queue),
                     spec=sched_spec, state=ScheduleState(note=f"campaign {spec.key}")),
            trigger_immediately=spec.recurring is None,
        )
    except ScheduleAlreadyRunningError:
        pass  # launched before: one schedule


def _row(engine: Engine, program: str, key: str) -> tuple[Campaign, str]:
    with session_scope(engine) as s:
        prog = get_program(s, program)
        row = s.scalar(select(Campaign).where(Campaign.program_id == prog.id, Campaign.key == key))
        if row is None:
            raise NotFound(f"campaign {key!r} not found in program {program!r}", field="key")
        return row, prog.key


def report(*, engine: Engine, program: str, key: str) -> CampaignReport:
    """The campaign's report (analytics.report), by program and key."""
    row, _ = _row(engine, program, key)
    return campaign_report(engine, row.id or 0)


def compare(*, engine: Engine, program: str, start: datetime | None, end: datetime | None) -> list[CampaignReport]:
    """The program's campaigns that ran in [start, end), each with its totals."""
    with Session(engine) as s:
        program_id = get_program(s, program).id or 0
    return compare_campaigns(engine, program_id, start, end)


async def status_of(*, engine: Engine, client: Client, program: str, key: str) -> CampaignView:
    row, program_key = _row(engine, program, key)
    spec = CampaignSpec.model_validate(row.spec)
    money = {"budget_limit": None if row.budget_limit is None else str(row.budget_limit),
             "budget_spent": str(row.budget_spent)}
    base = {"key": row.key, "program": program_key, "workflow_id": row.workflow_id or "", **money}
    if uses_schedule(spec):
        return CampaignView(status=row.status, total=None, counts=Counts(), live=True,
                            schedule=await _schedule_info(client, row.workflow_id or ""), **base)
    handle = client.get_workflow_handle(row.workflow_id or "")
    try:
        progress: Progress = await handle.query(BroadcastCampaign.progress)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return CampaignView(status=row.status, total=None, counts=Counts(), live=False, **base)
    return CampaignView(status=progress.state.value, total=progress.total, counts=progress.counts, live=True,
                        pending=progress.pending, next_open=progress.next_open, **base)


async def _schedule_info(client: Client, schedule_id: str) -> dict | None:
    try:
        desc = await client.get_schedule_handle(schedule_id).describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return None
    return {"paused": desc.schedule.state.paused,
            "next_runs": [t.isoformat() for t in desc.info.next_action_times[:3]],
            "recent_runs": [a.scheduled_at.isoformat() for a in desc.info.recent_actions[-3:]],
            "runs": desc.info.num_actions}


async def _running_handle(client: Client, row: Campaign, action: str):  # noqa: ANN202
    handle = client.get_workflow_handle(row.workflow_id or "")
    desc = None
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
        raise Conflict(f"campaign {row.key!r} is not running (status {row.status}); cannot {action}", field="key")
    return handle


async def signal(*, engine: Engine, client: Client, program: str, key: str, action: str) -> CampaignView:
    row, _ = _row(engine, program, key)
    if uses_schedule(CampaignSpec.model_validate(row.spec)):
        await _steer_schedule(engine, client, row, action)
    else:
        handle = await _running_handle(client, row, action)
        await handle.signal(action)
    return await status_of(engine=engine, client=client, program=program, key=key)


async def _steer_schedule(engine: Engine, client: Client, row: Campaign, action: str) -> None:
    handle = client.get_schedule_handle(row.workflow_id or "")
    try:
        if action == "pause":
            await handle.pause(note="paused by a marketer")
        elif action == "resume":
            await handle.unpause(note="resumed by a marketer")
        else:
            await handle.delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise Conflict(f"campaign {row.key!r} has no schedule any more; cannot {action}", field="key") from None
    status = {"pause": CampaignStatus.paused, "resume": CampaignStatus.scheduled,
              "cancel": CampaignStatus.cancelled}[action]
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == row.id).values(status=status))  # type: ignore[arg-type]


async def set_budget(*, engine: Engine, client: Client, program: str, key: str,
                     limit: Decimal | None) -> CampaignView:
    """Change a campaign's budget limit (None = no limit); a running campaign tries again the members the
    old budget did not reach."""
    if limit is not None and (not limit.is_finite() or limit <= 0):
        raise Invalid([("budget", "give a positive amount in the program's currency")])
    row, _ = _row(engine, program, key)
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == row.id).values(budget_limit=limit))  # type: ignore[arg-type]
    await _signal_if_running(client, row, "budget_changed")
    return await status_of(engine=engine, client=client, program=program, key=key)


def check_end(*, engine: Engine, program: str, key: str, end_at: datetime | None) -> Campaign:
    """The campaign whose end would move to ``end_at``, or Invalid naming ``end_at``: it needs an offset and
    must come after the campaign's start (its spec's ``start_at``, else when it started). Reads the database
    only, so a caller may check before Temporal is reached."""
    if end_at is not None and end_at.tzinfo is None:
        raise Invalid([("end_at", "give a time zone offset, e.g. 2026-12-01T10:00:00+03:00")])
    row, _ = _row(engine, program, key)
    start = CampaignSpec.model_validate(row.spec).start_at or row.started_at
    if end_at is not None and start is not None:
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start    # SQLite keeps no offset
        if end_at <= start:
            raise Invalid([("end_at", f"end_at must be after the campaign's start ({start.isoformat()})")])
    return row


async def set_end(*, engine: Engine, client: Client, program: str, key: str, end_at: datetime | None) -> CampaignView:
    """Move (or remove) a running campaign's end date (checked first: :func:`check_end`)."""
    row = check_end(engine=engine, program=program, key=key, end_at=end_at)
    handle = await _running_handle(client, row, "change the end date")
    await handle.signal("set_end", end_at.isoformat() if end_at else None)
    return await status_of(engine=engine, client=client, program=program, key=row.key)


async def _signal_if_running(client: Client, row: Campaign, name: str) -> None:
    try:
        await client.get_workflow_handle(row.workflow_id or "").signal(name)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


def is_finished(view: CampaignView) -> bool:
    return view.status in (RunState.completed, RunState.cancelled, "failed")
