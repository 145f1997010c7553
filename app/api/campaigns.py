"""Campaigns: launch from a spec (JSON or YAML), live status, pause/resume/cancel, report."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import select
from sqlmodel import Session

from analytics.report import campaign_report
from app import campaigns as service
from app.api.deps import EngineDep, RendererDep, SettingsDep, TemporalDep, require
from app.errors import Invalid, NotFound
from campaigns.spec import load_spec, parse_spec
from members.service import get_program
from storage.tables import Campaign, Role

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
Key = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


def _view(v: service.CampaignView) -> dict[str, Any]:
    return {"key": v.key, "program": v.program, "status": v.status, "workflow_id": v.workflow_id,
            "total": v.total, "counts": dataclasses.asdict(v.counts), "live": v.live}


@router.post("", status_code=202, dependencies=[Depends(require(Role.marketer))],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"type": "object"}},
                 "application/yaml": {"schema": {"type": "string"}}}, "required": True}})
async def launch_campaign(request: Request, engine: EngineDep, settings: SettingsDep,
                          renderer: RendererDep) -> dict[str, Any]:
    """Launch a campaign from its spec. The same spec twice is one run."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    if "yaml" in ctype:
        spec = load_spec(raw.decode("utf-8", errors="replace"))
    else:
        try:
            spec = parse_spec(json.loads(raw or b"null"))
        except json.JSONDecodeError as exc:
            raise Invalid([("body", f"not valid JSON: {exc.msg} at line {exc.lineno}")]) from None
    client = await request.app.state.temporal()  # only once the spec is valid
    return _view(await service.launch(engine=engine, client=client, settings=settings, spec=spec,
                                      renderer=renderer))


@router.get("/{key}", dependencies=[Depends(require(Role.marketer, Role.analyst))])
async def campaign_status(key: Key, program: ProgramQ, engine: EngineDep, client: TemporalDep) -> dict[str, Any]:
    """Status and progress, live from the workflow's query (from the database once the workflow is gone)."""
    return _view(await service.status_of(engine=engine, client=client, program=program, key=key))


@router.post("/{key}/{action}", dependencies=[Depends(require(Role.marketer))])
async def steer_campaign(key: Key, action: Literal["pause", "resume", "cancel"], program: ProgramQ,
                         engine: EngineDep, client: TemporalDep) -> dict[str, Any]:
    return _view(await service.signal(engine=engine, client=client, program=program, key=key, action=action))


@router.get("/{key}/report", dependencies=[Depends(require(Role.marketer, Role.analyst))])
def report(key: Key, program: ProgramQ, engine: EngineDep) -> dict[str, Any]:
    with Session(engine) as s:
        prog = get_program(s, program)
        cid = s.scalar(select(Campaign.id).where(Campaign.program_id == prog.id, Campaign.key == key))
    if cid is None:
        raise NotFound(f"campaign {key!r} not found in program {program!r}", field="key")
    return dataclasses.asdict(campaign_report(engine, cid))

