"""Coupon code pools: unique codes a program loads (from its POS or partner), each given to one member once.

A template that says ``coupon_pool: NAME`` in its ``template.yaml`` gets ``{{ coupon }}``: the member's code
from that pool, drawn the first time and the same ever after (unique per program, pool and member), so a
retried page, a follow-up or another campaign on the same pool shows the member the same code.

A code's states: free (no member, ``assigned_at`` null) → given (member and ``assigned_at``) → given to an
erased member (no member, ``assigned_at`` is ``ERASED_ASSIGNED_AT``). A given code is never free again: it
went out in a message, and the till redeems it against the POS's or partner's own list, which Clarion does
not keep (nothing here looks a code up to redeem it). So erasure (``members.rights``) keeps the code
consumed and drops only what ties it to the person: the member and the time it was drawn (a time that
matches the erased member's deliveries would tie it back).

Two draws for one member can race: two workers with pages of the same member, or a retried activity whose
first attempt still runs. They take turns per member (PostgreSQL: a transaction-scoped advisory lock per
member, taken in id order; SQLite: the database's write lock, taken by the draw's first statement), so the
second one reads the code the first gave and answers with it. Should a draw that did not take its turn (a
worker of an older version during a rolling deploy) still hit the unique key (program, pool, member), the
draw re-reads the code it lost to and answers with that; it never fails the message nor gives a second code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from storage.db import insert_ignore, session_scope
from storage.tables import CouponCode, utcnow

MAX_CODE = 64
ERASED_ASSIGNED_AT = datetime(1970, 1, 1, tzinfo=UTC)   # given, to a member since erased: no real time
_LOCK_SPACE = 0x436F7570          # "Coup": the first key of the per-member advisory locks (PostgreSQL)
_PASSES = 4                       # a pass draws for each member still without a code; a lost race costs one more


def load_codes(*, engine: Engine, program_id: int, pool: str, codes: Iterable[str], batch: int = 5000) -> tuple[int, int]:
    """Add codes to a pool (blank lines skipped, duplicates ignored). Returns (added, already there)."""
    added = seen = 0
    chunk: list[str] = []

    def flush() -> None:
        nonlocal added
        with session_scope(engine) as s:
            result = s.execute(insert_ignore(s, CouponCode.__table__, ["program_id", "pool", "code"])
                               .returning(CouponCode.__table__.c.id),
                               [{"program_id": program_id, "pool": pool, "code": c} for c in chunk])
            added += len(result.all())
        chunk.clear()

    for raw in codes:
        code = raw.strip()
        if not code:
            continue
        if len(code) > MAX_CODE:
            raise ValueError(f"a coupon code is at most {MAX_CODE} characters (line {seen + 1})")
        seen += 1
        chunk.append(code)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    return added, seen - added


def pool_status(*, session: Session, program_id: int, pool: str) -> tuple[int, int]:
    """(codes in the pool, codes given): a code given stays given, also once its member was erased."""
    total, given = session.execute(select(func.count(), func.count(CouponCode.assigned_at)).where(
        CouponCode.program_id == program_id, CouponCode.pool == pool)).one()
    return int(total), int(given)


def _take_turns(session: Session, member_ids: Sequence[int]) -> bool:
    """Wait for the draws and erasures of these members in other transactions to end; until this one ends,
    they wait for it. True on PostgreSQL (the free codes are then locked as they are read, SQLite needs no
    more)."""
    if session.get_bind().dialect.name != "postgresql":
        # SQLite: the write lock now, before anything is read (a no-op when the transaction holds it already)
        session.execute(update(CouponCode).where(CouponCode.id == -1).values(member_id=CouponCode.member_id))
        return False
    session.execute(text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), m) "
                         "FROM unnest(CAST(:ids AS integer[])) AS m"),
                    {"space": _LOCK_SPACE, "ids": sorted(set(member_ids))})
    return True


def _codes_of(session: Session, program_id: int, pool: str, member_ids: Sequence[int]) -> dict[int, str]:
    return dict(session.execute(select(CouponCode.member_id, CouponCode.code).where(  # type: ignore[arg-type]
        CouponCode.program_id == program_id, CouponCode.pool == pool,
        CouponCode.member_id.in_(list(member_ids)))).all())  # type: ignore[union-attr]


def _give(session: Session, pairs: list[tuple[int, int]], now: datetime, *, savepoint: bool) -> dict[int, int] | None:
    """Give each free code of ``pairs`` ((code id, member id)) to its member: {member: code id} of those given
    (a code another draw took meanwhile is not), or None when the unique key (program, pool, member) refused
    one: a racing draw gave that member a code first, and none of ``pairs`` is given."""
    done: dict[int, int] = {}
    try:
        # PostgreSQL: an error aborts the whole transaction unless a savepoint holds it (SQLite: no savepoint,
        # it could be the outermost one, whose release would commit the caller's work)
        with session.begin_nested() if savepoint else nullcontext():
            for code_id, member_id in pairs:
                if session.execute(update(CouponCode).where(
                        CouponCode.id == code_id, CouponCode.member_id.is_(None),  # type: ignore[union-attr, arg-type]
                        CouponCode.assigned_at.is_(None))  # type: ignore[union-attr]
                        .values(member_id=member_id, assigned_at=now)).rowcount:
                    done[member_id] = code_id
    except IntegrityError:
        if not savepoint:     # SQLite: cannot be, the draw holds the database's write lock (_take_turns)
            raise
        return None
    return done


def assign_codes(*, session: Session, program_id: int, pool: str, member_ids: Sequence[int]) -> dict[int, str]:
    """Each member's code from the pool, drawing free ones for those who have none; members left without one
    (the pool ran out) are missing from the answer. The caller's transaction (commit it before using the
    codes: they are given for good). Racing draws for one member answer with the same code (module docstring)."""
    if not member_ids:
        return {}
    wanted = list(dict.fromkeys(member_ids))
    pg = _take_turns(session, wanted)
    have = _codes_of(session, program_id, pool, wanted)
    need = [m for m in wanted if m not in have]
    for _ in range(_PASSES):
        if not need:
            break
        free_q = (select(CouponCode.id, CouponCode.code).where(
            CouponCode.program_id == program_id, CouponCode.pool == pool,
            CouponCode.member_id.is_(None), CouponCode.assigned_at.is_(None))  # type: ignore[union-attr]
            .order_by(CouponCode.id).limit(len(need)))
        if pg:   # codes another draw is giving right now are skipped, not waited for
            free_q = free_q.with_for_update(skip_locked=True)
        free = dict(session.execute(free_q).all())
        if not free:
            break
        done = _give(session, list(zip(free, need, strict=False)), utcnow(), savepoint=pg)
        if done is None:     # lost to a draw that did not take turns: the member's code is the one it gave
            have |= _codes_of(session, program_id, pool, need)
        else:
            have |= {member_id: free[code_id] for member_id, code_id in done.items()}
        need = [m for m in need if m not in have]
    return have


def unlink_member(*, session: Session, member_id: int) -> int:
    """The member's codes (every pool) stay given but no longer name the member nor when they were drawn
    (erasure). Waits for a draw of the member in flight. The caller's transaction; the codes unlinked."""
    _take_turns(session, [member_id])
    return session.execute(update(CouponCode).where(CouponCode.member_id == member_id)
                           .values(member_id=None, assigned_at=ERASED_ASSIGNED_AT)).rowcount
