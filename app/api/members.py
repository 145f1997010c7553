"""Members pushed by the loyalty core: one by one (PUT) or in bulk."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlmodel import Session

from app.api.deps import EngineDep, require
from app.errors import NotFound
from members.profile import MemberIn
from members.service import get_program, upsert_members, validation_errors
from storage.tables import Member, Role

router = APIRouter(prefix="/api/v1/members", tags=["members"])
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
ExternalId = Annotated[str, Path(min_length=1, max_length=128)]
BULK_MAX = 1000


class MemberOut(BaseModel):
    external_id: str
    kind: str
    first_name: str | None
    last_name: str | None
    locale: str | None
    time_zone: str | None
    email: str | None
    phone: str | None
    attributes: dict[str, Any]


class BulkItem(MemberIn):
    external_id: str = Field(min_length=1, max_length=128)


class BulkIn(BaseModel):
    members: list[dict[str, Any]] = Field(max_length=BULK_MAX)


class BulkError(BaseModel):
    index: int
    external_id: str | None
    field: str
    message: str


class BulkOut(BaseModel):
    created: int
    updated: int
    errors: list[BulkError]


def _program_id(engine: Any, key: str) -> int:
    with Session(engine) as s:
        return get_program(s, key).id or 0


@router.put("/{external_id}", response_model=MemberOut,
            dependencies=[Depends(require(Role.core))])
def put_member(external_id: ExternalId, body: MemberIn, program: ProgramQ, engine: EngineDep) -> MemberOut:
    program_id = _program_id(engine, program)
    upsert_members(engine=engine, program_id=program_id, items=[(None, external_id, body)])
    return get_member(external_id, program, engine)


@router.get("/{external_id}", response_model=MemberOut,
            dependencies=[Depends(require(Role.core, Role.marketer))])
def get_member(external_id: ExternalId, program: ProgramQ, engine: EngineDep) -> MemberOut:
    program_id = _program_id(engine, program)
    with Session(engine) as s:
        m = s.scalar(select(Member).where(Member.program_id == program_id, Member.external_id == external_id))
    if m is None:
        raise NotFound(f"member {external_id!r} not found", field="external_id")
    return MemberOut(**m.model_dump(include=set(MemberOut.model_fields)))


@router.post("/bulk", response_model=BulkOut, dependencies=[Depends(require(Role.core))])
def bulk_members(body: BulkIn, program: ProgramQ, engine: EngineDep) -> BulkOut:
    """Up to 1,000 members; each bad item is reported (index, field) while the good ones are kept."""
    program_id = _program_id(engine, program)
    good: dict[str, tuple[int, str, MemberIn]] = {}
    errors: list[BulkError] = []
    for i, raw in enumerate(body.members):
        try:
            item = BulkItem.model_validate(raw)
        except ValidationError as exc:
            field, message = validation_errors(exc)[0]
            errors.append(BulkError(index=i, external_id=raw.get("external_id") if isinstance(raw, dict) else None,
                                    field=field, message=message))
            continue
        good[item.external_id] = (i, item.external_id, item)  # a BulkItem is a MemberIn
    created, updated = upsert_members(engine=engine, program_id=program_id, items=good.values())
    return BulkOut(created=created, updated=updated, errors=errors)
