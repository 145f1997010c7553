"""Double opt-in: a member asks for messages on a channel that needs confirmation (email by default, SMS when
the program says so); the topics are recorded ``requested`` and a confirmation request is queued. The
confirmation message (a sealed link for email) is sent by the ``send_confirmations`` activity; using the
link records ``confirmed`` for the channel and each requested topic, with its proof (source web, ip, user
agent, the wording version and hash of the text shown).

    request_confirmation(...)   in the caller's transaction: the ledger rows and the pending request together
    confirm(...)                the link was used: the ledger rows, the request confirmed (once)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlmodel import Session

from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.tables import ConsentAction, ConsentSource, Confirmation, Member, utcnow

CONFIRMATION_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Proof:
    """What the member was shown and from where they acted: kept on every ledger row."""

    source: ConsentSource = ConsentSource.web
    wording_version: str | None = None
    text_hash: str | None = None
    ip: str | None = None
    user_agent: str | None = None


def request_confirmation(*, session: Session, program_id: int, member_id: int, channel: str,
                         topics: Sequence[str], proof: Proof, now: datetime | None = None) -> Confirmation | None:
    """Record each topic ``requested`` and queue a confirmation to the member's current address on ``channel``
    (one pending request per member and channel: a new ask adds its topics to it). The caller commits.
    None when the member has no address on the channel (nothing can be confirmed)."""
    now = now or utcnow()
    member = session.get(Member, member_id)
    address = None if member is None else (member.email if channel == "email" else member.phone)
    if not address or not topics:
        return None
    ledger.record(session=session, program_id=program_id, acts=[
        ledger.ConsentAct(member_id=member_id, channel=channel, topic=t, action=ConsentAction.requested,
                          source=proof.source, wording_version=proof.wording_version, text_hash=proof.text_hash,
                          ip=proof.ip, user_agent=proof.user_agent) for t in topics])
    open_request = session.scalar(select(Confirmation).where(
        Confirmation.member_id == member_id, Confirmation.channel == channel,
        Confirmation.status == "pending").with_for_update())
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
    requested = row.requested_at if row.requested_at.tzinfo else row.requested_at.replace(tzinfo=now.tzinfo)
    member = session.get(Member, row.member_id)
    current = None if member is None else (member.email if row.channel == "email" else member.phone)
    if now - requested > CONFIRMATION_TTL or current != row.address:
        return None
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
    row.status, row.confirmed_at = "confirmed", now
    session.add(row)
    return row


def expire_old(*, session: Session, now: datetime | None = None) -> int:
    """Requests older than the link's life that were never confirmed become ``expired``."""
    now = now or utcnow()
    return session.execute(update(Confirmation).where(
        Confirmation.status.in_(("pending", "sent")),  # type: ignore[attr-defined]
        Confirmation.requested_at < now - CONFIRMATION_TTL).values(status="expired")).rowcount
