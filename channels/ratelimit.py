"""A rate limit per provider account that holds across every worker: a shared schedule in the database.

The limiter is GCRA in its simplest form. One row per key keeps ``tat``, the theoretical arrival time of
the next message. Reserving ``n`` messages at ``rate`` per second is one atomic statement::

    INSERT ... ON CONFLICT (key) DO UPDATE SET tat = max(tat, now) + n / rate RETURNING tat

and gives the caller the slots ``start + i / rate`` (start = the returned tat - n / rate), which no other
worker will get. A worker sleeps until each slot and sends then, so all workers together never go faster
than ``rate`` whatever their number (the slots are spaced; there is no burst). Reserving a block costs one
short write, so callers reserve about a second's worth at a time, not one message at a time.

When the provider says slow down (HTTP 429, Telegram's RetryAfter, FCM's Retry-After), ``push_back`` moves
``tat`` to the end of the pause for every worker at once; in the worker that was told, slots it had
already reserved are given up and taken again after the pause (``take``). Another worker learns of the
pause with its next reservation, so at most the block it holds (about a second of messages) still goes.

Clocks: slots are wall-clock times (``time.time()``); workers on several machines need synchronized
clocks (NTP), which a rate of tens per second tolerates easily.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import case
from sqlalchemy.engine import Engine

from storage.db import dialect_insert, session_scope
from storage.tables import RateLimit, utcnow

TICK_S = 5.0


class SharedRateLimiter:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._paused_until: dict[str, float] = {}

    def _advance(self, s: Any, key: str, *, floor: float, add: float) -> float:
        """tat = max(tat, floor) + add in ``s``'s transaction (it takes the row's lock); returns the new tat."""
        table = RateLimit.__table__
        stmt = dialect_insert(self._engine, table).values(key=key, tat=floor + add, updated_at=utcnow())
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={"tat": case((table.c.tat > floor, table.c.tat), else_=floor) + add,
                  "updated_at": utcnow()},
        ).returning(table.c.tat)
        return float(s.execute(stmt).scalar_one())

    def reserve(self, key: str, rate: float, n: int, *, not_after: float | None = None) -> list[float]:
        """Reserve up to ``n`` consecutive slots (wall-clock times) for messages on ``key`` at ``rate`` per
        second; with ``not_after``, only the slots up to that time (possibly none), so no capacity is taken
        that the caller will not use."""
        if rate <= 0 or n < 1:
            raise ValueError("rate must be positive and n at least 1")
        step = 1.0 / rate
        with session_scope(self._engine) as s:
            if not_after is None:
                tat = self._advance(s, key, floor=self._clock(), add=n * step)
                start = tat - n * step
            else:
                start = self._advance(s, key, floor=self._clock(), add=0.0)   # locks the row; tat unchanged
                n = max(0, min(n, math.floor((not_after - start) / step) + 1))
                if n:
                    self._advance(s, key, floor=start, add=n * step)
        return [start + i * step for i in range(n)]

    def push_back(self, key: str, seconds: float) -> None:
        """Nobody sends on ``key`` for ``seconds`` from now (the provider asked us to wait)."""
        until = self._clock() + max(0.0, seconds)
        self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)
        with session_scope(self._engine) as s:
            self._advance(s, key, floor=until, add=0.0)

    async def wait_for(self, slot: float, tick: Callable[[], None] | None = None) -> None:
        """Sleep until ``slot``, calling ``tick`` (an activity heartbeat) at least every ``TICK_S``."""
        while (delay := slot - self._clock()) > 0:
            await asyncio.sleep(min(delay, TICK_S))
            if tick is not None:
                tick()

    def now(self) -> float:
        return self._clock()

    async def take(self, key: str, rate: float, slot: float, tick: Callable[[], None] | None = None,
                   deadline: float | None = None) -> bool:
        """Wait for a reserved ``slot``; if the account was paused meanwhile (``push_back`` here), give the
        slot up and wait for a new one after the pause, so nothing goes out during it. False (without
        waiting) when the slot comes after ``deadline``: the caller must not send then."""
        while True:
            if deadline is not None and slot > deadline:
                return False
            await self.wait_for(slot, tick)
            until = self._paused_until.get(key, 0.0)
            if not (until > self._clock() and slot < until):
                return True
            slots = await asyncio.to_thread(self.reserve, key, rate, 1, not_after=deadline)
            if not slots:
                return False
            slot = slots[0]

    def block_size(self, rate: float, *, seconds: float = 1.0) -> int:
        """How many slots to reserve at once: about ``seconds`` worth, at least 1."""
        return max(1, int(rate * seconds))
