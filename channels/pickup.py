"""The pull channels: what a till prints on a member's receipt, and the member's app inbox.

``channels.stored`` keeps each receipt or inbox message in ``stored_message`` when a campaign "sends" it (the
delivery is then ``sent``); this module hands the messages out and records what became of them. Keyword-only
service functions over an engine, each one transaction, ``now`` passed in (UTC; tests move it). No HTTP here:
errors are :class:`PickupError` subclasses that the API maps to 404 / 409, naming the field.

Till receipt (channel ``receipt``), per program's ``ReceiptAccount`` (``channel_account``; defaults 2 and 600 s)::

    pending ──reserve (store/checkout, until now + reservation_s)──▶ reserved ──printed──▶ done (+ receipt_number)
       ▲                                                               │
       └──────────── the reservation lapsed, never printed ────────────┘
    pending | reserved ── expires_at passed ──▶ expired                 (never handed out or counted again)

- :func:`reserve_receipt_messages` answers at most ``max_per_checkout`` messages of the card's member, oldest
  first, and reserves them to that store + checkout. The same checkout asking again gets the same messages (its
  live holds come first and are extended); another checkout gets none of them while the hold lasts. A hold that
  lapsed is released (the message is pending again) the next time the member's card is presented, and every
  query treats a lapsed hold as free anyway. Unknown card, inactive card or a number that names more than one
  member: no messages (an empty answer, so a till cannot probe which cards exist and a card not yet synced
  does not stop a checkout).
- Race-free: the work is one transaction. Each message is taken by a guarded ``UPDATE ... WHERE`` (pending, or
  held by this checkout, or its hold lapsed; not expired) whose row count says whether we got it. On PostgreSQL
  the candidates are read with ``SELECT ... FOR UPDATE SKIP LOCKED``, so a second till skips rows the first one
  is taking instead of waiting for them; were it to read a row anyway, the guard (re-checked by PostgreSQL on the
  row's newest version after the lock) refuses it. On SQLite the transaction's first statement is a write (the
  expiry sweep), which takes the database's single write lock before anything is read: tills are served one
  after the other.
- :func:`mark_printed`: the message ``done`` with its receipt number, the delivery ``delivered`` (forward only)
  and one ``delivered`` response (``provider_event_id`` ``receipt:{id}``). Posting again answers the same and
  writes nothing. Accepted while this checkout holds the message, after its hold lapsed as long as nobody else
  took it (the receipt really was printed), or from pending; refused (:class:`MessageConflict`) when another
  checkout holds it live, printed it, or the message expired.

App inbox (channel ``inbox``): pending = unread, done = read, dismissed. Listed newest first, never expired nor
dismissed ones. Read: ``done``, delivery ``delivered``, an ``opened`` response (``inbox-read:{id}``). Dismiss:
``dismissed``, a ``dismissed`` response (``inbox-dismiss:{id}``); the delivery is not moved (dismissed unread is
not delivered). Both idempotent; a message of another member is :class:`MessageNotFound`, as an unknown one is.

Deliveries move to ``delivered`` from ``sent``, and from ``sending`` / ``in_doubt`` too (as provider reports do
in ``analytics.tracking``): a message the till printed or the member read has reached them, even when the send
that stored it crashed before recording ``sent``. Never from ``failed`` or back from ``delivered``.

Logs carry ids (program, message, store/checkout), never card numbers, external ids or message texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analytics import responses
from channels.accounts import AccountError, ReceiptAccount, parse_account
from channels.receipt import ReceiptCoupon, ReceiptMessage, format_receipt
from members.service import get_program
from storage.db import session_scope
from storage.tables import (
    Campaign,
    Card,
    ChannelAccount,
    ChannelName,
    Delivery,
    DeliveryStatus,
    Member,
    ResponseKind,
    StoredMessage,
)

log = logging.getLogger(__name__)

PENDING, RESERVED, DONE, DISMISSED, EXPIRED = "pending", "reserved", "done", "dismissed", "expired"
ACTIVE_CARD = "active"
#: delivery statuses a print or a read moves to delivered (see the module docstring)
ADVANCES_TO_DELIVERED = (DeliveryStatus.sent, DeliveryStatus.sending, DeliveryStatus.in_doubt)
INBOX_PAGE_MAX = 200

SM = StoredMessage


# --- errors --------------------------------------------------------------------------------


class PickupError(Exception):
    """A request the pull channels refuse; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class MessageNotFound(PickupError):
    """No such message (or member) for this caller: unknown, another member's, another channel's."""


