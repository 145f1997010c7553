"""Members pushed by the loyalty core (one by one or in bulk), their app devices and Telegram deep links."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlmodel import Session

from app.api.deps import EngineDep, require
from app.confirmations import wake_soon
from app.errors import Invalid, NotFound
from channels.accounts import parse_account
from channels.telegram import deep_link
from consent.links import LINK_TTL, create_link
from members.profile import MemberIn
from members.service import get_program, upsert_members, validation_errors
from storage.db import insert_ignore, session_scope
from storage.tables import ChannelAccount, Member, PushToken, Role, utcnow

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


async def _wake_if(queued: list[int], request: Request) -> None:
    """Double opt-in confirmations were queued: wake the sender (best effort; it also polls)."""
    if sum(queued):
        await wake_soon(request.app.state)


@router.put("/{external_id}", response_model=MemberOut,
            dependencies=[Depends(require(Role.core))])
async def put_member(external_id: ExternalId, body: MemberIn, program: ProgramQ, engine: EngineDep,
                     request: Request) -> MemberOut:
    program_id = await asyncio.to_thread(_program_id, engine, program)
    queued: list[int] = []
    await asyncio.to_thread(lambda: upsert_members(engine=engine, program_id=program_id,
                                                   items=[(None, external_id, body)], confirmations=queued))
    await _wake_if(queued, request)
    return await asyncio.to_thread(get_member, external_id, program, engine)


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
async def bulk_members(body: BulkIn, program: ProgramQ, engine: EngineDep, request: Request) -> BulkOut:
    """Up to 1,000 members; each bad item is reported (index, field) while the good ones are kept."""
    result, queued = await asyncio.to_thread(_bulk, body, program, engine)
    await _wake_if(queued, request)
    return result


def _bulk(body: BulkIn, program: str, engine: Any) -> tuple[BulkOut, list[int]]:
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
    queued: list[int] = []
    created, updated = upsert_members(engine=engine, program_id=program_id, items=good.values(), confirmations=queued)
    return BulkOut(created=created, updated=updated, errors=errors), queued


# --- devices and linked addresses -----------------------------------------------------------------


class PushTokenIn(BaseModel):
    token: str = Field(min_length=16, max_length=4096, pattern=r"^[A-Za-z0-9_\-:.]+$")
    platform: str = Field(default="android", pattern=r"^(android|ios|web)$")


class PushTokenRemove(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


def _member_id(engine: Any, program: str, external_id: str) -> tuple[int, int]:
    with Session(engine) as s:
        program_id = get_program(s, program).id or 0
        mid = s.scalar(select(Member.id).where(Member.program_id == program_id, Member.external_id == external_id))
    if mid is None:
        raise NotFound(f"member {external_id!r} not found", field="external_id")
    return program_id, mid


@router.post("/{external_id}/push-tokens", dependencies=[Depends(require(Role.core))], status_code=201)
def add_push_token(external_id: ExternalId, body: PushTokenIn, program: ProgramQ, engine: EngineDep) -> dict[str, Any]:
    """The loyalty app registered a device. A token already registered to another member of the program moves
    to this one (the device changed hands); registering it again changes nothing."""
    program_id, member_id = _member_id(engine, program, external_id)
    with session_scope(engine) as s:
        others = select(Member.id).where(Member.program_id == program_id, Member.id != member_id)
        s.execute(PushToken.__table__.delete().where(PushToken.token == body.token,  # type: ignore[attr-defined]
                                                     PushToken.member_id.in_(others)))  # type: ignore[attr-defined]
        s.execute(insert_ignore(s, PushToken.__table__, ["member_id", "token"]),
                  [{"member_id": member_id, "token": body.token, "platform": body.platform}])
        count = len(s.scalars(select(PushToken.id).where(PushToken.member_id == member_id)).all())
    return {"external_id": external_id, "devices": count}


@router.delete("/{external_id}/push-tokens", dependencies=[Depends(require(Role.core))])
def remove_push_token(external_id: ExternalId, body: PushTokenRemove, program: ProgramQ,
                      engine: EngineDep) -> dict[str, Any]:
    """The app logged out on a device (the token in the body, never in the URL)."""
    _, member_id = _member_id(engine, program, external_id)
    with session_scope(engine) as s:
        removed = s.execute(PushToken.__table__.delete().where(  # type: ignore[attr-defined]
            PushToken.member_id == member_id, PushToken.token == body.token)).rowcount
        count = len(s.scalars(select(PushToken.id).where(PushToken.member_id == member_id)).all())
    if not removed:
        raise NotFound("this device token is not registered for the member", field="token")
    return {"external_id": external_id, "devices": count}


class TelegramLinkIn(BaseModel):
    topics: list[str] = Field(default_factory=lambda: ["promotions"], max_length=20)
    wording_version: str | None = Field(default=None, max_length=64)


@router.post("/{external_id}/telegram-link", dependencies=[Depends(require(Role.core))])
def telegram_link(external_id: ExternalId, body: TelegramLinkIn, program: ProgramQ,
                  engine: EngineDep) -> dict[str, Any]:
    """A one-time deep link to the program's bot (t.me/<bot>?start=<token>, valid 7 days): the member opens
    it, presses Start, and the chat is linked and the topics granted (ledger source telegram)."""
    bad = [t for t in body.topics if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,63}", t)]
    if bad:
        raise Invalid([("topics", f"not a topic key: {bad[0]!r}")])
    program_id, member_id = _member_id(engine, program, external_id)
    with session_scope(engine) as s:
        account = s.scalar(select(ChannelAccount).where(ChannelAccount.program_id == program_id,
                                                        ChannelAccount.channel == "telegram"))
        if account is None:
            raise NotFound("the program has no Telegram bot: set one with `clarion channels set PROGRAM telegram`",
                           field="program")
        bot = parse_account("telegram", account.provider, account.config).bot_username  # type: ignore[attr-defined]
        token = create_link(session=s, program_id=program_id, member_id=member_id, channel="telegram",
                            topics=body.topics)
    return {"url": deep_link(bot, token), "expires_at": (utcnow() + LINK_TTL).isoformat(), "topics": body.topics}
