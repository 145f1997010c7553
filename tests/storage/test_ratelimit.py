"""The shared rate limiter on SQLite and PostgreSQL: slots never overlap between workers, a pause moves
everyone's next slot, and a deadline takes no capacity it will not use."""

from __future__ import annotations

import threading

import pytest

from channels.ratelimit import SharedRateLimiter
from storage.db import make_engine


@pytest.fixture
def engine(any_db_url):
    e = make_engine(any_db_url)
    yield e
    e.dispose()


def test_slots_are_spaced_by_the_rate_from_now(engine):
    limiter = SharedRateLimiter(engine, clock=lambda: 1000.0)
    assert limiter.reserve("acct", 10.0, 3) == pytest.approx([1000.0, 1000.1, 1000.2])
    assert limiter.reserve("acct", 10.0, 2) == pytest.approx([1000.3, 1000.4])
    assert limiter.reserve("other", 10.0, 1) == pytest.approx([1000.0])


def test_workers_reserving_at_once_never_get_the_same_slot(engine):
    limiters = [SharedRateLimiter(engine, clock=lambda: 5000.0) for _ in range(4)]
    got: list[float] = []
    lock = threading.Lock()

    def worker(lim: SharedRateLimiter) -> None:
        for _ in range(10):
            slots = lim.reserve("acct", 50.0, 3)
            with lock:
                got.extend(slots)

    threads = [threading.Thread(target=worker, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got.sort()
    assert len(got) == 120
    assert all(b - a == pytest.approx(0.02) for a, b in zip(got, got[1:]))   # one schedule, no overlap


def test_a_pause_moves_the_next_slot_of_every_worker(engine):
    now = [100.0]
    mine, theirs = (SharedRateLimiter(engine, clock=lambda: now[0]) for _ in range(2))
    mine.push_back("acct", 7.0)
    assert theirs.reserve("acct", 1.0, 1) == pytest.approx([107.0])


def test_a_deadline_reserves_only_the_slots_before_it(engine):
    limiter = SharedRateLimiter(engine, clock=lambda: 0.0)
    assert limiter.reserve("acct", 2.0, 10, not_after=1.2) == pytest.approx([0.0, 0.5, 1.0])
    assert limiter.reserve("acct", 2.0, 1, not_after=1.2) == []            # nothing left before it
    assert limiter.reserve("acct", 2.0, 1) == pytest.approx([1.5])         # the unused slots were not taken
