"""The members' preference center at ``/p/{token}`` (the link in every message; ``PREFERENCES`` token with
``{"m": member_id}``). GET shows the page and changes nothing (mail scanners and browsers prefetch links);
POST to the same URL acts, by the form's ``action``:

    save             the boxes and quiet hours: only what changed is written (consent.preferences.save),
                     then 303 to ``?done=saved`` (``&confirm=email`` when a confirmation was queued);
                     bad quiet hours → 422, the page again with the message next to the field, nothing saved
    remove_device    forget one push device → 303 ``?done=removed``
    link_telegram    a one-time deep link to the program's bot, shown on the page (a link, not a redirect:
                     ``form-action 'self'`` forbids a form from landing on another site)
    unsubscribe_all  ``*`` revoked on every channel → 303 ``?done=unsubscribed``

``save`` and ``unsubscribe_all`` carry the wording version and hash the page showed; when the program's
wording changed meanwhile the page comes back (409) with the new text and nothing is saved, so a ledger
row never claims a text the member did not see. A tampered, expired, other-purpose or unknown token and
an erased member all get the same 404 page. Nothing here logs personal data.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import EngineDep, SignerDep
from app.confirmations import wake_soon
from app.pages import CONTENT_SECURITY_POLICY, render_not_found, render_preferences
from channels.telegram import deep_link
from consent import preferences
from consent.confirmations import Proof
from consent.tokens import PREFERENCES, BadToken, Signer
from storage.db import session_scope
from storage.tables import ConsentSource

router = APIRouter(tags=["members"])

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",          # the token is in the URL: never hand it to another site
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_DONE = {"saved", "removed", "unsubscribed"}
_ACTIONS = {"save", "remove_device", "link_telegram", "unsubscribe_all"}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _not_found() -> HTMLResponse:
    return _html(render_not_found(), 404)


def _member_id(signer: Signer, token: str) -> int | None:
    try:
        body = signer.verify(PREFERENCES, token)
    except BadToken:
        return None
    member_id = body.get("m")
    return member_id if isinstance(member_id, int) and not isinstance(member_id, bool) else None


@router.get("/p/{token}", response_class=HTMLResponse)
def preference_center(token: str, engine: EngineDep, signer: SignerDep, done: str | None = None,
                      confirm: str | None = None) -> HTMLResponse:
    member_id = _member_id(signer, token)
    if member_id is None:
        return _not_found()
    with Session(engine) as s:
        view = preferences.load(session=s, member_id=member_id)
    if view is None:
        return _not_found()
    return _html(render_preferences(view, notices=[done] if done in _DONE else [],
                                    confirmations=(confirm or "").split(",")[:4]))


@router.post("/p/{token}", response_class=HTMLResponse)
async def act(token: str, request: Request, engine: EngineDep, signer: SignerDep) -> Response:
    member_id = _member_id(signer, token)
    if member_id is None:
        return _not_found()
    form = {k: v for k, v in (await request.form()).multi_items() if isinstance(v, str)}
    proof = Proof(source=ConsentSource.web, ip=request.client.host if request.client else None,
                  user_agent=(request.headers.get("user-agent") or "")[:512] or None,
                  wording_version=form.get("wording_version") or None, text_hash=form.get("text_hash") or None)
    response = await run_in_threadpool(_act, engine, member_id, form, proof, request.url.path)
    if "confirm=" in (response.headers.get("location") or ""):   # a double opt-in confirmation was queued
        await wake_soon(request.app.state)
    return response


def _act(engine: Engine, member_id: int, form: dict[str, str], proof: Proof, path: str) -> Response:
    """One POST, one transaction: read the page as it stands (the member's row locked), act, commit."""
    action = form.get("action")
    action = action if action in _ACTIONS else "save"
    with session_scope(engine) as s:
        view = preferences.load(session=s, member_id=member_id, for_update=True)
        if view is None:
            return _not_found()
        if action in ("save", "unsubscribe_all") and not preferences.wording_is_current(view, proof):
            return _html(render_preferences(view, wording_changed=True), 409)
        if action == "unsubscribe_all":
            preferences.unsubscribe_all(session=s, view=view, proof=proof)
            return _see(path, "unsubscribed")
        if action == "remove_device":
            device = form.get("device", "")
            removed = device.isdigit() and len(device) < 16 and preferences.remove_device(session=s, view=view, device_id=int(device))
            return _see(path, "removed" if removed else None)
        if action == "link_telegram":
            link = preferences.telegram_link(session=s, view=view,
                                             topics=[k[3:] for k in form if k.startswith("tg.")])
            if link is None:
                return _see(path, None)
            return _html(render_preferences(view, deep_link=deep_link(link.bot_username, link.token)))
        choices, problems = preferences.read_form(view, form)
        if problems:
            return _html(render_preferences(preferences.with_choices(view, choices), problems=problems), 422)
        result = preferences.save(session=s, view=view, choices=choices, proof=proof)
    return _see(path, "saved", result.confirmation_channels)


def _see(path: str, done: str | None, confirm: tuple[str, ...] = ()) -> RedirectResponse:
    """Post/Redirect/Get: reloading the page shows it again instead of posting twice."""
    query = f"?done={done}" if done else ""
    if confirm:
        query += f"&confirm={','.join(confirm)}"
    return RedirectResponse(path + query, status_code=303, headers=HEADERS)