class MessageConflict(PickupError):
    """The message exists but cannot take this step (held by another checkout, expired, dismissed)."""


# --- what the callers get ------------------------------------------------------------------


@dataclass(frozen=True)
class PulledMessage:
    """A stored receipt or inbox message as handed out."""

    id: int
    campaign: str
    title: str | None
    body: str
    link: str | None
    coupon: str | None
    state: str
    created_at: datetime
    expires_at: datetime | None
    reserved_until: datetime | None
    receipt_number: str | None

    @property
    def read(self) -> bool:
        return self.state == DONE


@dataclass(frozen=True)
class Reservation:
    """The messages a till may print now, held for it until ``reserved_until`` (None: no messages)."""

    messages: list[PulledMessage]
    reserved_until: datetime | None


@dataclass(frozen=True)
class Printed:
    id: int
    receipt_number: str
    delivery_status: str
    printed_at: datetime


@dataclass(frozen=True)
class Inbox:
    messages: list[PulledMessage]
    unread: int           # unread, not expired, not dismissed: the app's badge


# --- helpers -------------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    """Aware UTC (SQLite gives naive UTC back; a caller's ``now`` may be in another zone)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _maybe_utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else _utc(dt)


def holder(store: str, checkout: str) -> str:
    """What ``reserved_by`` holds for a till (the API keeps ``/`` out of both parts)."""
    return f"{store}/{checkout}"


def _pulled(row: StoredMessage, campaign_key: str) -> PulledMessage:
    return PulledMessage(id=row.id or 0, campaign=campaign_key, title=row.title, body=row.body, link=row.link,
                         coupon=row.coupon, state=row.state, created_at=_utc(row.created_at),
                         expires_at=_maybe_utc(row.expires_at), reserved_until=_maybe_utc(row.reserved_until),
                         receipt_number=row.receipt_number)


def _load(session: Session, ids: list[int]) -> list[PulledMessage]:
    """The messages ``ids`` with their campaign keys, oldest first."""
    if not ids:
        return []
    rows = session.execute(select(SM, Campaign.key).join(Campaign, Campaign.id == SM.campaign_id)
                           .where(SM.id.in_(ids))  # type: ignore[union-attr]
                           .order_by(SM.created_at, SM.id)).all()
    return [_pulled(row, key) for row, key in rows]


def _update():  # noqa: ANN202
    """A plain UPDATE of stored_message: the session's loaded rows are not synchronised (we re-read)."""
    return update(SM).execution_options(synchronize_session=False)


def _not_expired(now: datetime):  # noqa: ANN202 - a SQL expression
    return or_(SM.expires_at.is_(None), SM.expires_at > now)  # type: ignore[union-attr,operator]


def _free_for(me: str, now: datetime):  # noqa: ANN202 - a SQL expression
    """The guard of every receipt step: pending, or held by ``me``, or its hold lapsed."""
    return or_(SM.state == PENDING,
               and_(SM.state == RESERVED,
                    or_(SM.reserved_by == me, SM.reserved_until <= now)))  # type: ignore[operator]


def _advance_delivery(session: Session, delivery_id: int, now: datetime) -> str:
    """The delivery ``delivered`` if it may move there; its status afterwards."""
    session.execute(update(Delivery).execution_options(synchronize_session=False)
                    .where(Delivery.id == delivery_id,  # type: ignore[arg-type]
                           Delivery.status.in_(ADVANCES_TO_DELIVERED))  # type: ignore[attr-defined]
                    .values(status=DeliveryStatus.delivered, updated_at=now))
    return str(session.scalar(select(Delivery.status).where(Delivery.id == delivery_id)))  # type: ignore[arg-type]


def _respond(session: Session, delivery_id: int, kind: ResponseKind, event_id: str, now: datetime) -> None:
    """One response row per ``event_id``: a repeat writes nothing."""
    responses.record(session, delivery_id=delivery_id, kind=kind, at=now, event_id=event_id)


# --- till receipt --------------------------------------------------------------------------


def receipt_account(*, session: Session, program_id: int) -> ReceiptAccount:
    """The program's receipt settings, or the defaults (no account, or one that no longer validates)."""
    row = session.scalar(select(ChannelAccount).where(ChannelAccount.program_id == program_id,
                                                      ChannelAccount.channel == ChannelName.receipt))
    if row is None:
        return ReceiptAccount()
    try:
        account = parse_account(row.channel, row.provider, row.config)
    except AccountError as exc:
        log.warning("program %s: receipt account not valid (%s); using the defaults", program_id, exc)
        return ReceiptAccount()
    return account if isinstance(account, ReceiptAccount) else ReceiptAccount()


