"""Campaigns: launch from a spec (JSON or YAML), live status, pause/resume/cancel, report."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from decimal import Decimal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import AwareDatetime, BaseModel, Field
from sqlmodel import Session

from app import campaigns as service
from app.api.deps import EngineDep, RendererDep, SettingsDep, TemporalDep, require
from app.errors import Invalid
from campaigns.estimate import estimate
from campaigns.spec import load_spec, parse_spec
from members.service import get_program
from storage.tables import Role, utcnow

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
Key = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


def _view(v: service.CampaignView) -> dict[str, Any]:
    return {"key": v.key, "program": v.program, "status": v.status, "workflow_id": v.workflow_id,
            "total": v.total, "counts": dataclasses.asdict(v.counts), "live": v.live,
            "pending": v.pending or {}, "next_open": v.next_open,
            "budget": {"limit": v.budget_limit, "spent": v.budget_spent}, "schedule": v.schedule}


class BudgetIn(BaseModel):
    # checked here, before Temporal is reached: a bad amount is a 422 naming it whether Temporal is up or not
    limit: Decimal | None = Field(gt=0, allow_inf_nan=False, max_digits=14, decimal_places=4,
                                  description="the new limit in the program's currency; null = no limit")


class EndIn(BaseModel):
    end_at: AwareDatetime | None = Field(description="ISO 8601 with offset; null = no end date")


def _spec_from(raw: bytes, ctype: str) -> Any:
    try:  # a byte that is not UTF-8 is refused, never replaced: a spec is launched as it was written
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid([("body", f"not UTF-8 text (byte {exc.start}): send the spec as UTF-8")]) from None
    if "yaml" in ctype:
        return load_spec(text)
    try:
        return parse_spec(json.loads(text or "null"))
    except json.JSONDecodeError as exc:
        raise Invalid([("body", f"not valid JSON: {exc.msg} at line {exc.lineno}")]) from None


@router.post("/estimate", dependencies=[Depends(require(Role.marketer, Role.analyst))],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"type": "object"}},
                 "application/yaml": {"schema": {"type": "string"}}}, "required": True}})
async def estimate_campaign(request: Request, engine: EngineDep) -> dict[str, Any]:
    """Before launch: audience, held out, reachable and suppressed per channel, cost against the budget."""
    spec = _spec_from(await request.body(), request.headers.get("content-type", ""))
    with Session(engine) as s:
        est = estimate(session=s, program=get_program(s, spec.program), spec=spec, now=utcnow())
    return {**jsonable_encoder(dataclasses.asdict(est)), "over_budget": est.over_budget}


@router.post("", status_code=202, dependencies=[Depends(require(Role.marketer))],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"type": "object"}},
                 "application/yaml": {"schema": {"type": "string"}}}, "required": True}})
async def launch_campaign(request: Request, engine: EngineDep, settings: SettingsDep,
                          renderer: RendererDep) -> dict[str, Any]:
    """Launch a campaign from its spec. The same spec twice is one run."""
    spec = _spec_from(await request.body(), request.headers.get("content-type", ""))
    client = await request.app.state.temporal()  # only once the spec is valid
    return _view(await service.launch(engine=engine, client=client, settings=settings, spec=spec,
                                      renderer=renderer))


@router.get("/{key}", dependencies=[Depends(require(Role.marketer, Role.analyst))])
async def campaign_status(key: Key, program: ProgramQ, engine: EngineDep, client: TemporalDep) -> dict[str, Any]:
    """Status and progress, live from the workflow's query (from the database once the workflow is gone)."""
    return _view(await service.status_of(engine=engine, client=client, program=program, key=key))


@router.put("/{key}/budget", dependencies=[Depends(require(Role.marketer))])
async def change_budget(key: Key, body: BudgetIn, program: ProgramQ, engine: EngineDep,
                        request: Request) -> dict[str, Any]:
    """Raise (or lower, or remove) the budget; a campaign stopped by its budget goes on."""
    client = await request.app.state.temporal()  # only once the body is valid
    return _view(await service.set_budget(engine=engine, client=client, program=program, key=key,
                                          limit=body.limit))


@router.put("/{key}/end", dependencies=[Depends(require(Role.marketer))])
async def change_end(key: Key, body: EndIn, program: ProgramQ, engine: EngineDep,
                     request: Request) -> dict[str, Any]:
    """Move a running campaign's end date."""
    service.check_end(engine=engine, program=program, key=key, end_at=body.end_at)   # a 422 before Temporal
    client = await request.app.state.temporal()  # only once the body is valid
    return _view(await service.set_end(engine=engine, client=client, program=program, key=key,
                                       end_at=body.end_at))


@router.post("/{key}/{action}", dependencies=[Depends(require(Role.marketer))])
async def steer_campaign(key: Key, action: Literal["pause", "resume", "cancel"], program: ProgramQ,
                         engine: EngineDep, client: TemporalDep) -> dict[str, Any]:
    return _view(await service.signal(engine=engine, client=client, program=program, key=key, action=action))


@router.get("/{key}/report", dependencies=[Depends(require(Role.marketer, Role.analyst))])
def report(key: Key, program: ProgramQ, engine: EngineDep) -> dict[str, Any]:
    """The campaign's report (the same as GET /api/v1/reports/campaigns/{key})."""
    return service.report(engine=engine, program=program, key=key).to_dict()
