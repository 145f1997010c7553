"""Opens and clicks: the open pixel ``/t/o/{token}`` and the click redirect ``/t/c/{token}``.

The tokens are sealed (``analytics.links``): the delivery, and for a click the URL and the link's label, come
only from them, so the redirect goes nowhere we did not write into a message. A tampered, expired, unknown or
other-purpose token gets the same 404 (the pixel's bytes or a small page; never a Location). A request is a
person's or a machine's (``analytics.machine``): a machine's is recorded apart (``opened_machine``,
``clicked_machine``) with the reason in ``detail``. Each is written once (``analytics.responses.record``):
one open and one machine open per delivery, one click and one machine click per link of a delivery.

Nothing here touches consent: following a tracked link, even to our own unsubscribe page, changes nothing
(that page's GET only shows a button). No cookies; nothing personal or the token is logged.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analytics import machine, responses
from analytics.links import safe_target
from app.api.deps import EngineDep, SignerDep
from app.api.small_page import small_page
from consent.tokens import TRACK_CLICK, TRACK_OPEN, BadToken, Signer
from storage.db import session_scope
from storage.tables import Delivery, DeliveryStatus, ResponseKind, utcnow

router = APIRouter(tags=["tracking"], include_in_schema=False)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")  # 1×1, transparent
PIXEL_HEADERS = {"Cache-Control": "no-store, private", "X-Content-Type-Options": "nosniff",
                 "X-Robots-Tag": "noindex"}
REDIRECT_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
MAX_TOKEN = 2048


def _pixel(status: int = 200) -> Response:
    return Response(PIXEL, status_code=status, media_type="image/gif", headers=PIXEL_HEADERS)


def _no_link() -> HTMLResponse:
    return small_page("en", "Link not found", "<p>This link is not valid. It may have expired.</p>", 404)


def _read(signer: Signer, purpose: str, token: str) -> dict | None:
    if not token or len(token) > MAX_TOKEN:
        return None
    try:
        body = signer.verify(purpose, token)
    except BadToken:
        return None
    return body if isinstance(body.get("d"), int) else None


def _seconds_since_sent(row, now: datetime) -> float | None:
    """How long after sending this request came; 0 while the message is still being sent."""
    if row.sent_at is None:
        return 0.0 if row.status == DeliveryStatus.sending else None
    sent = row.sent_at if row.sent_at.tzinfo else row.sent_at.replace(tzinfo=UTC)
    return max(0.0, (now - sent).total_seconds())


def _record(engine: Engine, request: Request, *, delivery_id: int, kind: machine.Kind,
            label: str | None = None) -> None:
    """Record the open or click (a person's or a machine's) once; nothing when the delivery is gone."""
    now = utcnow()
    with Session(engine) as s:
        row = s.execute(select(Delivery.id, Delivery.campaign_id, Delivery.status, Delivery.sent_at, Delivery.channel)
                        .where(Delivery.id == delivery_id)).first()  # type: ignore[arg-type]
    if row is None:
        return
    reason = machine.classify(request.method, request.headers.get("user-agent"),
                              request.client.host if request.client else None,
                              _seconds_since_sent(row, now), kind, row.channel)
    if kind == "open":
        response_kind = ResponseKind.opened_machine if reason else ResponseKind.opened
        event_id = f"open-m:{delivery_id}" if reason else f"open:{delivery_id}"
        detail = reason
    else:
        response_kind = ResponseKind.clicked_machine if reason else ResponseKind.clicked
        event_id = f"click-m:{delivery_id}:{label}" if reason else f"click:{delivery_id}:{label}"
        detail = f"{label};{reason}" if reason else label
    with session_scope(engine) as s:
        responses.record(s, delivery_id=delivery_id, kind=response_kind, at=now, event_id=event_id,
                         detail=detail, campaign_id=row.campaign_id)


@router.api_route("/t/o/{token:path}", methods=["GET", "HEAD"])
def open_pixel(token: str, request: Request, engine: EngineDep, signer: SignerDep) -> Response:
    """The open pixel: a 1×1 transparent GIF; the delivery's open recorded once (a person's or a machine's)."""
    body = _read(signer, TRACK_OPEN, token)
    if body is None:
        return _pixel(404)
    _record(engine, request, delivery_id=body["d"], kind="open")
    return _pixel()


@router.api_route("/t/c/{token:path}", methods=["GET", "HEAD"])
def click(token: str, request: Request, engine: EngineDep, signer: SignerDep) -> Response:
    """The click redirect: 302 to the URL sealed in the token; the click recorded once per link."""
    body = _read(signer, TRACK_CLICK, token)
    url, label = (body.get("u"), body.get("l")) if body else (None, None)
    if not isinstance(url, str) or not isinstance(label, str) or not safe_target(url):
        return _no_link()
    _record(engine, request, delivery_id=body["d"], kind="click", label=label)  # type: ignore[index]
    response = RedirectResponse(url, status_code=302, headers=REDIRECT_HEADERS)
    if response.headers["location"].startswith("//"):   # never scheme-relative (safe_target makes it absolute)
        return _no_link()
    return response
