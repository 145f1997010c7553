"""One-time member links: prove that an address belongs to a member (the Telegram bot's deep link).

The token is 32 random URL-safe characters (what Telegram's ``start`` parameter allows); only its SHA-256
is stored, with the member, the channel, the topics the member agrees to, and an expiry. Redeeming it
once ties the address to the member; a tampered, expired, used or unknown token gets the same answer
(None), so nobody can tell them apart.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlmodel import Session

from storage.tables import MemberLink, utcnow

LINK_TTL = timedelta(days=7)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_link(*, session: Session, program_id: int, member_id: int, channel: str, topics: list[str],
                ttl: timedelta = LINK_TTL, now: datetime | None = None) -> str:
    """A new token for the member; the caller commits."""
    token = secrets.token_urlsafe(24)
    session.add(MemberLink(token_hash=_hash(token), program_id=program_id, member_id=member_id, channel=channel,
                           topics=sorted(set(topics)), expires_at=(now or utcnow()) + ttl))
    return token


def redeem(*, session: Session, token: str | None, program_id: int, channel: str,
           now: datetime | None = None) -> MemberLink | None:
    """The link of ``token`` if it is valid for this program and channel, marked used; else None."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    link = session.get(MemberLink, _hash(token), with_for_update=True)
    if link is None or link.program_id != program_id or link.channel != channel or link.used_at is not None:
        return None
    expires = link.expires_at if link.expires_at.tzinfo else link.expires_at.replace(tzinfo=now.tzinfo)
    if expires < now:
        return None
    link.used_at = now
    session.add(link)
    return link
