"""Double opt-in: the page a confirmation link opens. GET shows the request and a button (mail scanners and
link prefetchers open links: they must not confirm anything); POST confirms, with its proof (the consent
wording shown on this page, its hash, the ip and user agent). A tampered, expired or unknown link gets the
same 404 page; a request confirmed before says so again and writes nothing."""

from __future__ import annotations

import hashlib
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from app.api.deps import EngineDep, SignerDep
from app.api.small_page import small_page
from campaigns.rules import localized, program_rules
from consent.confirmations import Proof, confirm
from consent.tokens import CONFIRM_EMAIL, BadToken
from storage.db import session_scope
from storage.tables import Confirmation, ConsentSource, Member, Program

router = APIRouter(tags=["members"])

TEXT = {
    "en": {"title": "Confirm your subscription", "ask": "Confirm that you want messages from {program}.",
           "button": "Confirm", "done": "Thank you: your subscription to {program} is confirmed.",
           "bad": "This link is not valid. It may have expired."},
    "ru": {"title": "Подтверждение подписки", "ask": "Подтвердите, что хотите получать сообщения {program}.",
           "button": "Подтвердить", "done": "Спасибо: подписка на {program} подтверждена.",
           "bad": "Ссылка недействительна или устарела."},
}
def _page(lang: str, body: str, status: int = 200) -> HTMLResponse:
    return small_page(lang, TEXT.get(lang, TEXT["en"])["title"], body, status)


def _find(engine, signer, token: str) -> tuple[Confirmation, Program, Member] | None:  # noqa: ANN001
    try:
        body = signer.verify(CONFIRM_EMAIL, token)
    except BadToken:
        return None
    with Session(engine) as s:
        row = s.get(Confirmation, int(body.get("c", 0)))
        if row is None:
            return None
        program, member = s.get(Program, row.program_id), s.get(Member, row.member_id)
    if program is None or member is None or member.erased_at is not None:
        return None
    return row, program, member


def _wording(program: Program, lang: str) -> tuple[str, str, str]:
    """(text shown, version, SHA-256 of the text)."""
    w = program_rules(program.settings).consent_wording
    # as the preference center fills it in (consent.preferences.load): braces in the wording are text, and the
    # same wording hashes the same on both pages
    text = (localized(w.text, lang) or "").replace("{program}", program.name)
    return text, w.version, hashlib.sha256(text.encode()).hexdigest()


def _lang(member: Member) -> str:
    return (member.locale or "en").split("-")[0]


@router.get("/c/{token}", response_class=HTMLResponse)
def confirmation_page(token: str, engine: EngineDep, signer: SignerDep) -> HTMLResponse:
    found = _find(engine, signer, token)
    if found is None:
        return _page("en", f"<p>{escape(TEXT['en']['bad'])}</p>", 404)
    row, program, member = found
    lang = _lang(member)
    t = TEXT.get(lang, TEXT["en"])
    if row.status == "confirmed":
        return _page(lang, f"<p>{escape(t['done'].format(program=program.name))}</p>")
    text, _, _ = _wording(program, lang)
    return _page(lang, f"<h1>{escape(t['title'])}</h1><p>{escape(t['ask'].format(program=program.name))}</p>"
                       f'<p class="wording">{escape(text)}</p>'
                       f'<form method="post"><button type="submit">{escape(t["button"])}</button></form>')


@router.post("/c/{token}", response_class=HTMLResponse)
def confirm_subscription(token: str, request: Request, engine: EngineDep, signer: SignerDep) -> HTMLResponse:
    found = _find(engine, signer, token)
    if found is None:
        return _page("en", f"<p>{escape(TEXT['en']['bad'])}</p>", 404)
    row, program, member = found
    lang = _lang(member)
    _, version, digest = _wording(program, lang)
    with session_scope(engine) as s:
        done = confirm(session=s, confirmation_id=row.id or 0, proof=Proof(
            source=ConsentSource.web, wording_version=version, text_hash=digest,
            ip=request.client.host if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:512] or None))
    if done is None:
        return _page("en", f"<p>{escape(TEXT['en']['bad'])}</p>", 404)
    t = TEXT.get(lang, TEXT["en"])
    return _page(lang, f"<p>{escape(t['done'].format(program=program.name))}</p>")
