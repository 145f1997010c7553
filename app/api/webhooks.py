"""Inbound provider traffic: Twilio status callbacks and incoming SMS / WhatsApp, Telegram bot updates.

Every request is authenticated before anything is read into the ledger:
- Twilio: ``X-Twilio-Signature`` over the exact public URL and the form fields, with the auth token of the
  program account named by ``AccountSid`` (403 otherwise: wrong or missing signature, a tampered
  parameter, another URL, an unknown account);
- Telegram: the ``X-Telegram-Bot-Api-Secret-Token`` header set with ``setWebhook`` (403 otherwise).

What the traffic means is decided by the adapters (parse_status, parse_inbound, parse_update) and applied by
the domain (analytics.tracking, consent.keywords, consent.links); these routes only connect them. Providers
retry a callback that fails, so every effect is idempotent (provider event ids, forward-only statuses).
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select, update
from sqlmodel import Session

from analytics.tracking import apply_status, keep_early, record_reply
from app.api.deps import EngineDep, SettingsDep
from channels.accounts import parse_account
from channels.sms_twilio import parse_inbound, parse_status, verify_signature
from channels.telegram import parse_update, verify_secret
from channels.whatsapp_twilio import REVOKING_CODES
from consent.confirmations import Proof, confirm
from consent.keywords import apply_keyword, grant_topics
from consent.links import redeem
from storage.db import session_scope
from storage.tables import (
    ChannelAccount,
    Confirmation,
    ConsentSource,
    Member,
    Program,
    ResponseKind,
    utcnow,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
TWILIO_SIGNATURE = "X-Twilio-Signature"
TELEGRAM_SECRET = "X-Telegram-Bot-Api-Secret-Token"

HELP = {
    "en": "{program}: promotional messages. Reply STOP to opt out, START to opt back in.",
    "ru": "{program}: рекламные сообщения. Отказ: СТОП. Возобновить: START.",
}
STOPPED = {
    "en": "{program}: you will get no more messages here. Reply START to opt back in.",
    "ru": "{program}: вы отписаны от сообщений. Возобновить: START.",
}
STARTED = {
    "en": "{program}: you will get our messages again. Reply STOP to opt out.",
    "ru": "{program}: вы снова подписаны. Отказ: СТОП.",
}


def _twiml(message: str | None = None) -> Response:
    body = f"<Message>{escape(message)}</Message>" if message else ""
    return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>',
                    media_type="application/xml")


def _forbidden(field: str, what: str) -> JSONResponse:
    return JSONResponse({"error": "forbidden", "message": f"{field}: {what}", "field": field}, status_code=403)


def _twilio_refused(request: Request) -> JSONResponse:
    if not request.headers.get("x-twilio-signature"):
        return _forbidden(TWILIO_SIGNATURE, "missing: Twilio signs every request it sends")
    return _forbidden(TWILIO_SIGNATURE, "does not sign this URL and form for a Twilio account of this deployment")


def _public_url(request: Request, base_url: str) -> str:
    """The URL the provider called, as it signed it: the public base URL, the path and the query."""
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base_url}{request.url.path}{query}"


def _twilio_accounts(s: Session, account_sid: str) -> list[tuple[ChannelAccount, Any]]:
    rows = s.scalars(select(ChannelAccount).where(ChannelAccount.provider == "twilio")).all()
    out = []
    for row in rows:
        if row.config.get("account_sid") == account_sid:
            out.append((row, parse_account(row.channel, row.provider, row.config)))
    return out


async def _verified_twilio(request: Request, engine: Any, base_url: str) -> tuple[dict[str, str], list[ChannelAccount]] | None:
    form = {k: str(v) for k, v in (await request.form()).items()}
    with Session(engine) as s:
        accounts = _twilio_accounts(s, form.get("AccountSid", ""))
    if not accounts:
        return None
    url = _public_url(request, base_url)
    signature = request.headers.get("x-twilio-signature")
    tokens = {cfg.auth_token.get_secret_value() for _, cfg in accounts}
    if not any(verify_signature(url, form, signature, token) for token in tokens):
        return None
    return form, [row for row, _ in accounts]


@router.post("/twilio/status", include_in_schema=True)
async def twilio_status(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """A message's delivery report from Twilio (SMS and WhatsApp)."""
    verified = await _verified_twilio(request, engine, settings.base_url)
    if verified is None:
        return _twilio_refused(request)
    form, accounts = verified
    try:
        event = parse_status(form)
    except ValueError as exc:
        return JSONResponse({"error": "invalid", "message": str(exc)}, status_code=422)
    with session_scope(engine) as s:
        applied = apply_status(session=s, event=event, channels={a.channel for a in accounts},
                               program_ids={a.program_id for a in accounts}, revoking_codes=REVOKING_CODES)
        if not applied.found:  # the message id may not be recorded yet: applied when it is
            keep_early(session=s, event=event)
    return JSONResponse({"found": applied.found, "duplicate": applied.duplicate, "status": applied.status})