def _card_member(session: Session, program_id: int, card: str) -> int | None:
    """The member whose active card has this number in the program; None when none or several do."""
    ids = set(session.scalars(select(Card.member_id).join(Member, Member.id == Card.member_id)
                              .where(Member.program_id == program_id, Card.number == card,
                                     Card.status == ACTIVE_CARD)))
    if len(ids) > 1:
        log.warning("program %s: a card number names %d members; no receipt messages", program_id, len(ids))
    return ids.pop() if len(ids) == 1 else None


def reserve_receipt_messages(*, engine: Engine, program: str, card: str, store: str, checkout: str,
                             now: datetime) -> Reservation:
    """At most ``max_per_checkout`` of the card's member's receipt messages, oldest first, held for this
    store + checkout until now + ``reservation_s`` (rules in the module docstring)."""
    now, me = _utc(now), holder(store, checkout)
    with session_scope(engine) as s:
        prog = get_program(s, program)
        member_id = _card_member(s, prog.id or 0, card)
        if member_id is None:
            return Reservation([], None)
        account = receipt_account(session=s, program_id=prog.id or 0)
        until = now + timedelta(seconds=account.reservation_s)
        mine = and_(SM.member_id == member_id, SM.channel == ChannelName.receipt)
        # the first write: on SQLite it takes the write lock, so no other till reads between our read and write
        s.execute(_update().where(mine, SM.state.in_((PENDING, RESERVED)),  # type: ignore[attr-defined]
                                   SM.expires_at <= now)  # type: ignore[operator]
                  .values(state=EXPIRED, updated_at=now))
        s.execute(_update().where(mine, SM.state == RESERVED, SM.reserved_until <= now)  # type: ignore[operator]
                  .values(state=PENDING, reserved_by=None, reserved_until=None, updated_at=now))
        candidates = s.scalars(
            select(SM.id).where(mine, _not_expired(now),
                                or_(SM.state == PENDING, and_(SM.state == RESERVED, SM.reserved_by == me)))
            .order_by(case((SM.reserved_by == me, 0), else_=1), SM.created_at, SM.id)
            .limit(account.max_per_checkout)
            .with_for_update(skip_locked=True)).all()   # SQLite: no FOR UPDATE (one writer at a time)
        taken = []
        for message_id in candidates:
            result = s.execute(
                _update().where(SM.id == message_id, _not_expired(now), _free_for(me, now))
                .values(state=RESERVED, reserved_by=me, reserved_until=until, updated_at=now))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                taken.append(message_id)
        messages = _load(s, taken)
    if messages:
        log.info("program %s: %d receipt message(s) %s reserved for %s until %s", prog.id,
                 len(messages), [m.id for m in messages], me, until.isoformat())
    return Reservation(messages, until if messages else None)


def receipt_layout(message: PulledMessage, *, width: int) -> ReceiptMessage:
    """The message laid out for a till of ``width`` columns. A coupon code a barcode cannot carry (not
    printable ASCII, too long) is printed as text at the end of the body, without barcode or QR code."""
    coupon: ReceiptCoupon | None = None
    text = message.body
    if message.coupon:
        try:
            coupon = ReceiptCoupon(message.coupon)
        except ValueError:
            text = f"{text}\n\n{message.coupon}"
    return format_receipt(title=message.title, text=text, coupon=coupon, width=width)


def mark_printed(*, engine: Engine, message_id: int, store: str, checkout: str, receipt_number: str,
                 now: datetime) -> Printed:
    """Record that a till printed the message (rules in the module docstring)."""
    now, me = _utc(now), holder(store, checkout)
    refusal: PickupError | None = None
    with session_scope(engine) as s:
        # the guarded update first: on SQLite it takes the write lock before anything is read
        result = s.execute(
            _update().where(SM.id == message_id, SM.channel == ChannelName.receipt, _not_expired(now),
                            _free_for(me, now))
            .values(state=DONE, reserved_by=me, receipt_number=receipt_number, updated_at=now))
        row = s.get(SM, message_id, populate_existing=True)
        if row is None or row.channel != ChannelName.receipt:
            raise MessageNotFound(f"receipt message {message_id} not found", field="id")
        if result.rowcount == 1 or (row.state == DONE and row.reserved_by == me):  # type: ignore[attr-defined]
            status = _advance_delivery(s, row.delivery_id, now)
            _respond(s, row.delivery_id, ResponseKind.delivered, f"receipt:{message_id}", now)
            printed = Printed(id=message_id, receipt_number=row.receipt_number or receipt_number,
                              delivery_status=status, printed_at=_utc(row.updated_at))
        elif row.state == DONE:
            refusal = MessageConflict(f"receipt message {message_id} was printed by another checkout",
                                      field="id")
        elif row.state == EXPIRED or (row.expires_at is not None and _utc(row.expires_at) <= now):
            if row.state != EXPIRED:
                row.state, row.updated_at = EXPIRED, now
                s.add(row)
            refusal = MessageConflict(f"receipt message {message_id} expired; it is not counted as delivered",
                                      field="id")
        else:
            held = _maybe_utc(row.reserved_until)
            refusal = MessageConflict(f"receipt message {message_id} is held by another checkout until "
                                      f"{held.isoformat() if held else '?'}", field="checkout")
    if refusal is not None:
        raise refusal
    log.info("receipt message %s printed at %s", message_id, me)
    return printed


