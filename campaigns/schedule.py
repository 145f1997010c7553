"""Send windows and quiet hours in the member's local time.

Pure: no I/O beyond zoneinfo's own time zone data, no clock (``at`` is always passed in), so workflow
code may import it (inside ``workflow.unsafe.imports_passed_through()``). Answers depend on the machine's
time zone database: workers that replay each other's histories should share one tzdata version.

A *window* says when a campaign may send, a program's *quiet hours* say when a channel must stay silent.
An instant is allowed when it is inside the window (or there is no window) and outside quiet hours (or
there are none). Both are half-open, ``[start, end)``, in the member's local wall-clock time.

- ``DailyWindow(start, end, days)``: ``end < start`` runs over midnight (22:00-02:00 opens on the local
  date D and closes on D+1); ``start == end`` is a whole day, from ``start`` on D to ``start`` on D+1
  (so 00:00-00:00 is the calendar day D). ``days`` are ``weekday()`` values (0 = Monday) of the local date
  on which the window *opens*: Friday 22:00-02:00 covers the small hours of Saturday.
- ``QuietHours(start, end)``: every day; ``end < start`` runs over midnight. ``start == end`` is refused
  (it could mean "never" or "always"; say ``None`` for no quiet hours).

Clock changes. Every boundary is turned into a real instant for its own local date:
- a boundary whose local time does not exist (spring forward: 02:30 on the day clocks jump 02:00 -> 03:00)
  is the first real instant after the gap (03:00 new time): a window "from 02:30" opens at 03:00 that day,
  a window "until 02:30" closes at 03:00;
- a boundary whose local time happens twice (fall back: 01:30 on the day clocks go 02:00 -> 01:00) is the
  first occurrence (``fold=0``). A window 01:30-03:00 opens at the first 01:30 and stays open through the
  repeated hour; a window 00:00-01:30 closes at the first 01:30 and stays closed through the repeat.
A window or quiet period is then one contiguous span of real time, so a window 09:00-17:00 lasts 8 hours
even when a clock change falls in it, and a day's window can be empty (02:00-02:30 on a spring-forward day).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ALL_DAYS: frozenset[int] = frozenset(range(7))
# Windows repeat weekly and quiet hours daily; two weeks finds the next opening even when a clock change
# empties the nearest one (a Sunday-only 02:00-03:00 window on a spring-forward Sunday).
HORIZON_DAYS = 15

Span = tuple[datetime, datetime]  # [open, close) in UTC


class UnknownTimeZone(ValueError):
    """The name is not an IANA time zone known to this machine (e.g. ``Europe/Moscow``)."""


def _check_time(what: str, t: time) -> None:
    if not isinstance(t, time):
        raise ValueError(f"{what} must be a time of day, got {t!r}")
    if t.tzinfo is not None:
        raise ValueError(f"{what} is a local time of day and takes no time zone, got {t.isoformat()}")


@dataclass(frozen=True)
class DailyWindow:
    """When sending is allowed, in the member's local time."""

    start: time
    end: time  # end < start: over midnight; start == end: a whole day
    days: frozenset[int] = ALL_DAYS  # weekday() of the local date on which the window opens (0 = Monday)

    def __post_init__(self) -> None:
        _check_time("window start", self.start)
        _check_time("window end", self.end)
        days = frozenset(self.days)
        bad = sorted(d for d in days if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6)
        if bad:
            raise ValueError(f"window days must be weekday numbers 0 (Monday) to 6 (Sunday), got {bad}")
        object.__setattr__(self, "days", days)


@dataclass(frozen=True)
class QuietHours:
    """When sending is forbidden (per program and channel), in the member's local time, every day."""

    start: time
    end: time  # end < start: over midnight

    def __post_init__(self) -> None:
        _check_time("quiet hours start", self.start)
        _check_time("quiet hours end", self.end)
        if self.start == self.end:
            raise ValueError("quiet hours need different start and end; use no quiet hours (None) instead")


_NIGHT = QuietHours(time(21, 0), time(9, 0))

DEFAULT_QUIET_HOURS: dict[str, QuietHours | None] = {
    "sms": _NIGHT,
    "whatsapp": _NIGHT,
    "telegram": _NIGHT,
    "push": _NIGHT,
    "email": None,  # read when the member chooses
    "receipt": None,  # printed when the member is at the till
    "inbox": None,
    "direct_mail": None,
}


