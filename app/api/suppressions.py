"""Bounces, complaints and provider opt-outs reported from outside the send path (role core)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field, model_validator
from sqlmodel import Session

from app.api.deps import EngineDep, require
from consent.suppressions import SuppressionIn, suppress
from members.service import get_program
from storage.db import session_scope
from storage.tables import Role

router = APIRouter(prefix="/api/v1/suppressions", tags=["consent"])
ProgramQ = Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


class Item(BaseModel):
    channel: str = Field(pattern=r"^(email|sms|whatsapp|telegram|push)$")
    reason: str = Field(pattern=r"^(bounce|complaint|provider)$")
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    address: str | None = Field(default=None, min_length=3, max_length=320)
    message_id: str | None = Field(default=None, max_length=255)

    @model_validator(mode="after")
    def _who(self) -> Item:
        if not self.external_id and not self.address:
            raise ValueError("give external_id or address")
        return self


class SuppressionsIn(BaseModel):
    items: list[Item] = Field(min_length=1, max_length=1000)


@router.post("", dependencies=[Depends(require(Role.core))])
def post_suppressions(body: SuppressionsIn, program: ProgramQ, engine: EngineDep) -> dict[str, Any]:
    """Each item suppresses the channel for the member(s) it names, in the ledger with its source. Items that
    match no member are reported by index; the others are kept."""
    with Session(engine) as s:
        program_id = get_program(s, program).id or 0
    with session_scope(engine) as s:
        result = suppress(session=s, program_id=program_id, items=[SuppressionIn(**i.model_dump()) for i in body.items])
    return {"suppressed": result.suppressed, "already": result.already, "complaints": result.responses,
            "unknown": result.unknown}
