"""Events pushed by the loyalty core: one by one or in batches; a repeated id is answered, never stored twice."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from app.api.deps import EngineDep, require
from app.errors import ClarionError, Invalid
from members.events import EventIn, ingest_events
from members.service import get_program
from storage.tables import Role

SINGLE_MAX_BYTES = 64 * 1024
BATCH_MAX_BYTES = 8 * 1024 * 1024
BATCH_MAX = 1000
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


class PayloadTooLarge(ClarionError):
    status_code = 413


class _TooLarge(HTTPException):
    """Raised while FastAPI reads the body (it passes HTTPExceptions through); answered as PayloadTooLarge."""


def _too_large(limit: int) -> PayloadTooLarge:
    what = f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"
    hint = f"; split it into batches of at most {BATCH_MAX} events" if limit == BATCH_MAX_BYTES else \
        "; send large sets through POST /api/v1/events/batch"
    return PayloadTooLarge(f"the request body is over {what}{hint}", field="body")


class _LimitedRequest(Request):
    """Reads the body in chunks and stops as soon as it is over the limit (for bodies without Content-Length)."""

    limit: int = BATCH_MAX_BYTES

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self.limit:
                    raise _TooLarge(413)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


class _LimitedRoute(APIRoute):
    """A route whose request body may be at most ``openapi_extra['x-max-body-bytes']`` bytes → else 413."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = int((self.openapi_extra or {}).get("x-max-body-bytes", BATCH_MAX_BYTES))

        async def limited(request: Request) -> Response:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise _too_large(limit)
            req = _LimitedRequest(request.scope, request.receive)
            req.limit = limit
            try:
                return await handler(req)
            except _TooLarge:
                raise _too_large(limit) from None

        return limited


router = APIRouter(prefix="/api/v1/events", tags=["events"], route_class=_LimitedRoute)


class EventAccepted(BaseModel):
    accepted: int = Field(description="1 when stored now, 0 when it was a duplicate")
    duplicate: bool = Field(description="true when an event with this id was already received")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(max_length=BATCH_MAX, description=f"at most {BATCH_MAX} events, each shaped "
                                                                "like the body of POST /api/v1/events")


class BatchError(BaseModel):
    index: int
    id: str | None
    field: str
    message: str


class BatchOut(BaseModel):
    accepted: int
    duplicates: int
    attributed: int = Field(description="purchases of this batch that counted for a campaign (its attribution "
                                        "window after the member's last message of it)")
    errors: list[BatchError]


_program_ids: dict[tuple[str, str], int] = {}


def _program_id(engine: Any, key: str) -> int:
    """Programs are never renamed or deleted: their ids are looked up once per process."""
    found = _program_ids.get((str(engine.url), key))
    if found is None:
        with Session(engine) as s:
            found = _program_ids[(str(engine.url), key)] = get_program(s, key).id or 0
    return found


@router.post("", status_code=202, response_model=EventAccepted, dependencies=[Depends(require(Role.core))],
             openapi_extra={"x-max-body-bytes": SINGLE_MAX_BYTES})
def post_event(body: EventIn, program: ProgramQ, engine: EngineDep) -> EventAccepted:
    """One event. Posting the same id again answers ``duplicate: true`` and stores nothing."""
    result = ingest_events(engine=engine, program_id=_program_id(engine, program), items=[body])
    if result.errors:
        raise Invalid([(e.field, e.message) for e in result.errors])
    return EventAccepted(accepted=result.accepted, duplicate=result.duplicates > 0)


@router.post("/batch", status_code=202, response_model=BatchOut, dependencies=[Depends(require(Role.core))],
             openapi_extra={"x-max-body-bytes": BATCH_MAX_BYTES})
def post_events(body: BatchIn, program: ProgramQ, engine: EngineDep) -> BatchOut:
    """Up to 1,000 events: the good ones are stored, each bad one is reported (index, field)."""
    result = ingest_events(engine=engine, program_id=_program_id(engine, program), items=body.events)
    return BatchOut(accepted=result.accepted, duplicates=result.duplicates, attributed=result.attributed,
                    errors=[BatchError(index=e.index, id=e.id, field=e.field, message=e.message)
                            for e in result.errors])
