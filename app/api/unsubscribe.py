"""One-click unsubscribe (RFC 8058): POST revokes the topic; GET only shows a page with a button.

No login, no redirect. A tampered, expired or unknown token always gets the same 404 page.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlmodel import Session

from analytics import responses
from app.api.deps import EngineDep, SignerDep
from app.api.small_page import small_page
from consent import ledger
from consent.tokens import UNSUBSCRIBE, BadToken
from storage.db import session_scope
from storage.tables import (
    Campaign,
    ConsentAction,
    ConsentSource,
    ConsentState,
    Delivery,
    Program,
    ResponseKind,
    utcnow,
)

router = APIRouter(tags=["members"], include_in_schema=True)

TEXT = {
    "en": {"title": "Unsubscribe", "ask": "Stop receiving “{topic}” emails from {program}?",
           "button": "Unsubscribe", "done": "You are unsubscribed from “{topic}” emails from {program}.",
           "bad": "This link is not valid. It may have expired."},
    "ru": {"title": "Отписка", "ask": "Больше не получать письма «{topic}» от {program}?",
           "button": "Отписаться", "done": "Вы отписаны от писем «{topic}» от {program}.",
           "bad": "Ссылка недействительна или устарела."},
}


def _page(lang: str, body: str, status: int = 200) -> HTMLResponse:
    return small_page(lang, TEXT.get(lang, TEXT["en"])["title"], body, status)


def _lookup(engine, signer, token: str) -> tuple[Delivery, Campaign, Program] | None:
    try:
        body = signer.verify(UNSUBSCRIBE, token)
    except BadToken:
        return None
    with Session(engine) as s:
        row = s.execute(select(Delivery, Campaign, Program)
                        .join(Campaign, Campaign.id == Delivery.campaign_id)
                        .join(Program, Program.id == Campaign.program_id)
                        .where(Delivery.id == int(body.get("d", 0)))).first()
    return tuple(row) if row else None  # type: ignore[return-value]


def _lang(delivery: Delivery) -> str:
    return (delivery.locale or "en").split("-")[0]


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, engine: EngineDep, signer: SignerDep) -> HTMLResponse:
    found = _lookup(engine, signer, token)
    if found is None:
        return _page("en", f"<p>{escape(TEXT['en']['bad'])}</p>", 404)
    delivery, campaign, program = found
    lang = _lang(delivery)
    t = TEXT.get(lang, TEXT["en"])
    ask = t["ask"].format(topic=campaign.topic, program=program.name)
    return _page(lang, f"<h1>{escape(t['title'])}</h1><p>{escape(ask)}</p>"
                       f'<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                       f'<button type="submit">{escape(t["button"])}</button></form>')


@router.post("/u/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, request: Request, engine: EngineDep, signer: SignerDep) -> HTMLResponse:
    """Revoke the campaign's topic on email for this member (idempotent). Urlencoded, multipart or empty body."""
    found = _lookup(engine, signer, token)
    if found is None:
        return _page("en", f"<p>{escape(TEXT['en']['bad'])}</p>", 404)
    delivery, campaign, program = found
    with session_scope(engine) as s:
        ledger.lock_members(session=s, member_ids=[delivery.member_id])    # a provider posting twice at once
        current = s.get(ConsentState, (delivery.member_id, "email", campaign.topic))
        if current is None or current.status != ConsentAction.revoked:
            ledger.record(session=s, program_id=program.id or 0, acts=[ledger.ConsentAct(
                member_id=delivery.member_id, channel="email", topic=campaign.topic,
                action=ConsentAction.revoked, source=ConsentSource.unsubscribe,
                ip=request.client.host if request.client else None,
                user_agent=(request.headers.get("user-agent") or "")[:512] or None,
                campaign_id=campaign.id)])
            responses.record(s, delivery_id=delivery.id or 0, kind=ResponseKind.unsubscribed, at=utcnow(),
                             event_id=f"unsub:{delivery.id}", campaign_id=campaign.id)
    lang = _lang(delivery)
    t = TEXT.get(lang, TEXT["en"])
    return _page(lang, f"<p>{escape(t['done'].format(topic=campaign.topic, program=program.name))}</p>")