_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_hhmm(text: str) -> time:
    """``"09:00"`` or ``"9:00"`` -> ``time(9, 0)``."""
    if isinstance(text, str):
        m = _HHMM.fullmatch(text.strip())
        if m:
            return time(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"expected a time of day as HH:MM from 00:00 to 23:59 (e.g. 09:00), got {text!r}")


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises :class:`UnknownTimeZone` for names this machine does not know."""
    if not isinstance(name, str) or not name:
        raise UnknownTimeZone(f"expected an IANA time zone name such as Europe/Moscow, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownTimeZone(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Moscow or America/New_York"
        ) from None


# --- local boundaries to real instants -------------------------------------------------------


def _instant(d: date, t: time, tz: ZoneInfo) -> datetime:
    """The real instant (UTC) of local date ``d`` at ``t``: first occurrence if repeated, end of the gap
    if skipped."""
    wall = datetime.combine(d, t)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 reads the wall time with the offset from before the jump (landing after the gap)
    # and fold=1 with the offset from after it (landing before): the jump lies between the two. Offsets
    # change on whole seconds; find the first second with the new offset.
    a = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    b = int(first.timestamp()) + 1
    lo, hi = min(a, b), max(a, b)
    before = _offset_at(lo, tz)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(mid, tz) == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _offset_at(ts: int, tz: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(ts, tz).utcoffset()


def _spans(start: time, end: time, days: frozenset[int], tz: ZoneInfo, first: date, last: date) -> list[Span]:
    """The daily spans opening on local dates ``first``..``last`` (inclusive), merged, in order."""
    found: list[Span] = []
    d = first
    while d <= last:
        if d.weekday() in days:
            opens = _instant(d, start, tz)
            closes = _instant(d if end > start else d + timedelta(days=1), end, tz)
            if closes > opens:
                found.append((opens, closes))
        d += timedelta(days=1)
    found.sort()
    out: list[Span] = []
    for opens, closes in found:
        if out and opens <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], closes))
        else:
            out.append((opens, closes))
    return out


def _subtract(spans: list[Span], holes: list[Span]) -> Iterator[Span]:
    """``spans`` minus ``holes`` (both sorted), in order, without empty pieces."""
    i = 0
    for lo, hi in spans:
        while i < len(holes) and holes[i][1] <= lo:
            i += 1
        j = i
        cur = lo
        while j < len(holes) and holes[j][0] < hi:
            h_lo, h_hi = holes[j]
            if h_lo > cur:
                yield cur, h_lo
            cur = max(cur, h_hi)
            j += 1
        if cur < hi:
            yield cur, hi


def _aware_utc(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise ValueError(f"expected a datetime, got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"give an aware datetime (with a time zone), got naive {at.isoformat()}")
    return at.astimezone(UTC)


Quiet = QuietHours | tuple[QuietHours, ...] | None   # one period, several (the channel's and the member's), none


def _quiet_periods(quiet: Quiet) -> tuple[QuietHours, ...]:
    if quiet is None:
        return ()
    return quiet if isinstance(quiet, tuple) else (quiet,)


def _allowed_spans(at: datetime, tz: ZoneInfo, window: DailyWindow | None, quiet: Quiet,
                   days_before: int, days_after: int) -> list[Span]:
    local = at.astimezone(tz).date()
    first, last = local - timedelta(days=days_before), local + timedelta(days=days_after)
    if window is None:
        spans = [(_instant(first, time(0), tz), _instant(last + timedelta(days=2), time(0), tz))]
    else:
        spans = _spans(window.start, window.end, window.days, tz, first, last)
    for q in _quiet_periods(quiet):
        holes = _spans(q.start, q.end, ALL_DAYS, tz, first - timedelta(days=1), last + timedelta(days=1))
        spans = list(_subtract(spans, holes))
    return spans


def is_allowed(at: datetime, tz: str, window: DailyWindow | None, quiet: Quiet) -> bool:
    """True when ``at`` is inside ``window`` and outside ``quiet`` in the local time of ``tz``."""
    at = _aware_utc(at)
    if window is None and not _quiet_periods(quiet):
        return True
    # A span holding `at` opens on at's local date or up to two days before (over midnight, whole-day
    # windows, and zones that once jumped back across midnight), or the day after (fold=0 past midnight).
    spans = _allowed_spans(at, zone(tz), window, quiet, days_before=2, days_after=1)
    return any(lo <= at < hi for lo, hi in spans)


def next_allowed(at: datetime, tz: str, window: DailyWindow | None, quiet: Quiet) -> datetime | None:
    """The earliest instant ``>= at`` (in UTC) at which :func:`is_allowed` holds: ``at`` itself when sending
    is allowed now, None when it never is (the window and quiet hours never overlap, no days): nothing opens
    within ``HORIZON_DAYS`` local days, two full weeks of windows."""
    at = _aware_utc(at)
    if window is None and not _quiet_periods(quiet):
        return at
    if window is not None and not window.days:
        return None
    spans = _allowed_spans(at, zone(tz), window, quiet, days_before=2, days_after=HORIZON_DAYS)
    for lo, hi in spans:
        if hi > at:
            return max(lo, at)
    return None


def next_opening_by_zone(at: datetime, zones: Iterable[str], window: DailyWindow | None,
                         quiet: QuietHours | None) -> dict[str, datetime | None]:
    """:func:`next_allowed` for each distinct time zone, so a workflow can wake once per group of members."""
    return {name: next_allowed(at, name, window, quiet) for name in dict.fromkeys(zones)}
