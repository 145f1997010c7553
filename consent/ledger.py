"""The consent ledger: append a record and derive the current state in the same transaction.

Each act happened at a time: now for the acts Clarion sees live, the original date for history brought in
from another system (consent.importer). The current state of a (member, channel, topic) is the act LATEST IN
TIME, ties going to the act recorded last (the higher ledger id). An act older than the current state is
still appended (it is history, and the proof of what the member did) but leaves the state as it is: importing
an old ``granted`` after a newer ``revoked`` keeps ``revoked``, an old ``revoked`` under a newer ``granted``
keeps ``granted``, and history gives the same state in whatever order it arrives. A live act is stamped with
the clock when it is recorded, so it follows every imported one (the import refuses dates in the future).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from storage.db import dialect_insert
from storage.tables import ConsentAction, ConsentRecord, ConsentSource, ConsentState, Member, utcnow


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
    at: datetime | None = None   # when the member acted (timezone-aware); None = now


def lock_members(*, session: Session, member_ids: Iterable[int]) -> None:
    """Hold these members' consent for the rest of the caller's transaction, before it reads the state it
    decides on: two requests that read, decide and record at once (a one-click unsubscribe posted twice by a
    mail provider, a form saved twice, a STOP retried by Twilio) then act one after the other, and the second
    sees what the first wrote instead of recording the same act again. PostgreSQL locks the members' rows;
    SQLite has no row locks and its reads take none, so the transaction takes the database's write lock with an
    UPDATE that changes nothing (the first statement, or the rows read before it may be stale)."""
    ids = sorted(set(member_ids))
    if not ids:
        return
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Member).where(Member.id.in_(ids)).values(updated_at=Member.updated_at))  # type: ignore[attr-defined]
    else:
        session.execute(select(Member.id).where(Member.id.in_(ids)).order_by(Member.id).with_for_update())  # type: ignore[attr-defined]


def record(*, session: Session, program_id: int, acts: Iterable[ConsentAct]) -> list[ConsentRecord]:
    """Append each act to the ledger and update the current state where the act is the latest in time for its
    (member, channel, topic) — ties to the one recorded last (see the module docstring). The caller commits."""
    params = _params(program_id, acts)
    if not params:
        return []
    session.flush()  # what the caller added first (a new member) is in the database before its acts
    # INSERT ... RETURNING loads the ORM objects without running each one's constructor
    rows = list(session.scalars(
        insert(ConsentRecord).returning(ConsentRecord, sort_by_parameter_order=True), params))
    for r, p in zip(rows, params, strict=True):
        set_committed_value(r, "at", p["at"])   # aware, as given (SQLite hands times back without a zone)
    _derive_state(session, ((r.id or 0, r.member_id, r.channel, r.topic, r.at) for r in rows))
    return rows


def append(*, session: Session, program_id: int, acts: Iterable[ConsentAct]) -> int:
    """``record`` for bulk callers that need no rows back (the consent import): the same ledger rows and the
    same state, without building an ORM object per row. Returns how many rows were appended. The caller commits."""
    params = _params(program_id, acts)
    if not params:
        return 0
    session.flush()
    c = ConsentRecord.__table__.c  # type: ignore[attr-defined]
    # RETURNING in any order: asking for the parameters' order makes SQLAlchemy insert one row at a time on SQLite
    rows = session.execute(insert(ConsentRecord.__table__).returning(c.id, c.member_id, c.channel, c.topic, c.at),
                           params).all()
    _derive_state(session, rows)
    return len(rows)


def _params(program_id: int, acts: Iterable[ConsentAct]) -> list[dict[str, Any]]:
    now = utcnow()
    params: list[dict[str, Any]] = []
    for act in acts:
        if act.at is not None and act.at.tzinfo is None:
            raise ValueError("ConsentAct.at must carry a time zone")
        params.append({
            "program_id": program_id, "member_id": act.member_id, "channel": str(act.channel), "topic": act.topic,
            "action": str(act.action), "source": str(act.source), "wording_version": act.wording_version,
            "text_hash": act.text_hash, "ip": act.ip, "user_agent": act.user_agent, "campaign_id": act.campaign_id,
            "at": now if act.at is None else act.at.astimezone(UTC)})
    return params


def _derive_state(session: Session, rows: Iterable[tuple[int, int, str, str, datetime]]) -> None:
    """Point each (member, channel, topic) at its latest act among the new ``rows`` (id, member, channel, topic,
    at) — unless the act the state follows already is later (at the same time: the higher id, the one recorded
    later, wins). One INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE for the lot."""
    latest: dict[tuple[int, str, str], tuple[datetime, int]] = {}
    for record_id, member_id, channel, topic, at in rows:
        key = (member_id, channel, topic)
        if key not in latest or (at, record_id) > latest[key]:
            latest[key] = (at, record_id)
    if not latest:
        return
    table, rec = ConsentState.__table__, ConsentRecord.__table__.c  # type: ignore[attr-defined]
    stmt = dialect_insert(session, table).from_select(
        ["member_id", "channel", "topic", "program_id", "status", "record_id", "updated_at"],
        select(rec.member_id, rec.channel, rec.topic, rec.program_id, rec.action, rec.id, rec.at)
        .where(rec.id.in_([record_id for _, record_id in latest.values()])))
    new, current = stmt.excluded, table.c  # type: ignore[attr-defined]
    session.execute(stmt.on_conflict_do_update(
        index_elements=["member_id", "channel", "topic"],
        set_={c: new[c] for c in ("status", "record_id", "updated_at", "program_id")},
        where=or_(new.updated_at > current.updated_at,
                  and_(new.updated_at == current.updated_at, new.record_id > current.record_id))))


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
    """The member's ledger in the order the acts happened (then the order they were recorded)."""
    return list(session.exec(
        select(ConsentRecord).where(ConsentRecord.member_id == member_id)
        .order_by(ConsentRecord.at, ConsentRecord.id)  # type: ignore[arg-type]
    ))
