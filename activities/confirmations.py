"""Double opt-in confirmations: the side effect of ``ConfirmationSender``.

``send_confirmations`` takes the oldest pending requests (``consent.confirmations``), claims them
(``sending``, committed), sends each through the program's channel (email: a sealed link to ``/c/{token}``;
SMS: "reply YES") and records ``sent`` / ``in_doubt`` / ``failed``. Like a delivery, a request left
``sending`` by a crash is ``in_doubt`` and never sent again (one sender runs at a time: the workflow is a
singleton), and a transient failure leaves it pending for the next round. Requests older than the link's
life expire. The message is a service message: it needs no marketing consent, but a channel the member
blocked (revoked, suppressed) gets nothing.

Only requests still ``pending`` when they are claimed are sent (``UPDATE ... WHERE status = 'pending'
RETURNING id``): one the member withdrew meanwhile (unsubscribed from everything, erased: ``expired``) is
never revived.

One bad request never fails the round, so the rest of the batch goes out and the workflow's retries never
meet it: a request whose message cannot be made (the template fails) or whose channel cannot be reached
(the program's account for it is broken) is ``failed`` (the log says why, by request id), never
``in_doubt``; one whose channel raised something unexpected while sending is ``in_doubt`` (it may have gone:
never sent again). What was sent is recorded even when the round is cut short (cancelled, a worker shutting
down); the requests it had not reached stay ``sending`` and become ``in_doubt``. ``more`` (go again at once)
only when the batch was full and settled something: a batch that only met transient failures waits for the
next poll instead of hammering the provider.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from temporalio import activity

from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)
from channels.registry import ChannelRegistry
from consent import ledger
from consent.confirmations import expire_old
from consent.policy import SERVICE_TOPIC, decide
from consent.tokens import CONFIRM_EMAIL, CONFIRM_EMAIL_TTL_S, Signer
from storage.db import session_scope
from storage.tables import Confirmation, Member, Program, utcnow
from templates.render import Renderer, TemplateProblem
from workflows.contracts import ConfirmationsSent, SendConfirmations

TEMPLATE = "confirm_subscription"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    id: int
    program_id: int
    program: dict[str, str]
    program_locale: str
    member_id: int
    channel: str
    address: str
    locale: str | None
    first_name: str | None


class ConfirmationActivities:
    def __init__(self, *, engine: Engine, registry: ChannelRegistry, renderer: Renderer, signer: Signer,
                 base_url: str, message_id_domain: str) -> None:
        self._engine = engine
        self._registry = registry
        self._renderer = renderer
        self._signer = signer
        self._base_url = base_url.rstrip("/")
        self._domain = message_id_domain

    def confirm_url(self, confirmation_id: int) -> str:
        token = self._signer.sign(CONFIRM_EMAIL, {"c": confirmation_id}, ttl_s=CONFIRM_EMAIL_TTL_S)
        return f"{self._base_url}/c/{token}"

    @activity.defn(name="send_confirmations")
    async def send_confirmations(self, inp: SendConfirmations) -> ConfirmationsSent:
        expired, interrupted, requests, blocked = await asyncio.to_thread(self._claim, inp.limit)
        results: dict[int, str] = {}
        try:
            for r in requests:
                results[r.id] = await self._send(r)
                activity.heartbeat(len(results))
        finally:   # cut short (cancelled): what went out is recorded, the rest stays `sending` → in_doubt
            await asyncio.to_thread(self._record, results)
        statuses = list(results.values())
        settled = blocked + len(statuses) - statuses.count("pending")
        return ConfirmationsSent(sent=statuses.count("sent"), in_doubt=interrupted + statuses.count("in_doubt"),
                                 failed=statuses.count("failed") + blocked, expired=expired,
                                 more=len(requests) + blocked >= inp.limit and settled > 0)

    def _claim(self, limit: int) -> tuple[int, int, list[_Request], int]:
        with session_scope(self._engine) as s:
            expired = expire_old(session=s)
            # one sender at a time (a singleton workflow): rows still `sending` are a crashed attempt's
            interrupted = s.execute(update(Confirmation).where(Confirmation.status == "sending")
                                    .values(status="in_doubt")).rowcount
            rows = s.execute(
                select(Confirmation.id, Confirmation.program_id, Confirmation.member_id, Confirmation.channel,
                       Confirmation.address, Member.locale, Member.first_name, Program.key, Program.name,
                       Program.default_locale)
                .join(Member, Member.id == Confirmation.member_id).join(Program, Program.id == Confirmation.program_id)
                .where(Confirmation.status == "pending").order_by(Confirmation.id).limit(limit)).all()
            requests, blocked = [], []
            for r in rows:
                states = ledger.states_for(session=s, member_ids=[r.member_id], channel=r.channel).get(r.member_id, {})
                if not r.address or not decide(states, topic=SERVICE_TOPIC, channel=r.channel).allowed:
                    blocked.append(r.id)
                    continue
                requests.append(_Request(r.id, r.program_id, {"key": r.key, "name": r.name}, r.default_locale,
                                         r.member_id, r.channel, r.address, r.locale, r.first_name))
            # only rows still pending: one expired since the SELECT (the member unsubscribed, was erased) stays so
            failed = self._move(s, blocked, "failed")
            claimed = self._move(s, [r.id for r in requests], "sending")
        return expired, interrupted, [r for r in requests if r.id in claimed], len(failed)

    @staticmethod
    def _move(s: Any, ids: list[int], status: str) -> set[int]:
        """``pending`` → ``status`` for those of ``ids`` still pending; the ids moved."""
        if not ids:
            return set()
        return set(s.scalars(update(Confirmation).where(Confirmation.id.in_(ids),  # type: ignore[union-attr]
                                                        Confirmation.status == "pending")
                             .values(status=status).returning(Confirmation.id)
                             .execution_options(synchronize_session=False)))

    def _message(self, r: _Request) -> OutboundMessage:
        locale = self._renderer.resolve_locale(TEMPLATE, r.locale, r.program_locale, channel=r.channel)
        context = {"member": {"first_name": r.first_name, "locale": r.locale}, "program": r.program,
                   "confirm_url": self.confirm_url(r.id)}
        if r.channel == "email":
            m = self._renderer.render_email(TEMPLATE, locale, context)
            return OutboundMessage(delivery_id=0, to=r.address, subject=m.subject, text=m.text, html=m.html,
                                   message_id=f"<confirm-{r.id}@{self._domain}>", member_id=r.member_id,
                                   program_id=r.program_id, locale=locale)
        rendered = self._renderer.render(TEMPLATE, r.channel, locale, context)
        return OutboundMessage(delivery_id=0, to=r.address, text=rendered.text, member_id=r.member_id,
                               program_id=r.program_id, locale=locale)

    async def _send(self, r: _Request) -> str:
        try:
            msg = self._message(r)
        except TemplateProblem as exc:      # names template, locale and the error's type: no personal data
            log.warning("double opt-in request %s failed: its message cannot be made: %s", r.id, exc)
            return "failed"
        except Exception as exc:  # noqa: BLE001 - one request's message, not the batch: never left sending
            log.warning("double opt-in request %s failed: its message cannot be made: %s", r.id,
                        type(exc).__name__)
            return "failed"
        try:
            route = await asyncio.to_thread(self._registry.route, r.program_id, r.channel)
        except Exception as exc:  # noqa: BLE001 - the program's account (config) is broken: nothing was sent
            log.warning("double opt-in request %s failed: no %s channel for its program: %s", r.id, r.channel,
                        type(exc).__name__)
            return "failed"
        try:
            await route.channel.send(msg)
        except PermanentChannelError:
            return "failed"
        except InDoubtChannelError:
            return "in_doubt"
        except TransientChannelError:
            return "pending"
        except Exception as exc:  # noqa: BLE001 - an adapter's unmapped error: it may have gone, never resend
            log.warning("double opt-in request %s in doubt: its %s channel raised %s", r.id, r.channel,
                        type(exc).__name__)
            return "in_doubt"
        return "sent"

    def _record(self, results: dict[int, str]) -> None:
        now = utcnow()
        with session_scope(self._engine) as s:
            for status in ("sent", "in_doubt", "failed", "pending"):
                ids = [i for i, st in results.items() if st == status]
                if ids:
                    s.execute(update(Confirmation).where(Confirmation.id.in_(ids),  # type: ignore[union-attr]
                                                         Confirmation.status == "sending")
                              .values(status=status, sent_at=now if status in ("sent", "in_doubt") else None))
