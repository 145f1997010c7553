"""The consent ledger: append a record and derive the current state in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, select

from storage.db import upsert
from storage.tables import ConsentAction, ConsentRecord, ConsentSource, ConsentState, utcnow


@dataclass(frozen=True)
class ConsentAct:
    member_id: int
    channel: str
    topic: str
    action: ConsentAction
    source: ConsentSource
    wording_version: str | None = None
    text_hash: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    campaign_id: int | None = None


def record(*, session: Session, program_id: int, acts: Iterable[ConsentAct]) -> list[ConsentRecord]:
    """Append each act to the ledger and update the current state. The caller commits."""
    rows: list[ConsentRecord] = []
    for act in acts:
        row = ConsentRecord(
            program_id=program_id, member_id=act.member_id, channel=str(act.channel),
            topic=act.topic, action=str(act.action), source=str(act.source),
            wording_version=act.wording_version, text_hash=act.text_hash, ip=act.ip, user_agent=act.user_agent,
            campaign_id=act.campaign_id, at=utcnow(),
        )
        session.add(row)
        rows.append(row)
    if not rows:
        return rows
    session.flush()  # ids for the state rows
    stmt = upsert(session, ConsentState.__table__, ["member_id", "channel", "topic"],
                  ["status", "record_id", "updated_at", "program_id"])
    session.execute(stmt, [
        {"member_id": r.member_id, "channel": r.channel, "topic": r.topic, "program_id": program_id,
         "status": r.action, "record_id": r.id, "updated_at": r.at}
        for r in rows
    ])
    return rows


def states_for(*, session: Session, member_ids: list[int], channel: str) -> dict[int, dict[str, str]]:
    """member id → {topic: status} for one channel."""
    found: dict[int, dict[str, str]] = defaultdict(dict)
    if not member_ids:
        return found
    rows = session.exec(
        select(ConsentState.member_id, ConsentState.topic, ConsentState.status)
        .where(ConsentState.channel == channel, ConsentState.member_id.in_(member_ids))  # type: ignore[attr-defined]
    )
    for member_id, topic, status in rows:
        found[member_id][topic] = status
    return found


def history(*, session: Session, member_id: int) -> list[ConsentRecord]:
    return list(session.exec(
        select(ConsentRecord).where(ConsentRecord.member_id == member_id).order_by(ConsentRecord.id)  # type: ignore[arg-type]
    ))
