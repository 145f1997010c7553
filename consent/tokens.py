"""Signed member links: HMAC-SHA256 over a compact payload, with expiry and constant-time compare.

A tampered, expired or unknown token always gets the same answer (:class:`BadToken`), so the
caller cannot tell them apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass


class BadToken(Exception):
    """The token is not valid (tampered, expired, wrong purpose): one answer for all."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    secret: bytes

    def sign(self, purpose: str, payload: dict, *, ttl_s: int, now: float | None = None) -> str:
        if "p" in payload or "e" in payload:
            raise ValueError("payload keys 'p' and 'e' are reserved (purpose, expiry)")
        body = {**payload, "p": purpose, "e": int((time.time() if now is None else now) + ttl_s)}
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(self.secret, raw, hashlib.sha256).digest()[:20]
        return f"{_b64(raw)}.{_b64(mac)}"

    def verify(self, purpose: str, token: str, *, now: float | None = None) -> dict:
        try:
            raw_b64, mac_b64 = token.split(".", 1)
            raw, mac = _unb64(raw_b64), _unb64(mac_b64)
        except (ValueError, TypeError) as exc:
            raise BadToken() from exc
        expected = hmac.new(self.secret, raw, hashlib.sha256).digest()[:20]
        if not hmac.compare_digest(mac, expected):
            raise BadToken()
        try:
            body = json.loads(raw)
        except ValueError as exc:  # pragma: no cover - a valid MAC over bad JSON is our own bug
            raise BadToken() from exc
        if body.get("p") != purpose or int(body.get("e", 0)) < (time.time() if now is None else now):
            raise BadToken()
        return body


UNSUBSCRIBE = "unsub"
UNSUBSCRIBE_TTL_S = 400 * 24 * 3600  # links in old emails keep working for more than a year
