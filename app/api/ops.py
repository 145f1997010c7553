"""Operations: liveness (/healthz), readiness (/readyz) and the process's metrics (/metrics). No API key:
load balancers and Prometheus ask these, and none of them shows anything about a member."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from app.observability import metrics_body

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


async def _check(probe: Callable[[], Awaitable[Any]], timeout: float) -> dict[str, Any]:
    """ok and milliseconds, or why not: "timeout" or the error's type (never its message, which may carry
    a URL with a password)."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout:g} s"}
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@router.get("/readyz", responses={503: {"description": "a dependency is down; `down` names it"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers `SELECT 1` and Temporal answers GetSystemInfo, each within
    CLARION_READY_TIMEOUT_S. 200 with what was checked, else 503 naming what is down."""
    state = request.app.state
    timeout = state.settings.ready_timeout_s

    def database() -> None:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def temporal() -> None:
        client = await state.temporal()
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=timeout))

    names = ("database", "temporal")
    results = await asyncio.gather(_check(lambda: asyncio.to_thread(database), timeout),
                                   _check(temporal, timeout))
    checks = dict(zip(names, results, strict=True))
    down = [name for name, result in checks.items() if not result["ok"]]
    return JSONResponse({"status": "unavailable" if down else "ready", "down": down, "checks": checks},
                        status_code=503 if down else 200, headers={"Cache-Control": "no-store"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus' text format; served unless CLARION_API_METRICS=false."""
    if not request.app.state.settings.api_metrics:
        raise HTTPException(404, "metrics are not served on the API port (CLARION_API_METRICS)")
    body, content_type = metrics_body()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