# --- app inbox -----------------------------------------------------------------------------


def _member_id(session: Session, program: str, external_id: str) -> int:
    prog = get_program(session, program)
    member_id = session.scalar(select(Member.id).where(Member.program_id == prog.id,
                                                       Member.external_id == external_id))
    if member_id is None:
        raise MessageNotFound(f"member {external_id!r} not found", field="external_id")
    return member_id


def _inbox_row(session: Session, member_id: int, message_id: int) -> StoredMessage:
    row = session.scalar(select(SM).where(SM.id == message_id, SM.member_id == member_id,
                                          SM.channel == ChannelName.inbox))
    if row is None:
        raise MessageNotFound(f"inbox message {message_id} not found", field="id")
    return row


def inbox_messages(*, engine: Engine, program: str, external_id: str, now: datetime, include_read: bool = False,
                   limit: int = 100) -> Inbox:
    """The member's inbox, newest first: unread messages (and read ones with ``include_read``), never expired
    or dismissed ones; with the unread count."""
    now = _utc(now)
    with Session(engine) as s:
        member_id = _member_id(s, program, external_id)
        states = (PENDING, DONE) if include_read else (PENDING,)
        visible = and_(SM.member_id == member_id, SM.channel == ChannelName.inbox, _not_expired(now))
        rows = s.execute(select(SM, Campaign.key).join(Campaign, Campaign.id == SM.campaign_id)
                         .where(visible, SM.state.in_(states))  # type: ignore[attr-defined]
                         .order_by(SM.created_at.desc(), SM.id.desc())  # type: ignore[attr-defined]
                         .limit(min(limit, INBOX_PAGE_MAX))).all()
        unread = s.scalar(select(func.count()).select_from(SM).where(visible, SM.state == PENDING)) or 0
    return Inbox([_pulled(row, key) for row, key in rows], unread)


def mark_read(*, engine: Engine, program: str, external_id: str, message_id: int, now: datetime) -> PulledMessage:
    """The member opened the message: read, its delivery delivered, one ``opened`` response. A dismissed
    message cannot be read (:class:`MessageConflict`); an expired one can (the app showed it before)."""
    now = _utc(now)
    with session_scope(engine) as s:
        member_id = _member_id(s, program, external_id)
        s.execute(_update().where(SM.id == message_id, SM.member_id == member_id, SM.channel == ChannelName.inbox,
                                   SM.state == PENDING).values(state=DONE, updated_at=now))
        row = _inbox_row(s, member_id, message_id)
        if row.state == DISMISSED:
            raise MessageConflict(f"inbox message {message_id} was dismissed", field="id")
        _advance_delivery(s, row.delivery_id, now)
        _respond(s, row.delivery_id, ResponseKind.opened, f"inbox-read:{message_id}", now)
        return _load(s, [message_id])[0]


def dismiss(*, engine: Engine, program: str, external_id: str, message_id: int, now: datetime) -> PulledMessage:
    """The member dismissed the message (read or not): it leaves the inbox; one ``dismissed`` response."""
    now = _utc(now)
    with session_scope(engine) as s:
        member_id = _member_id(s, program, external_id)
        s.execute(_update().where(SM.id == message_id, SM.member_id == member_id, SM.channel == ChannelName.inbox,
                                   SM.state.in_((PENDING, DONE)))  # type: ignore[attr-defined]
                  .values(state=DISMISSED, updated_at=now))
        row = _inbox_row(s, member_id, message_id)
        _respond(s, row.delivery_id, ResponseKind.dismissed, f"inbox-dismiss:{message_id}", now)
        return _load(s, [message_id])[0]
