"""Coupon draws racing for one member (members.coupons.assign_codes) on a real SQLite file and, when CI
provides it, PostgreSQL: two deliveries for the same member and pool (two workers, or a retried activity
whose first attempt is still running) end with the member holding one code, the one drawn first, and the
other draw answers with that code instead of failing the message or taking a second code."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from members.coupons import assign_codes, load_codes, pool_status
from storage.db import make_engine, session_scope
from storage.tables import CouponCode, Member, utcnow
from tests.factories import seed_members


@pytest.fixture
def pool(any_db_url: str):
    engine = make_engine(any_db_url)
    program = seed_members(engine, 3)
    load_codes(engine=engine, program_id=program, pool="xmas", codes=[f"XMAS-{i:03d}" for i in range(1, 11)])
    with Session(engine) as s:
        members = list(s.scalars(select(Member.id).order_by(Member.id)))
    yield engine, program, members
    engine.dispose()


def given(engine: Engine, program: int) -> dict[int, list[str]]:
    """member → the codes of the pool linked to them."""
    found: dict[int, list[str]] = {}
    with Session(engine) as s:
        for member_id, code in s.execute(select(CouponCode.member_id, CouponCode.code).where(
                CouponCode.program_id == program, CouponCode.member_id.is_not(None))  # type: ignore[union-attr]
                .order_by(CouponCode.id)):
            found.setdefault(member_id, []).append(code)
    return found


def draw(engine: Engine, program: int, member_ids: list[int]) -> dict[int, str]:
    with session_scope(engine) as s:
        return assign_codes(session=s, program_id=program, pool="xmas", member_ids=member_ids)


def _is_give(statement: str) -> bool:
    """Our draw giving its first free code (the statement that sets member and time)."""
    return statement.lstrip().upper().startswith("UPDATE COUPON_CODE") and "assigned_at" in statement


def test_a_draw_for_a_member_whose_draw_is_in_flight_waits_and_answers_with_the_same_code(pool):
    engine, program, (z, x, _) = pool
    other: dict[int, str] = {}
    errors: list[BaseException] = []
    started = threading.Event()

    def other_worker() -> None:
        started.set()
        try:
            other.update(draw(engine, program, [x]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=other_worker)

    def other_worker_starts_now(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # our draw has read the free codes and is about to give them: another worker draws for x now
        if thread.is_alive() or started.is_set() or not _is_give(statement):
            return
        thread.start()
        started.wait()
        waiting_for_its_turn(engine)

    event.listen(engine, "before_cursor_execute", other_worker_starts_now)
    try:
        mine = draw(engine, program, [z, x])
    finally:
        event.remove(engine, "before_cursor_execute", other_worker_starts_now)
    thread.join(timeout=60)
    assert errors == [] and started.is_set()
    assert other == {x: mine[x]}                      # the member's one code, not a failure or a second one
    assert given(engine, program) == {x: [mine[x]], z: [mine[z]]}
    with Session(engine) as s:
        assert pool_status(session=s, program_id=program, pool="xmas") == (10, 2)
    assert draw(engine, program, [x, z]) == mine      # a retry answers the same, for good


def waiting_for_its_turn(engine: Engine, timeout: float = 5.0) -> None:
    """Until the other worker's draw waits (PostgreSQL: for a lock; SQLite: the write lock, unseen: a moment)."""
    if engine.dialect.name == "sqlite":
        time.sleep(0.2)
        return
    deadline = time.monotonic() + timeout
    with engine.connect() as c:
        while not c.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
            c.rollback()
            if time.monotonic() > deadline:
                return                                 # it did not wait: the assertions say whether that was fine
            time.sleep(0.01)


def test_a_draw_refused_by_the_unique_key_answers_with_the_code_the_other_gave(pool):
    """A worker of an older version (no turns) gives the member a code between our read of the free codes and
    our giving them: PostgreSQL refuses our second code for the member (unique key), and the draw re-reads."""
    engine, program, (z, x, _) = pool
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite: every draw holds the database's write lock from its first statement, nothing "
                    "can give a code in between (the concurrent tests cover SQLite)")
    with Session(engine) as s:
        last = s.scalar(select(func.max(CouponCode.id)))
    fired: list[bool] = []

    def old_worker_gives_x_a_code(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fired or not _is_give(statement):
            return
        fired.append(True)
        with session_scope(engine) as s:
            s.execute(update(CouponCode).where(CouponCode.id == last).values(member_id=x, assigned_at=utcnow()))

    event.listen(engine, "before_cursor_execute", old_worker_gives_x_a_code)
    try:
        mine = draw(engine, program, [z, x])
    finally:
        event.remove(engine, "before_cursor_execute", old_worker_gives_x_a_code)
    assert fired and mine[x] == "XMAS-010"
    assert given(engine, program) == {z: [mine[z]], x: ["XMAS-010"]}
    assert draw(engine, program, [x, z]) == mine


def test_many_concurrent_draws_for_one_member_give_it_one_code(pool):
    engine, program, (a, b, c) = pool
    workers = 6
    start = threading.Barrier(workers)
    answers: list[dict[int, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            answers.append(draw(engine, program, [a, b]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(answers) == workers and all(ans == answers[0] for ans in answers)
    assert set(answers[0]) == {a, b}
    assert given(engine, program) == {a: [answers[0][a]], b: [answers[0][b]]}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(CouponCode).where(
            CouponCode.member_id.is_not(None))) == 2  # type: ignore[union-attr]
    assert draw(engine, program, [c])[c] not in answers[0].values()
