"""Clarion's error types for callers, and the one place they are mapped to HTTP answers.

    ClarionError                 message for a person; ``field`` names what was wrong when known
    ├── NotFound                 404
    ├── Conflict                 409 (e.g. a campaign key already used with another spec)
    ├── Unavailable              503 (Temporal cannot be reached)
    └── Invalid                  422 (``problems``: [(path, message)])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from campaigns.spec import SpecError
from members.rights import MemberNotFound
from members.service import ProgramNotFound

if TYPE_CHECKING:  # the CLI imports this module too: FastAPI only when an app is built
    from fastapi import FastAPI


class TemporalUnavailable(RuntimeError):
    """Temporal cannot be reached (raised by app.temporal; mapped to 503 here)."""


class ClarionError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ClarionError):
    status_code = 404


class Conflict(ClarionError):
    status_code = 409


class Unavailable(ClarionError):
    status_code = 503


class Invalid(ClarionError):
    status_code = 422

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))
        self.problems = problems


def as_clarion_error(exc: Exception) -> ClarionError:
    if isinstance(exc, ClarionError):
        return exc
    if isinstance(exc, SpecError):
        return Invalid(exc.problems)
    if isinstance(exc, ProgramNotFound):
        return NotFound(str(exc), field="program")
    if isinstance(exc, MemberNotFound):
        return NotFound(str(exc), field="external_id")
    if isinstance(exc, TemporalUnavailable):
        return Unavailable(str(exc))
    raise exc


def _body(err: ClarionError) -> dict:
    body: dict = {"error": type(err).__name__.lower(), "message": err.message}
    if isinstance(err, Invalid):
        body["problems"] = [{"field": p, "message": m} for p, m in err.problems]
    elif err.field:
        body["field"] = err.field
    return body


def install(app: FastAPI) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def clarion_handler(_: Request, exc: Exception) -> JSONResponse:
        err = as_clarion_error(exc)
        return JSONResponse(_body(err), status_code=err.status_code)

    async def validation_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            loc = [str(p) for p in e["loc"] if p != "body"]
            problems.append((".".join(loc) or "body", str(e["msg"]).removeprefix("Value error, ")))
        return JSONResponse(_body(Invalid(problems)), status_code=422)

    for cls in (ClarionError, SpecError, ProgramNotFound, MemberNotFound, TemporalUnavailable):
        app.add_exception_handler(cls, clarion_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
