"""Program rules: unit costs per channel, quiet hours per channel, program-wide frequency caps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path
from sqlmodel import Session

from app.api.deps import EngineDep, require
from members.service import get_program, set_program_settings
from storage.tables import Role

router = APIRouter(prefix="/api/v1/programs", tags=["programs"])
Key = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


@router.get("/{key}/settings", dependencies=[Depends(require(Role.marketer, Role.analyst))])
def get_settings(key: Key, engine: EngineDep) -> dict[str, Any]:
    with Session(engine) as s:
        return get_program(s, key).settings or {}


@router.put("/{key}/settings", dependencies=[Depends(require(Role.marketer))])
def put_settings(key: Key, engine: EngineDep,
                 body: Annotated[dict[str, Any], Body(examples=[{
                     "unit_costs": {"email": "0.002", "sms": "0.06"},
                     "quiet_hours": {"sms": {"from": "22:00", "to": "08:00"}, "push": None},
                     "caps": [{"max": 3, "per": "7d"}]}])]) -> dict[str, Any]:
    """Replace the program's rules (validated; errors name the field)."""
    return set_program_settings(engine=engine, key=key, data=body)
