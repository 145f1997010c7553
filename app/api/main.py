"""The FastAPI application: API routers, the one-click unsubscribe page, error mapping, OpenAPI at /docs;
security headers on every answer (app.api.headers), rate limits on the public endpoints (app.api.ratelimit)
and a limit on every request body (BodyLimit, here)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from temporalio.client import Client

from app import errors
from app.api import (
    campaigns,
    channels,
    confirm,
    dashboard,
    events,
    inbox,
    member_rights,
    members,
    ops,
    pos,
    preferences,
    programs,
    reports,
    suppressions,
    templates,
    templates_import,
    tracking,
    unsubscribe,
    webhooks,
)
from app.api.headers import SecurityHeaders, swagger_ui
from app.api.ratelimit import RateLimitMiddleware, RateLimits
from app.observability import RequestMetrics, traced
from app.settings import Settings
from app.temporal import connect
from app.worker import signer, stored_renderer
from storage.db import make_engine
from templates.importer import MAX_ZIP_BYTES

KB, MB = 1024, 1024 * 1024
# the routes whose bodies may be larger than CLARION_MAX_BODY_BYTES: (method, path) → (their limit, a hint).
# A route may also check a smaller limit of its own (POST /api/v1/events: 64 KB).
LARGER_BODIES: list[tuple[str, re.Pattern[str], int, str]] = [
    ("POST", re.compile(r"/api/v1/events/batch"), events.BATCH_MAX_BYTES,
     f"split it into batches of at most {events.BATCH_MAX} events"),
    ("POST", re.compile(r"/api/v1/members/bulk"), 8 * MB,
     f"split it into requests of at most {members.BULK_MAX} members"),
    # the zip (the importer checks its own limit) and the multipart form around it
    ("POST", re.compile(r"/api/v1/templates/.+/versions"), MAX_ZIP_BYTES + MB,
     f"a template's zip may be at most {MAX_ZIP_BYTES // MB} MB"),
]
DEFAULT_HINT = "the limit set by CLARION_MAX_BODY_BYTES"


def _size(n: int) -> str:
    return f"{n // MB} MB" if n % MB == 0 else f"{n // KB} KB" if n % KB == 0 else f"{n} bytes"


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its limit (an HTTPException, so that FastAPI's body parsing
    lets it through as it is); BodyLimit answers 413 in place of whatever the app then sends."""


class BodyLimit:
    """ASGI middleware: a request body over its limit is refused with 413 naming ``body`` and the limit. The
    limit is CLARION_MAX_BODY_BYTES, or a route's own when it is larger (LARGER_BODIES). A Content-Length over
    it is refused before anything is read; the bytes are also counted as they arrive, so a body sent in chunks
    (no Content-Length), or longer than it said, stops at the limit: the app never holds more than that."""

    def __init__(self, app: Any, *, default: int) -> None:
        self.app = app
        self.default = default

    def limit_for(self, scope: dict[str, Any]) -> tuple[int, str]:
        """(limit, hint) of the request's route: looked up only for a body over the default."""
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path
        for method, pattern, limit, hint in LARGER_BODIES:
            if limit > self.default and scope["method"] == method and pattern.fullmatch(path):
                return limit, hint
        return self.default, DEFAULT_HINT

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, hint, looked = self.default, DEFAULT_HINT, False
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > limit:
            (limit, hint), looked = self.limit_for(scope), True
            if int(length) > limit:
                await self.refuse(send, limit, hint)
                return
        size, over, started = 0, False, False

        async def counted() -> dict[str, Any]:
            nonlocal size, over, limit, hint, looked
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit and not looked:
                    (limit, hint), looked = self.limit_for(scope), True
                if size > limit:
                    over = True
                    raise _BodyTooLarge(413)
            return message

        async def unless_over(message: dict[str, Any]) -> None:
            nonlocal started
            if over:                 # the app's answer to a body it could not read: the 413 below replaces it
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self.refuse(send, limit, hint)

    @staticmethod
    async def refuse(send: Any, limit: int, hint: str) -> None:
        body = json.dumps({"error": "payloadtoolarge", "field": "body", "limit": limit,
                           "message": f"the request body is over {_size(limit)} ({limit} bytes): {hint}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, *, engine: Engine | None = None, client: Client | None = None) -> FastAPI:
    lock = asyncio.Lock()
    holder: dict[str, Client] = {"client": traced(client, settings)} if client else {}

    async def temporal() -> Client:
        if "client" not in holder:
            async with lock:
                if "client" not in holder:
                    holder["client"] = traced(await connect(settings), settings)
        return holder["client"]

    # the docs page is ours (below): FastAPI's runs an inline script a strict CSP refuses; no ReDoc, no OAuth2
    app = FastAPI(title="Clarion", version="0.1.0", docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Campaign orchestrator for loyalty programs. Authenticate with "
                              "`Authorization: Bearer <API key>` (create one with `clarion keys create`).")
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.db_url)
    app.state.renderer = stored_renderer(app.state.engine, settings)
    app.state.signer = signer(settings)
    app.state.temporal = temporal
    app.state.rate_limits = RateLimits.from_settings(settings)
    errors.install(app)
    # the last added runs first: requests are counted (429s and 413s too), then get their headers, then are
    # limited in rate, then in body size
    app.add_middleware(BodyLimit, default=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, limits=app.state.rate_limits)
    app.add_middleware(SecurityHeaders, settings=settings)
    app.add_middleware(RequestMetrics)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return swagger_ui(app.openapi_url or "/openapi.json", f"{app.title} API")

    app.include_router(ops.router)
    app.include_router(members.router)
    app.include_router(events.router)
    app.include_router(campaigns.router)
    app.include_router(reports.router)
    app.include_router(programs.router)
    app.include_router(unsubscribe.router)
    app.include_router(pos.router)
    app.include_router(inbox.router)
    app.include_router(channels.router)
    app.include_router(webhooks.router)
    app.include_router(preferences.router)
    app.include_router(member_rights.router)
    app.include_router(confirm.router)
    app.include_router(suppressions.router)
    app.include_router(templates.router)
    app.include_router(templates_import.router)
    app.include_router(tracking.router)
    app.include_router(dashboard.router)
    return app


