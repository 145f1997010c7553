"""The FastAPI application: API routers, the one-click unsubscribe page, error mapping, OpenAPI at /docs;
security headers on every answer (app.api.headers) and rate limits on the public endpoints (app.api.ratelimit)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
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
    # the last added runs first: requests are counted (429s too), then get their headers, then are limited
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


