"""Security headers on every answer of the API process, in one place (README "Security").

    every answer   X-Content-Type-Options: nosniff
                   X-Frame-Options: DENY, and CSP frame-ancestors 'none' (added to a route's own policy)
                   Referrer-Policy: no-referrer (a route may set its own: the dashboard's same-origin)
                   Content-Security-Policy: DEFAULT_CSP unless the route set its own (the pages allow their
                   inline style sheet by its hash; the API docs their scripts by a nonce)
                   Strict-Transport-Security: max-age=CLARION_HSTS_MAX_AGE_S when the public base URL is https

No policy here allows a script without a nonce: member pages and the dashboard run none at all.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.datastructures import MutableHeaders

from app.settings import Settings

DEFAULT_CSP = "default-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"


class SecurityHeaders:
    """ASGI middleware: the headers above on each response start, a route's own values kept."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        https = settings.base_url.startswith("https://") and settings.hsts_max_age_s > 0
        self.hsts = f"max-age={settings.hsts_max_age_s}" if https else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.apply(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def apply(self, headers: MutableHeaders) -> None:
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers.setdefault("Referrer-Policy", "no-referrer")
        csp = headers.get("Content-Security-Policy")
        if csp is None:
            headers["Content-Security-Policy"] = DEFAULT_CSP
        elif "frame-ancestors" not in csp:
            headers["Content-Security-Policy"] = csp.rstrip("; ") + "; frame-ancestors 'none'"
        if self.hsts:
            headers.setdefault("Strict-Transport-Security", self.hsts)


def swagger_ui(openapi_url: str, title: str) -> HTMLResponse:
    """FastAPI's Swagger UI page with its two scripts (the bundle from its CDN and the inline start) allowed by
    a nonce of this answer only; its style sheet from the same CDN (Swagger UI sets inline styles too)."""
    nonce = secrets.token_urlsafe(18)
    page = get_swagger_ui_html(openapi_url=openapi_url, title=title)
    body = page.body.decode().replace("<script", f'<script nonce="{nonce}"')
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src https://cdn.jsdelivr.net 'unsafe-inline'; "
           "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; base-uri 'none'; "
           "form-action 'self'; frame-ancestors 'none'")
    return HTMLResponse(body, headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"})
