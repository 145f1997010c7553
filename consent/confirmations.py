"""Double opt-in: a member asks for messages on a channel that needs confirmation (email by default, SMS when
the program says so); the topics are recorded ``requested`` and a confirmation request is queued. The
confirmation message (a sealed link for email) is sent by the ``send_confirmations`` activity; using the
link records ``confirmed`` for the channel and each requested topic, with its proof (source web, ip, user
agent, the wording version and hash of the text shown).

    request_confirmation(...)   in the caller's transaction: the ledger rows and the pending request together
    confirm(...)                the link was used: the ledger rows, the request confirmed (once)
    open_topics(...)            the topics a request that can still be confirmed is waiting for

Asking again changes nothing that is settled: a topic already granted or confirmed is not asked for (the
loyalty core re-sending a profile with ``requested`` leaves a confirmed member confirmed), nor one an open
request already waits for. A confirmation never lifts a block of the whole channel (``*`` revoked or
suppressed) recorded after the request was made: the member unsubscribed, or the address bounced, since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlmodel import Session

from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.tables import (
    Confirmation,
    ConsentAction,
    ConsentSource,
    ConsentState,
    Member,
    utcnow,
)

CONFIRMATION_TTL = timedelta(days=7)
OPEN_STATUSES = ("pending", "sending", "sent", "in_doubt")      # a request whose link may still be used
_SETTLED = frozenset({ConsentAction.granted, ConsentAction.confirmed})
_BLOCKS = frozenset({ConsentAction.revoked, ConsentAction.suppressed})


def _aware(dt: datetime, like: datetime) -> datetime:
    """SQLite hands timestamps back naive (they are UTC)."""
    return dt if dt.tzinfo else dt.replace(tzinfo=like.tzinfo)


def address_of(member: Member | None, channel: str) -> str | None:
    return None if member is None else (member.email if channel == "email" else member.phone)


def open_topics(*, session: Session, member_id: int, channel: str, address: str | None,
                now: datetime | None = None) -> set[str]:
    """The topics of the member's requests on ``channel`` that can still be confirmed: not confirmed, failed or
    expired, younger than the link's life, and made for the address the member has now."""
    now = now or utcnow()
    if not address:
        return set()
    found: set[str] = set()
    for topics, requested_at, to in session.execute(select(
            Confirmation.topics, Confirmation.requested_at, Confirmation.address).where(
            Confirmation.member_id == member_id, Confirmation.channel == channel,
            Confirmation.status.in_(OPEN_STATUSES))):  # type: ignore[attr-defined]
        if to == address and now - _aware(requested_at, now) <= CONFIRMATION_TTL:
            found.update(topics or ())
    return found


@dataclass(frozen=True)
class Proof:
    """What the member was shown and from where they acted: kept on every ledger row."""

    source: ConsentSource = ConsentSource.web
    wording_version: str | None = None
    text_hash: str | None = None
    ip: str | None = None
    user_agent: str | None = None


