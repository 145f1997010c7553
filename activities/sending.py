"""Sending a chunk of claimed deliveries: each to its channel's adapter (``channels.registry``), paced by
the provider account's shared rate limit (``channels.ratelimit``), each channel error turned into an
outcome. Nothing here touches a delivery row: the caller records the outcomes.

    sent / queued        the provider (or Clarion's own store) has it
    permanent            never to this address: the caller tries the member's next channel (fallback)
    in_doubt             the provider may have it: never resent
    rate_limited         nothing sent; the account is paused for everyone (push_back) and the message is
                         tried again here, at most ``RATE_LIMIT_TRIES`` times, then left for a later retry
    paced                nothing sent: its rate slot comes after the page's deadline (a slow rate); left
                         planned for the next round, so a claimed message never waits past the timeout
    denied               nothing sent: consent, asked again right before a paced block went, says no
    account              nothing sent: the provider refused our account (a configuration problem); the
                         message waits like a transient one, and the page's retry says why
    transient            nothing sent; left for a later retry of the page

Push goes to every registered device of the member: sent when any device took it; tokens FCM calls
UNREGISTERED come back in ``dead_tokens`` for the caller to delete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from activities.messages import Target
from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    SendReceipt,
    TransientChannelError,
)
from channels.ratelimit import SharedRateLimiter
from channels.registry import Route

RATE_LIMIT_TRIES = 4
DEFAULT_PAUSE_S = 1.0        # a 429 that does not say how long to wait
LONGEST_WAIT_S = 20.0        # a longer pause is waited out by a retry of the page (next_retry_delay), not here
# while a chunk sends, a heartbeat at most this often: a slow provider (the pages in flight share a few SMTP
# connections) must not let the 30 s heartbeat timeout lapse and Temporal start the page again meanwhile
HEARTBEAT_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class SendOutcome:
    kind: str                              # sent | queued | permanent | in_doubt | rate_limited | transient
    code: str | None = None
    provider_message_id: str | None = None
    revoke_address: bool = False
    retry_after: float | None = None
    segments: int = 1
    dead_tokens: tuple[str, ...] = ()
    sandbox: bool = False


def outcome_of(receipt: SendReceipt, *, sandbox: bool) -> SendOutcome:
    return SendOutcome("queued" if receipt.queued else "sent", provider_message_id=receipt.provider_message_id,
                       segments=receipt.segments, sandbox=sandbox)


def outcome_of_error(exc: Exception) -> SendOutcome:
    """The one place channel errors become outcomes."""
    if isinstance(exc, PermanentChannelError):
        return SendOutcome("permanent", exc.code, revoke_address=exc.revoke_address)
    if isinstance(exc, InDoubtChannelError):
        return SendOutcome("in_doubt", exc.code)
    if isinstance(exc, RateLimited):
        return SendOutcome("rate_limited", exc.code, retry_after=exc.retry_after)
    if isinstance(exc, ProviderAccountError):
        return SendOutcome("account", exc.code)
    if isinstance(exc, TransientChannelError):
        return SendOutcome("transient", exc.code)
    raise exc


def throttled(fn: Callable[[], None], every_s: float) -> Callable[[], None]:
    """``fn``, called at most once every ``every_s`` seconds (the first call after that long)."""
    last = time.monotonic()

    def call() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            fn()
    return call


class Sender:
    def __init__(self, *, limiter: SharedRateLimiter, heartbeat_every_s: float = HEARTBEAT_EVERY_S) -> None:
        self._limiter = limiter
        self._heartbeat_every_s = heartbeat_every_s

    async def send_all(self, items: Sequence[tuple[Target, OutboundMessage]], routes: dict[str, Route], *,
                       heartbeat: Callable[[], None] = lambda: None,
                       deadline: float | None = None,
                       recheck: Callable[[list[Target]], Awaitable[dict[int, str]]] | None = None,
                       ) -> list[SendOutcome]:
        """Outcomes in the order of ``items``. ``deadline`` (the limiter's clock): no rate-limited message
        waits for a slot after it. ``recheck``: consent asked again right before each paced block goes
        (delivery id → the reason it may no longer go), so a member who unsubscribes while the chunk waits for
        its rate slots gets nothing after the unsubscribe committed."""
        results: list[SendOutcome | None] = [None] * len(items)
        sending = throttled(heartbeat, self._heartbeat_every_s)   # as messages go (each is a provider call)
        by_channel: dict[str, list[int]] = {}
        for i, (t, _) in enumerate(items):
            by_channel.setdefault(t.channel, []).append(i)

        async def one(i: int, slot: float | None) -> None:
            t, msg = items[i]
            route = routes[t.channel]
            if slot is not None and route.rate_key and route.rate_per_s:
                if not await self._limiter.take(route.rate_key, route.rate_per_s, slot, heartbeat, deadline):
                    results[i] = SendOutcome("paced")
                    return
            results[i] = await self._send_limited(t, msg, route, heartbeat, deadline)
            sending()

        async def channel_group(indexes: list[int], route: Route) -> None:
            if not route.rate_key or not route.rate_per_s:
                await asyncio.gather(*(one(i, None) for i in indexes))
                return
            block = self._limiter.block_size(route.rate_per_s)
            for start in range(0, len(indexes), block):
                part = indexes[start:start + block]
                slots = await asyncio.to_thread(self._limiter.reserve, route.rate_key, route.rate_per_s, len(part),
                                                not_after=deadline)
                heartbeat()
                for i in part[len(slots):]:       # no slot before the deadline: not sent, left for later
                    results[i] = SendOutcome("paced")
                go = list(zip(part, slots, strict=False))
                if recheck is not None and go:
                    if slots[0] > self._limiter.now():
                        await self._limiter.wait_for(slots[0], heartbeat)
                    denied = await recheck([items[i][0] for i, _ in go])
                    for i, _ in go:
                        reason = denied.get(items[i][0].delivery_id)
                        if reason is not None:
                            results[i] = SendOutcome("denied", reason)
                    go = [(i, slot) for i, slot in go if results[i] is None]
                await asyncio.gather(*(one(i, slot) for i, slot in go))
                if len(slots) < len(part):
                    for i in indexes[start + block:]:
                        results[i] = SendOutcome("paced")
                    return

        await asyncio.gather(*(channel_group(ix, routes[ch]) for ch, ix in by_channel.items()))
        return [r if r is not None else SendOutcome("transient", "not_sent") for r in results]

    async def _send_limited(self, t: Target, msg: OutboundMessage, route: Route,
                            heartbeat: Callable[[], None] = lambda: None,
                            deadline: float | None = None) -> SendOutcome:
        """Send; on a rate limit pause the account for everyone and try again (a few times)."""
        outcome = SendOutcome("transient", "not_sent")
        for _ in range(RATE_LIMIT_TRIES):
            outcome = await self._send(t, msg, route)
            if outcome.kind != "rate_limited":
                return outcome
            pause = outcome.retry_after if outcome.retry_after is not None else DEFAULT_PAUSE_S
            if route.rate_key and route.rate_per_s:
                await asyncio.to_thread(self._limiter.push_back, route.rate_key, pause)
            if pause > LONGEST_WAIT_S:
                return outcome
            if route.rate_key and route.rate_per_s:
                slots = await asyncio.to_thread(self._limiter.reserve, route.rate_key, route.rate_per_s, 1,
                                                not_after=deadline)
                if not slots or not await self._limiter.take(route.rate_key, route.rate_per_s, slots[0],
                                                             heartbeat, deadline):
                    return outcome
            else:
                await self._limiter.wait_for(self._limiter.now() + pause, heartbeat)
        return outcome

    async def _send(self, t: Target, msg: OutboundMessage, route: Route) -> SendOutcome:
        if t.channel == "push":
            return await self._send_push(t, msg, route)
        try:
            receipt = await route.channel.send(msg)
        except (PermanentChannelError, InDoubtChannelError, TransientChannelError) as exc:
            return outcome_of_error(exc)
        return outcome_of(receipt, sandbox=route.sandbox)

    async def _send_push(self, t: Target, msg: OutboundMessage, route: Route) -> SendOutcome:
        """Every device of the member. Sent when any took it; otherwise the most hopeful failure."""
        async def device(token: str) -> tuple[str, SendOutcome]:
            try:
                return token, outcome_of(await route.channel.send(replace(msg, to=token)), sandbox=route.sandbox)
            except (PermanentChannelError, InDoubtChannelError, TransientChannelError) as exc:
                return token, outcome_of_error(exc)

        results = await asyncio.gather(*(device(tok) for tok in t.push_tokens))
        dead = tuple(tok for tok, o in results if o.kind == "permanent" and o.revoke_address)
        sent = [o for _, o in results if o.kind == "sent"]
        if sent:
            return replace(sent[0], dead_tokens=dead,
                           provider_message_id=";".join(o.provider_message_id or "" for o in sent)[:255])
        for kind in ("in_doubt", "rate_limited", "transient", "permanent"):
            found = [o for _, o in results if o.kind == kind]
            if found:
                # every device gone: the member has no push address left (the caller falls back)
                return replace(found[0], dead_tokens=dead, revoke_address=False)
        return SendOutcome("permanent", "no_device", dead_tokens=dead)
