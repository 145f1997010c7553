"""What every requests-based adapter (twilio, pyfcm) shares: the Retry-After header, and whether a failed
request ever reached the provider.

    requests.RequestException (no answer)
    ├── ConnectTimeout, SSLError, ConnectionError caused by urllib3 NewConnectionError
    │   (refused, unreachable, DNS: no connection, nothing sent)   → TransientChannelError
    ├── ReadTimeout (request sent, no answer in time)               → InDoubtChannelError
    └── any other ConnectionError / RequestException (peer closed, reset, broken answer) → InDoubtChannelError
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from urllib3.exceptions import NewConnectionError

from channels.base import ChannelError, InDoubtChannelError, TransientChannelError


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _never_connected(exc: BaseException) -> bool:
    """True when a requests error shows no connection was made (so nothing was sent)."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, NewConnectionError):
            return True
        todo.extend([getattr(e, "reason", None), e.__cause__, e.__context__, *e.args])
    return False


def map_transport_error(exc: requests.RequestException, *, label: str = "sms", provider: str = "Twilio") -> ChannelError:
    kind = type(exc).__name__
    if _never_connected(exc):
        return TransientChannelError(f"{label}: cannot reach {provider} ({kind}); nothing was sent")
    return InDoubtChannelError(f"{label}: no answer from {provider} after sending ({kind}); do not resend blindly")
