"""Coupon code pools: unique codes a program loads (from its POS or partner), each given to one member once.

A template that says ``coupon_pool: NAME`` in its ``template.yaml`` gets ``{{ coupon }}``: the member's code
from that pool, drawn the first time and the same ever after (unique per program, pool and member), so a
retried page, a follow-up or another campaign on the same pool shows the member the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.db import insert_ignore, session_scope
from storage.tables import CouponCode, utcnow

MAX_CODE = 64


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
    """(codes in the pool, codes given)."""
    total, given = session.execute(select(func.count(), func.count(CouponCode.member_id)).where(
        CouponCode.program_id == program_id, CouponCode.pool == pool)).one()
    return int(total), int(given)


def assign_codes(*, session: Session, program_id: int, pool: str, member_ids: Sequence[int]) -> dict[int, str]:
    """Each member's code from the pool, drawing free ones for those who have none; members left without one
    (the pool ran out) are missing from the answer. The caller's transaction (commit it before using the
    codes: they are given for good)."""
    if not member_ids:
        return {}
    have = dict(session.execute(select(CouponCode.member_id, CouponCode.code).where(
        CouponCode.program_id == program_id, CouponCode.pool == pool,
        CouponCode.member_id.in_(list(member_ids)))).all())  # type: ignore[union-attr]
    need = [m for m in dict.fromkeys(member_ids) if m not in have]
    if not need:
        return have
    free_q = (select(CouponCode.id, CouponCode.code).where(
        CouponCode.program_id == program_id, CouponCode.pool == pool, CouponCode.member_id.is_(None))  # type: ignore[union-attr]
        .order_by(CouponCode.id).limit(len(need)))
    if session.get_bind().dialect.name == "postgresql":
        free_q = free_q.with_for_update(skip_locked=True)
    now = utcnow()
    for (code_id, code), member_id in zip(session.execute(free_q).all(), need, strict=False):
        done = session.execute(update(CouponCode).where(CouponCode.id == code_id, CouponCode.member_id.is_(None))  # type: ignore[union-attr, arg-type]
                               .values(member_id=member_id, assigned_at=now)).rowcount
        if done:
            have[member_id] = code
    return have
