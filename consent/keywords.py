"""What a member's keyword does to the consent ledger: STOP (and its synonyms, in Russian too) revokes the
channel, START / YES / UNSTOP grants it back, a Telegram ``/start`` with a valid link ties the chat to the
member and grants the link's topics, ``/stop`` or blocking the bot revokes Telegram.

Each act is a ledger row with its source (``sms_keyword``, ``telegram``) and the time; the current state
follows in the same transaction (consent.ledger). The caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from consent import ledger
from consent.policy import CHANNEL_WIDE
from storage.tables import ConsentAction, ConsentSource


def apply_keyword(*, session: Session, program_id: int, member_ids: Sequence[int], channel: str, kind: str,
                  source: ConsentSource, user_agent: str | None = None) -> int:
    """Record ``stop`` (revoked) or ``start`` (granted) on the whole channel for each member; returns how
    many ledger rows were written (0 for other kinds)."""
    action = {"stop": ConsentAction.revoked, "start": ConsentAction.granted}.get(kind)
    if action is None or not member_ids:
        return 0
    # a provider's retry of the same message (or STOP sent twice, or both at once) is not a new act
    ledger.lock_members(session=session, member_ids=member_ids)
    already = {m for m, topics in ledger.states_for(session=session, member_ids=list(member_ids),
                                                     channel=channel).items()
               if topics.get(CHANNEL_WIDE) == action}
    rows = ledger.record(session=session, program_id=program_id, acts=[
        ledger.ConsentAct(member_id=m, channel=channel, topic=CHANNEL_WIDE, action=action, source=source,
                          user_agent=user_agent)
        for m in member_ids if m not in already])
    return len(rows)


def grant_topics(*, session: Session, program_id: int, member_id: int, channel: str, topics: Sequence[str],
                 source: ConsentSource, wording_version: str | None = None) -> int:
    """The member opted in on ``channel``: the channel is unblocked and each topic granted."""
    acts = [ledger.ConsentAct(member_id=member_id, channel=channel, topic=CHANNEL_WIDE,
                              action=ConsentAction.granted, source=source, wording_version=wording_version)]
    acts += [ledger.ConsentAct(member_id=member_id, channel=channel, topic=t, action=ConsentAction.granted,
                               source=source, wording_version=wording_version) for t in topics]
    return len(ledger.record(session=session, program_id=program_id, acts=acts))