def request_confirmation(*, session: Session, program_id: int, member_id: int, channel: str,
                         topics: Sequence[str], proof: Proof, now: datetime | None = None,
                         ask_again: bool = False) -> Confirmation | None:
    """Record each topic ``requested`` and queue a confirmation to the member's current address on ``channel``
    (one pending request per member and channel: a new ask adds its topics to it). Topics already granted or
    confirmed, and topics an open request waits for, are left as they are, unless ``ask_again`` (the
    preference center lifting a block of the channel asks again for every ticked topic). The caller commits.
    None when nothing was asked: no address on the channel (nothing can be confirmed) or nothing left to ask."""
    now = now or utcnow()
    member = session.get(Member, member_id)
    address = address_of(member, channel)
    if not address or not topics:
        return None
    if not ask_again:
        states = ledger.states_for(session=session, member_ids=[member_id], channel=channel).get(member_id, {})
        waiting = open_topics(session=session, member_id=member_id, channel=channel, address=address, now=now)
        topics = [t for t in dict.fromkeys(topics) if states.get(t) not in _SETTLED and t not in waiting]
        if not topics:
            return None
    ledger.record(session=session, program_id=program_id, acts=[
        ledger.ConsentAct(member_id=member_id, channel=channel, topic=t, action=ConsentAction.requested,
                          source=proof.source, wording_version=proof.wording_version, text_hash=proof.text_hash,
                          ip=proof.ip, user_agent=proof.user_agent) for t in topics])
    open_request = session.scalar(select(Confirmation).where(
        Confirmation.member_id == member_id, Confirmation.channel == channel,
        Confirmation.status == "pending").with_for_update())
    if open_request is not None and now - _aware(open_request.requested_at, now) > CONFIRMATION_TTL:
        open_request.status = "expired"      # never sent, and too old to be confirmed: a new request instead
        session.add(open_request)
        open_request = None
    if open_request is not None:
        open_request.topics = sorted({*open_request.topics, *topics})
        open_request.address = address
        session.add(open_request)
        return open_request
    row = Confirmation(program_id=program_id, member_id=member_id, channel=channel, address=address,
                       topics=sorted(set(topics)), status="pending", requested_at=now)
    session.add(row)
    session.flush()
    return row


def confirm(*, session: Session, confirmation_id: int, proof: Proof, now: datetime | None = None) -> Confirmation | None:
    """The member used the confirmation link: the channel and each requested topic become ``confirmed`` in
    the ledger (once; a second use changes nothing). None when the request is unknown, expired or was for an
    address the member no longer has (the proof would not hold). The caller commits."""
    now = now or utcnow()
    row = session.get(Confirmation, confirmation_id, with_for_update=True)
    if row is None or row.status == "expired":
        return None
    if row.status == "confirmed":
        return row
    requested = _aware(row.requested_at, now)
    member = session.get(Member, row.member_id)
    if now - requested > CONFIRMATION_TTL or address_of(member, row.channel) != row.address:
        return None
    wide = session.get(ConsentState, (row.member_id, row.channel, CHANNEL_WIDE))
    if wide is not None and wide.status in _BLOCKS and _aware(wide.updated_at, now) >= requested:
        return None          # unsubscribed from the channel, or its address suppressed, since the request
    # claimed by a conditional UPDATE before anything is written: on SQLite the row lock above is no lock and
    # reads take none, so two presses at once both read the request open and each wrote the acts; the second
    # UPDATE now waits for the first's commit and matches no row
    claimed = session.execute(update(Confirmation).where(
        Confirmation.id == row.id, Confirmation.status.not_in(("confirmed", "expired")))  # type: ignore[attr-defined]
        .values(status="confirmed", confirmed_at=now)).rowcount
    if not claimed:
        session.refresh(row)
        return row if row.status == "confirmed" else None
    acts = [ledger.ConsentAct(member_id=row.member_id, channel=row.channel, topic=CHANNEL_WIDE,
                              action=ConsentAction.confirmed, source=proof.source,
                              wording_version=proof.wording_version, text_hash=proof.text_hash, ip=proof.ip,
                              user_agent=proof.user_agent)]
    states = ledger.states_for(session=session, member_ids=[row.member_id], channel=row.channel).get(row.member_id, {})
    acts += [ledger.ConsentAct(member_id=row.member_id, channel=row.channel, topic=t, action=ConsentAction.confirmed,
                               source=proof.source, wording_version=proof.wording_version, text_hash=proof.text_hash,
                               ip=proof.ip, user_agent=proof.user_agent)
             for t in row.topics if states.get(t) == ConsentAction.requested]   # not one revoked meanwhile
    ledger.record(session=session, program_id=row.program_id, acts=acts)
    session.refresh(row)
    return row


def expire_old(*, session: Session, now: datetime | None = None) -> int:
    """Requests older than the link's life that were never confirmed become ``expired``."""
    now = now or utcnow()
    return session.execute(update(Confirmation).where(
        Confirmation.status.in_(("pending", "sent")),  # type: ignore[attr-defined]
        Confirmation.requested_at < now - CONFIRMATION_TTL).values(status="expired")).rowcount
