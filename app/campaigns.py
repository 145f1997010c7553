"""Launch and steer campaigns: the database row and the Temporal workflow, together."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from app.errors import Conflict, Invalid, NotFound
from app.settings import Settings
from campaigns.spec import CampaignSpec
from members.service import get_program
from storage.db import session_scope
from storage.tables import Campaign, CampaignStatus
from templates.render import Renderer, TemplateProblem
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput, Counts, Progress, RunState


@dataclass(frozen=True)
class CampaignView:
    key: str
    program: str
    status: str
    workflow_id: str
    total: int | None
    counts: Counts
    live: bool  # True = from the workflow's query; False = from the database (workflow gone)


def workflow_id(program_key: str, campaign_key: str) -> str:
    return f"broadcast/{program_key}/{campaign_key}"


def spec_hash(spec: CampaignSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def check_template(spec: CampaignSpec, renderer: Renderer) -> None:
    try:
        meta = renderer.meta(spec.template)
        for locale in meta["locales"]:
            renderer.compiled(spec.template, locale)
    except TemplateProblem as exc:
        raise Invalid([("template", str(exc))]) from None


async def launch(*, engine: Engine, client: Client, settings: Settings, spec: CampaignSpec,
                 renderer: Renderer) -> CampaignView:
    """Create (or find) the campaign row and start its workflow. Launching the same spec twice is
    one run; a finished campaign is not run again; a different spec under a used key is a conflict."""
    check_template(spec, renderer)
    digest = spec_hash(spec)
    with session_scope(engine) as s:
        program = get_program(s, spec.program)
        row = s.scalar(select(Campaign).where(Campaign.program_id == program.id, Campaign.key == spec.key))
        if row is None:
            row = Campaign(program_id=program.id, key=spec.key, name=spec.name, kind=spec.kind,
                           topic=spec.topic, spec=spec.model_dump(mode="json"), spec_hash=digest,
                           status=CampaignStatus.scheduled,
                           workflow_id=workflow_id(program.key, spec.key))
            s.add(row)
            s.flush()
        elif row.spec_hash != digest:
            raise Conflict(f"campaign {spec.key!r} was already launched with a different spec; "
                           "give the new one another key", field="key")
        campaign_id, wf_id, status = row.id, row.workflow_id or "", row.status
    if status in (CampaignStatus.completed, CampaignStatus.cancelled):
        raise Conflict(f"campaign {spec.key!r} already ran ({status}); nothing was sent again", field="key")
    start_at = spec.start_at.isoformat() if spec.start_at else None
    try:
        await client.start_workflow(
            BroadcastCampaign.run,
            BroadcastInput(campaign_id=campaign_id or 0, start_at=start_at, page_size=settings.page_size,
                           concurrency=settings.batch_concurrency),
            id=wf_id, task_queue=settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except WorkflowAlreadyStartedError:
        pass  # it ran before (a closed run): the row's status says how it ended
    return await status_of(engine=engine, client=client, program=spec.program, key=spec.key)


def _row(engine: Engine, program: str, key: str) -> tuple[Campaign, str]:
    with session_scope(engine) as s:
        prog = get_program(s, program)
        row = s.scalar(select(Campaign).where(Campaign.program_id == prog.id, Campaign.key == key))
        if row is None:
            raise NotFound(f"campaign {key!r} not found in program {program!r}", field="key")
        return row, prog.key


async def status_of(*, engine: Engine, client: Client, program: str, key: str) -> CampaignView:
    row, program_key = _row(engine, program, key)
    handle = client.get_workflow_handle(row.workflow_id or "")
    try:
        progress: Progress = await handle.query(BroadcastCampaign.progress)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return CampaignView(key=row.key, program=program_key, status=row.status, workflow_id=row.workflow_id or "",
                            total=None, counts=Counts(), live=False)
    return CampaignView(key=row.key, program=program_key, status=progress.state.value,
                        workflow_id=row.workflow_id or "", total=progress.total, counts=progress.counts,
                        live=True)


async def signal(*, engine: Engine, client: Client, program: str, key: str, action: str) -> CampaignView:
    row, _ = _row(engine, program, key)
    handle = client.get_workflow_handle(row.workflow_id or "")
    desc = None
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
        raise Conflict(f"campaign {key!r} is not running (status {row.status}); cannot {action}", field="key")
    await handle.signal(action)
    return await status_of(engine=engine, client=client, program=program, key=key)


def is_finished(view: CampaignView) -> bool:
    return view.status in (RunState.completed, RunState.cancelled, "failed")
