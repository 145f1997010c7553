"""The member's app / personal-account inbox (role ``core``: the loyalty core's backend asks for its app).

    GET  /api/v1/members/{external_id}/inbox?program[&include_read=true][&limit=100]
    POST /api/v1/members/{external_id}/inbox/{id}/read
    POST /api/v1/members/{external_id}/inbox/{id}/dismiss

The rules are in ``channels.pickup``; these routes translate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import EngineDep, require
from app.api.pos import pickup_errors
from channels import pickup
from storage.tables import Role, utcnow

router = APIRouter(prefix="/api/v1/members/{external_id}/inbox", tags=["inbox"],
                   dependencies=[Depends(require(Role.core))])
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
ExternalId = Annotated[str, Path(min_length=1, max_length=128)]
MessageId = Annotated[int, Path(ge=1)]


class InboxMessageOut(BaseModel):
    id: int
    campaign: str
    title: str | None
    body: str
    link: str | None
    coupon: str | None
    created_at: datetime
    expires_at: datetime | None
    read: bool


class InboxOut(BaseModel):
    messages: list[InboxMessageOut] = Field(description="newest first; never expired or dismissed ones")
    unread: int = Field(description="unread messages in the inbox (a badge count)")


class DismissedOut(BaseModel):
    id: int
    dismissed: bool = True


def _out(m: pickup.PulledMessage) -> InboxMessageOut:
    return InboxMessageOut(id=m.id, campaign=m.campaign, title=m.title, body=m.body, link=m.link, coupon=m.coupon,
                           created_at=m.created_at, expires_at=m.expires_at, read=m.read)


@router.get("", response_model=InboxOut)
def inbox(external_id: ExternalId, program: ProgramQ, engine: EngineDep, include_read: bool = False,
          limit: Annotated[int, Query(ge=1, le=pickup.INBOX_PAGE_MAX)] = 100) -> InboxOut:
    """The member's unread messages (and read ones with ``include_read=true``), newest first."""
    with pickup_errors():
        found = pickup.inbox_messages(engine=engine, program=program, external_id=external_id, now=utcnow(),
                                      include_read=include_read, limit=limit)
    return InboxOut(messages=[_out(m) for m in found.messages], unread=found.unread)


@router.post("/{id}/read", response_model=InboxMessageOut)
def read(external_id: ExternalId, id: MessageId, program: ProgramQ,  # noqa: A002 - the path name
         engine: EngineDep) -> InboxMessageOut:
    """The member opened the message (idempotent)."""
    with pickup_errors():
        return _out(pickup.mark_read(engine=engine, program=program, external_id=external_id, message_id=id,
                                     now=utcnow()))


@router.post("/{id}/dismiss", response_model=DismissedOut)
def dismiss(external_id: ExternalId, id: MessageId, program: ProgramQ,  # noqa: A002 - the path name
            engine: EngineDep) -> DismissedOut:
    """The member dismissed the message: it leaves the inbox (idempotent)."""
    with pickup_errors():
        done = pickup.dismiss(engine=engine, program=program, external_id=external_id, message_id=id, now=utcnow())
    return DismissedOut(id=done.id)