@router.post("/twilio/inbound")
async def twilio_inbound(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """A message a member sent to one of our numbers: keywords change consent, HELP is answered, any other
    text is a reply. A WhatsApp message opens the member's 24 h window."""
    verified = await _verified_twilio(request, engine, settings.base_url)
    if verified is None:
        return _twilio_refused(request)
    form, accounts = verified
    channel = "whatsapp" if form.get("From", "").startswith("whatsapp:") else "sms"
    event = parse_inbound(form)
    program_ids = {a.program_id for a in accounts if a.channel == channel}
    now = utcnow()
    with session_scope(engine) as s:
        members = list(s.execute(select(Member.id, Member.program_id, Member.locale).where(
            Member.program_id.in_(program_ids), Member.phone == event.address)))  # type: ignore[attr-defined]
        by_program: dict[int, list[int]] = {}
        for m in members:
            by_program.setdefault(m.program_id, []).append(m.id)
        if channel == "whatsapp" and members:
            s.execute(update(Member).where(Member.id.in_([m.id for m in members]))  # type: ignore[union-attr]
                      .values(whatsapp_inbound_at=now))
        confirmed = _confirm_by_reply(s, [m.id for m in members], channel, event.text) if event.kind == "start" else 0
        for program_id, ids in by_program.items():
            if not confirmed:
                apply_keyword(session=s, program_id=program_id, member_ids=ids, channel=channel, kind=event.kind,
                              source=ConsentSource.sms_keyword)
        if event.kind in ("reply", "stop"):
            record_reply(session=s, member_ids=[m.id for m in members], channel=channel, event_id=event.event_id,
                         now=now, kind=ResponseKind.replied if event.kind == "reply" else ResponseKind.unsubscribed)
        program = s.get(Program, next(iter(by_program))) if by_program else None
    lang = ((members[0].locale or "en") if members else "en").split("-")[0]
    name = program.name if program else ""
    texts = {"help": HELP, "stop": STOPPED, "start": STARTED}.get(event.kind)
    if texts is None:
        return _twiml()
    return _twiml(texts.get(lang, texts["en"]).format(program=name).lstrip(": "))


def _confirm_by_reply(s: Session, member_ids: list[int], channel: str, text: str) -> int:
    """YES to a double opt-in SMS confirms the member's open request (its proof: the reply itself)."""
    if text.strip().casefold() != "yes" or not member_ids:
        return 0
    open_ids = s.scalars(select(Confirmation.id).where(Confirmation.member_id.in_(member_ids),  # type: ignore[attr-defined]
                                                      Confirmation.channel == channel,
                                                      Confirmation.status.in_(("pending", "sent", "in_doubt"))))  # type: ignore[attr-defined]
    return sum(1 for cid in open_ids.all()
               if confirm(session=s, confirmation_id=cid, proof=Proof(source=ConsentSource.sms_keyword)) is not None)


@router.post("/telegram/{program_key}")
async def telegram_update(program_key: str, request: Request, engine: EngineDep) -> Response:
    """An update for the program's bot: ``/start <link>`` ties the chat to the member and grants the link's
    topics; ``/stop`` or blocking the bot revokes Telegram; any other text is a reply."""
    with Session(engine) as s:
        found = s.execute(select(ChannelAccount, Program).join(Program, Program.id == ChannelAccount.program_id)
                          .where(Program.key == program_key, ChannelAccount.channel == "telegram")).first()
    if found is None:
        return _forbidden("program", "no Telegram bot is set up for this program")
    account, program = found
    config = parse_account("telegram", account.provider, account.config)
    presented = request.headers.get("x-telegram-bot-api-secret-token")
    if not verify_secret(presented, config.webhook_secret.get_secret_value()):
        return _forbidden(TELEGRAM_SECRET, "does not match the bot's webhook secret" if presented else
                          "missing: register the webhook with `clarion channels telegram-webhook PROGRAM`")
    try:
        data = await request.json()
    except ValueError:
        return JSONResponse({"error": "invalid", "message": "the body is not JSON"}, status_code=422)
    event = parse_update(data) if isinstance(data, dict) else None
    if event is None:
        return JSONResponse({"ok": True, "handled": None})
    program_id = program.id or 0
    with session_scope(engine) as s:
        if event.kind == "start" and event.token:
            link = redeem(session=s, token=event.token, program_id=program_id, channel="telegram")
            if link is None:
                return JSONResponse({"ok": True, "handled": "start", "linked": False})
            # the chat moves to this member (a chat id belongs to one member of the program)
            s.execute(update(Member).where(Member.program_id == program_id,  # type: ignore[arg-type]
                                           Member.telegram_chat_id == event.address, Member.id != link.member_id)
                      .values(telegram_chat_id=None))
            s.execute(update(Member).where(Member.id == link.member_id)  # type: ignore[arg-type]
                      .values(telegram_chat_id=event.address, updated_at=utcnow()))
            grant_topics(session=s, program_id=program_id, member_id=link.member_id, channel="telegram",
                         topics=link.topics, source=ConsentSource.telegram)
            return JSONResponse({"ok": True, "handled": "start", "linked": True})
        member_ids = list(s.scalars(select(Member.id).where(Member.program_id == program_id,
                                                            Member.telegram_chat_id == event.address)))
        if event.kind == "stop":
            apply_keyword(session=s, program_id=program_id, member_ids=member_ids, channel="telegram",
                          kind="stop", source=ConsentSource.telegram)
            record_reply(session=s, member_ids=member_ids, channel="telegram", event_id=event.event_id,
                         kind=ResponseKind.unsubscribed)
        elif event.kind == "reply":
            record_reply(session=s, member_ids=member_ids, channel="telegram", event_id=event.event_id)
    return JSONResponse({"ok": True, "handled": event.kind})

