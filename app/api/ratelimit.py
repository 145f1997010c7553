"""Rate limits on the endpoints anyone can reach without a key: members' links (``/p/``, ``/c/``, ``/u/``),
tracking (``/t/o/``, ``/t/c/``) and providers' webhooks (``/webhooks/``).

Token buckets: a bucket holds up to ``burst`` tokens and gains ``per_s`` a second; a request takes one, and
a request that finds less than one gets 429 with ``Retry-After`` (whole seconds until a token is back)
without taking anything. Each group has a bucket per client address (IPv6 per /64: one subscriber's
network) and, for links and tracking, one per token in the path (one member's link, whoever asks).

In-process: each API process holds its own buckets (several processes behind a load balancer each allow the
full rate). Memory is bounded: at most ``max_keys`` buckets a limiter, the least recently used forgotten
first (a forgotten bucket comes back full, which only ever allows more). The client address is the ASGI
scope's, which uvicorn takes from ``X-Forwarded-For`` only for proxies in ``FORWARDED_ALLOW_IPS``.

Why our own: what it needs is ~60 lines (a token bucket with a burst, an injected clock for tests, bounded
memory, one ASGI middleware for path prefixes); slowapi wants a decorator and a ``Request`` argument on
every route, fastapi-limiter wants Redis, and ``limits`` has windows but no token bucket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.responses import Response

from app.api.small_page import small_page
from app.settings import Settings

LIMITED = Counter("clarion_http_rate_limited", "requests answered 429 by the public endpoints' rate limits",
                  ["group", "by"])


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int


class TokenBuckets:
    """Token buckets by key, all at one rate."""

    def __init__(self, rate: Rate, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 50_000) -> None:
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}     # key → (tokens, when counted); oldest use first
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the request may go (it took a token), else the seconds until a token is there."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(key, (float(self.rate.burst), now))
            tokens = min(float(self.rate.burst), tokens + max(0.0, now - then) * self.rate.per_s)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate.per_s
            self._buckets[key] = (tokens - 1 if wait == 0.0 else tokens, now)    # to the end: most recent
            if len(self._buckets) > self.max_keys:
                del self._buckets[next(iter(self._buckets))]
            return wait

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class Group:
    """Paths starting with one of ``prefixes``, limited per client address and (when set) per token: the
    rest of the path after the prefix."""

    name: str
    prefixes: tuple[str, ...]
    per_client: TokenBuckets
    per_token: TokenBuckets | None = None
    html: bool = False      # members open these in a browser: the 429 is a small page


class RateLimits:
    """The groups of one API process; ``clock`` is read by every bucket (tests set it)."""

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> RateLimits:
        s = settings

        def buckets(per_s: float, burst: int) -> TokenBuckets:
            return TokenBuckets(Rate(per_s, burst), clock=clock)

        if not s.rate_limits:
            return cls([])
        return cls([
            Group("links", ("/p/", "/c/", "/u/"), buckets(s.rate_links_per_s, s.rate_links_burst),
                  buckets(s.rate_token_per_s, s.rate_token_burst), html=True),
            Group("tracking", ("/t/o/", "/t/c/"), buckets(s.rate_tracking_per_s, s.rate_tracking_burst),
                  buckets(s.rate_token_per_s, s.rate_token_burst)),
            Group("webhooks", ("/webhooks/",), buckets(s.rate_webhooks_per_s, s.rate_webhooks_burst)),
        ])

    def set_clock(self, clock: Callable[[], float]) -> None:
        for g in self.groups:
            for b in (g.per_client, g.per_token):
                if b is not None:
                    b.clock = clock

    def check(self, path: str, client: str | None) -> tuple[Group, str, float] | None:
        """None when the request may go; else its group, what limited it (``client`` or ``token``) and the
        seconds to wait."""
        for group in self.groups:
            prefix = next((p for p in group.prefixes if path.startswith(p)), None)
            if prefix is None:
                continue
            wait = group.per_client.take(client_key(client))
            if wait:
                return group, "client", wait
            if group.per_token is not None and len(path) > len(prefix):
                wait = group.per_token.take(hashlib.blake2b(path.encode(), digest_size=16).hexdigest())
                if wait:
                    return group, "token", wait
            return None
        return None


def client_key(host: str | None) -> str:
    """The address a client is limited by: IPv4 as it is, IPv6 by its /64."""
    if not host:
        return "-"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def _too_many(group: Group, retry_after: int) -> Response:
    headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    if group.html:
        page = small_page("en", "Too many requests",
                          f"<p>Too many requests from here. Please try again in {retry_after} s.</p>", 429)
        page.headers.update(headers)
        return page
    return JSONResponse({"error": "rate_limited", "message": f"too many requests: try again in {retry_after} s"},
                        status_code=429, headers=headers)


class RateLimitMiddleware:
    """ASGI middleware: requests over their group's limits get 429 before any route runs."""

    def __init__(self, app: Any, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.limits.groups:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        limited = self.limits.check(scope.get("path", ""), client[0] if client else None)
        if limited is None:
            await self.app(scope, receive, send)
            return
        group, by, wait = limited
        LIMITED.labels(group.name, by).inc()
        await _too_many(group, max(1, math.ceil(wait)))(scope, receive, send)

