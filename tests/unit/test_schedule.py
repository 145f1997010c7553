"""Send windows and quiet hours in the member's time zone, across clock changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.schedule import (
    DEFAULT_QUIET_HOURS,
    DailyWindow,
    QuietHours,
    UnknownTimeZone,
    is_allowed,
    next_allowed,
    next_opening_by_zone,
    parse_hhmm,
    zone,
)
from storage.tables import ChannelName

DAYTIME = DailyWindow(time(10), time(20))
NIGHT = QuietHours(time(21), time(9))
MON_FRI = frozenset(range(5))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone(tz), fold=fold)


# --- same instant, different zones ----------------------------------------------------------


def test_same_instant_is_morning_in_kaliningrad_afternoon_in_vladivostok():
    at = utc(2026, 6, 1, 7, 30)  # Kaliningrad 09:30, Moscow 10:30, Vladivostok 17:30
    assert not is_allowed(at, "Europe/Kaliningrad", DAYTIME, NIGHT)
    assert is_allowed(at, "Europe/Moscow", DAYTIME, NIGHT)
    assert is_allowed(at, "Asia/Vladivostok", DAYTIME, NIGHT)
    assert next_allowed(at, "Europe/Kaliningrad", DAYTIME, NIGHT) == utc(2026, 6, 1, 8, 0)
    assert next_allowed(at, "Europe/Moscow", DAYTIME, NIGHT) == at
    assert next_allowed(at, "Asia/Vladivostok", DAYTIME, NIGHT) == at


def test_evening_in_moscow_is_night_in_vladivostok_and_waits_for_its_morning():
    at = utc(2026, 1, 15, 14, 0)  # Kaliningrad 16:00, Moscow 17:00, Vladivostok 00:00 on the 16th
    assert next_allowed(at, "Europe/Kaliningrad", DAYTIME, NIGHT) == at
    assert next_allowed(at, "Europe/Moscow", DAYTIME, NIGHT) == at
    assert next_allowed(at, "Asia/Vladivostok", DAYTIME, NIGHT) == utc(2026, 1, 16, 0, 0)  # 10:00 local


def test_next_opening_by_zone_answers_once_per_distinct_zone():
    at = utc(2026, 6, 1, 5, 0)
    got = next_opening_by_zone(at, ["Europe/Moscow", "Asia/Vladivostok", "Europe/Moscow"], DAYTIME, NIGHT)
    assert got == {"Europe/Moscow": utc(2026, 6, 1, 7, 0), "Asia/Vladivostok": at}
    assert next_opening_by_zone(at, ["UTC"], DailyWindow(time(22), time(2)), NIGHT) == {"UTC": None}


# --- spring forward -------------------------------------------------------------------------


def test_window_opening_in_new_york_spring_gap_opens_when_clocks_reach_three():
    # 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC); 02:30 does not exist that day
    w = DailyWindow(time(2, 30), time(4))
    assert next_allowed(utc(2026, 3, 8, 5, 0), "America/New_York", w, None) == utc(2026, 3, 8, 7, 0)
    assert not is_allowed(utc(2026, 3, 8, 6, 59, 59), "America/New_York", w, None)
    assert is_allowed(utc(2026, 3, 8, 7, 0), "America/New_York", w, None)
    assert not is_allowed(utc(2026, 3, 8, 8, 0), "America/New_York", w, None)  # 04:00 EDT
    # the day before and after it opens at 02:30 proper
    assert next_allowed(utc(2026, 3, 7, 5, 0), "America/New_York", w, None) == utc(2026, 3, 7, 7, 30)
    assert next_allowed(utc(2026, 3, 9, 0, 0), "America/New_York", w, None) == utc(2026, 3, 9, 6, 30)


def test_window_closing_in_new_york_spring_gap_closes_when_clocks_reach_three():
    w = DailyWindow(time(0), time(2, 30))
    assert is_allowed(utc(2026, 3, 8, 6, 59), "America/New_York", w, None)  # 01:59 EST
    assert not is_allowed(utc(2026, 3, 8, 7, 0), "America/New_York", w, None)  # 03:00 EDT
    assert next_allowed(utc(2026, 3, 8, 7, 0), "America/New_York", w, None) == utc(2026, 3, 9, 4, 0)


def test_window_entirely_inside_the_gap_is_skipped_that_day():
    w = DailyWindow(time(2, 10), time(2, 40))
    assert next_allowed(utc(2026, 3, 8, 5, 0), "America/New_York", w, None) == utc(2026, 3, 9, 6, 10)


def test_berlin_spring_gap_window_opens_at_three_cest():
    # 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC)
    w = DailyWindow(time(2, 30), time(5))
    assert next_allowed(utc(2026, 3, 28, 23, 0), "Europe/Berlin", w, None) == utc(2026, 3, 29, 1, 0)
    assert not is_allowed(utc(2026, 3, 29, 0, 59), "Europe/Berlin", w, None)
    assert is_allowed(utc(2026, 3, 29, 1, 0), "Europe/Berlin", w, None)


def test_berlin_quiet_hours_end_at_nine_summer_time_on_the_change_day():
    at = utc(2026, 3, 29, 0, 0)  # 01:00 CET, quiet
    assert not is_allowed(at, "Europe/Berlin", None, NIGHT)
    assert next_allowed(at, "Europe/Berlin", None, NIGHT) == utc(2026, 3, 29, 7, 0)  # 09:00 CEST


def test_new_york_morning_window_after_spring_forward_is_an_hour_earlier_in_utc():
    saturday_night = utc(2026, 3, 8, 3, 0)  # 22:00 EST on the 7th
    assert next_allowed(saturday_night, "America/New_York", DAYTIME, NIGHT) == utc(2026, 3, 8, 14, 0)  # 10 EDT
    friday_night = utc(2026, 3, 7, 3, 0)
    assert next_allowed(friday_night, "America/New_York", DAYTIME, NIGHT) == utc(2026, 3, 7, 15, 0)  # 10 EST


# --- fall back ------------------------------------------------------------------------------


def test_window_opening_in_new_york_repeated_hour_opens_at_first_occurrence():
    # 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC); 01:30 happens at 05:30 and 06:30 UTC
    w = DailyWindow(time(1, 30), time(3))
    assert next_allowed(utc(2026, 11, 1, 4, 0), "America/New_York", w, None) == utc(2026, 11, 1, 5, 30)
    assert is_allowed(local("America/New_York", 2026, 11, 1, 1, 15, fold=1), "America/New_York", w, None)
    assert not is_allowed(utc(2026, 11, 1, 8, 0), "America/New_York", w, None)  # 03:00 EST


def test_window_closing_in_new_york_repeated_hour_stays_closed_through_the_repeat():
    w = DailyWindow(time(0), time(1, 30))
    assert is_allowed(utc(2026, 11, 1, 5, 29), "America/New_York", w, None)  # 01:29 EDT
    assert not is_allowed(utc(2026, 11, 1, 5, 30), "America/New_York", w, None)
    second_115 = local("America/New_York", 2026, 11, 1, 1, 15, fold=1)  # 06:15 UTC, reads 01:15
    assert not is_allowed(second_115, "America/New_York", w, None)
    assert next_allowed(second_115, "America/New_York", w, None) == utc(2026, 11, 2, 5, 0)  # 00:00 EST


def test_window_over_fall_back_lasts_its_real_length_plus_the_repeated_hour():
    w = DailyWindow(time(0), time(6))
    opens = next_allowed(utc(2026, 11, 1, 0, 0), "America/New_York", w, None)
    assert opens == utc(2026, 11, 1, 4, 0)
    assert is_allowed(utc(2026, 11, 1, 10, 59), "America/New_York", w, None)
    assert not is_allowed(utc(2026, 11, 1, 11, 0), "America/New_York", w, None)  # 7 real hours


def test_berlin_window_opening_in_repeated_hour_uses_summer_time_occurrence():
    # 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 is 00:30 UTC first, 01:30 UTC second
    w = DailyWindow(time(2, 30), time(4))
    assert next_allowed(utc(2026, 10, 24, 22, 0), "Europe/Berlin", w, None) == utc(2026, 10, 25, 0, 30)
    assert is_allowed(utc(2026, 10, 25, 1, 15), "Europe/Berlin", w, None)  # 02:15 CET, second pass
    assert not is_allowed(utc(2026, 10, 25, 3, 0), "Europe/Berlin", w, None)  # 04:00 CET


def test_new_york_quiet_hours_end_at_nine_standard_time_on_the_change_day():
    at = utc(2026, 11, 1, 5, 0)  # 01:00 EDT, quiet
    assert next_allowed(at, "America/New_York", None, NIGHT) == utc(2026, 11, 1, 14, 0)  # 09:00 EST


# --- days and midnight ----------------------------------------------------------------------


def test_weekday_window_skips_the_weekend():
    w = DailyWindow(time(10), time(20), MON_FRI)
    saturday = utc(2026, 6, 6, 12, 0)
    assert not is_allowed(saturday, "UTC", w, None)
    assert next_allowed(saturday, "UTC", w, None) == utc(2026, 6, 8, 10, 0)
    assert next_allowed(utc(2026, 6, 5, 19, 59), "UTC", w, None) == utc(2026, 6, 5, 19, 59)
    assert next_allowed(utc(2026, 6, 5, 20, 0), "UTC", w, None) == utc(2026, 6, 8, 10, 0)


def test_weekday_is_the_members_local_weekday():
    w = DailyWindow(time(10), time(20), frozenset({0}))  # Mondays
    at = utc(2026, 6, 7, 23, 0)  # Sunday in UTC, Monday 09:00 in Vladivostok
    assert next_allowed(at, "Asia/Vladivostok", w, None) == utc(2026, 6, 8, 0, 0)
    assert next_allowed(at, "Europe/Kaliningrad", w, None) == utc(2026, 6, 8, 8, 0)


def test_over_midnight_window_belongs_to_the_day_it_opens():
    w = DailyWindow(time(22), time(2), frozenset({4}))  # Friday night
    assert is_allowed(utc(2026, 6, 6, 1, 0), "UTC", w, None)  # Saturday 01:00
    assert not is_allowed(utc(2026, 6, 6, 2, 0), "UTC", w, None)
    assert not is_allowed(utc(2026, 6, 6, 23, 0), "UTC", w, None)  # Saturday night
    assert not is_allowed(utc(2026, 6, 5, 1, 0), "UTC", w, None)  # Thursday's night, Friday 01:00
    assert next_allowed(utc(2026, 6, 6, 2, 0), "UTC", w, None) == utc(2026, 6, 12, 22, 0)


def test_start_equal_to_end_is_a_whole_day():
    weekend = DailyWindow(time(0), time(0), frozenset({5, 6}))
    assert is_allowed(utc(2026, 6, 6, 0, 0), "UTC", weekend, None)
    assert is_allowed(utc(2026, 6, 7, 23, 59, 59), "UTC", weekend, None)
    assert not is_allowed(utc(2026, 6, 8, 0, 0), "UTC", weekend, None)
    assert next_allowed(utc(2026, 6, 8, 0, 0), "UTC", weekend, None) == utc(2026, 6, 13, 0, 0)


def test_over_midnight_quiet_hours_split_the_window():
    w = DailyWindow(time(8), time(23))
    q = QuietHours(time(22), time(9))
    assert next_allowed(utc(2026, 6, 1, 8, 0), "UTC", w, q) == utc(2026, 6, 1, 9, 0)
    assert is_allowed(utc(2026, 6, 1, 21, 59), "UTC", w, q)
    assert next_allowed(utc(2026, 6, 1, 22, 0), "UTC", w, q) == utc(2026, 6, 2, 9, 0)


def test_quiet_hours_are_half_open():
    q = QuietHours(time(21), time(9))
    assert is_allowed(utc(2026, 6, 1, 20, 59, 59, 999999), "UTC", None, q)
    assert not is_allowed(utc(2026, 6, 1, 21, 0), "UTC", None, q)
    assert not is_allowed(utc(2026, 6, 2, 8, 59, 59), "UTC", None, q)
    assert is_allowed(utc(2026, 6, 2, 9, 0), "UTC", None, q)


def test_window_inside_quiet_hours_never_opens():
    assert next_allowed(utc(2026, 6, 1), "Europe/Moscow", DailyWindow(time(22), time(2)), NIGHT) is None
    assert next_allowed(utc(2026, 6, 1), "UTC", DailyWindow(time(10), time(20), frozenset()), None) is None


def test_no_window_and_no_quiet_hours_is_always_allowed():
    at = datetime(2026, 6, 1, 3, 0, tzinfo=timezone(timedelta(hours=5)))
    assert is_allowed(at, "Asia/Vladivostok", None, None)
    assert next_allowed(at, "Asia/Vladivostok", None, None) == at
    assert next_allowed(at, "Asia/Vladivostok", None, None).tzinfo is UTC


# --- inputs ---------------------------------------------------------------------------------


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError, match="aware"):
        is_allowed(datetime(2026, 6, 1, 12), "UTC", DAYTIME, None)
    with pytest.raises(ValueError, match="aware"):
        next_allowed(datetime(2026, 6, 1, 12), "UTC", None, None)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "/etc/passwd", "../zoneinfo", "Europe", "europe/moscow "])
def test_unknown_time_zone_is_a_clear_value_error(name):
    with pytest.raises(UnknownTimeZone, match="time zone"):
        zone(name)
    with pytest.raises(ValueError):
        next_allowed(utc(2026, 6, 1), name, DAYTIME, None)


def test_zone_is_cached():
    assert zone("Europe/Moscow") is zone("Europe/Moscow")


@pytest.mark.parametrize("text,expected", [("09:00", time(9)), ("9:05", time(9, 5)), (" 23:59 ", time(23, 59)),
                                           ("00:00", time(0))])
def test_parse_hhmm(text, expected):
    assert parse_hhmm(text) == expected


@pytest.mark.parametrize("text", ["24:00", "9", "09:60", "9:5", "0900", "09:00:00", "", "nine", None])
def test_parse_hhmm_refuses_anything_else(text):
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm(text)


def test_bad_days_and_equal_quiet_bounds_are_refused():
    with pytest.raises(ValueError, match="weekday"):
        DailyWindow(time(9), time(17), frozenset({7}))
    with pytest.raises(ValueError, match="None"):
        QuietHours(time(9), time(9))
    assert DailyWindow(time(9), time(17), {0, 1}).days == frozenset({0, 1})  # type: ignore[arg-type]


def test_default_quiet_hours_cover_every_channel():
    assert set(DEFAULT_QUIET_HOURS) == {c.value for c in ChannelName}
    for channel in ("sms", "whatsapp", "telegram", "push"):
        assert DEFAULT_QUIET_HOURS[channel] == QuietHours(time(21), time(9))
    for channel in ("email", "receipt", "inbox", "direct_mail"):
        assert DEFAULT_QUIET_HOURS[channel] is None


# --- properties -----------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Moscow", "Asia/Vladivostok", "Europe/Kaliningrad", "America/New_York",
         "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]
FIXED_OFFSET_ZONES = ["UTC", "Europe/Moscow", "Asia/Vladivostok", "Europe/Kaliningrad", "Asia/Kolkata"]
# around the 2026 clock changes, and anywhere in the year
instants = st.one_of(
    st.sampled_from([utc(2026, 3, 8), utc(2026, 3, 29), utc(2026, 10, 25), utc(2026, 11, 1), utc(2026, 4, 5)])
    .flatmap(lambda d: st.integers(-2 * 86400, 2 * 86400).map(lambda s: d + timedelta(seconds=s))),
    st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
)
# boundaries on the quarter hour reach the DST gap and overlap often
times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
windows = st.none() | st.builds(DailyWindow, times, times, st.frozensets(st.integers(0, 6), min_size=1))
quiets = st.none() | st.tuples(times, times).filter(lambda t: t[0] != t[1]).map(lambda t: QuietHours(*t))
offsets = st.integers(-14 * 4, 14 * 4).map(lambda q: timezone(timedelta(minutes=15 * q)))


def _samples(lo: datetime, hi: datetime, n: int = 60) -> list[datetime]:
    """Instants in [lo, hi): evenly spread, plus the minute and second just before hi."""
    span = hi - lo
    out = [lo + span * i / n for i in range(n)]
    out += [hi - timedelta(minutes=1), hi - timedelta(seconds=1)]
    return [t.replace(microsecond=0) for t in out if lo <= t.replace(microsecond=0) < hi]


@settings(max_examples=150, deadline=None)
@given(at=instants, tz=st.sampled_from(ZONES), window=windows, quiet=quiets)
def test_next_allowed_is_the_first_allowed_instant(at, tz, window, quiet):
    nxt = next_allowed(at, tz, window, quiet)
    if nxt is None:
        assert not any(is_allowed(t, tz, window, quiet) for t in _samples(at, at + timedelta(days=8), 40))
        return
    assert nxt >= at
    assert nxt.tzinfo is UTC
    assert is_allowed(nxt, tz, window, quiet)
    assert (nxt == at) == is_allowed(at, tz, window, quiet)
    assert not any(is_allowed(t, tz, window, quiet) for t in _samples(at, nxt))
    assert next_allowed(nxt, tz, window, quiet) == nxt


@settings(max_examples=60, deadline=None)
@given(at=instants, tz=st.sampled_from(ZONES), window=windows, quiet=quiets, offset=offsets)
def test_answer_does_not_depend_on_the_offset_at_is_given_in(at, tz, window, quiet, offset):
    shifted = at.astimezone(offset)
    assert is_allowed(shifted, tz, window, quiet) == is_allowed(at, tz, window, quiet)
    assert next_allowed(shifted, tz, window, quiet) == next_allowed(at, tz, window, quiet)


def _by_wall_clock(at: datetime, tz: str, window: DailyWindow | None, quiet: QuietHours | None) -> bool:
    """Reference for zones without clock changes: compare local wall times directly."""
    loc = at.astimezone(zone(tz))
    now, today, yesterday = loc.time().replace(tzinfo=None), loc.weekday(), (loc.weekday() - 1) % 7
    if window is not None:
        s, e = window.start, window.end
        if s < e:
            inside = today in window.days and s <= now < e
        elif s > e:
            inside = (today in window.days and now >= s) or (yesterday in window.days and now < e)
        else:
            inside = (today in window.days and now >= s) or (yesterday in window.days and now < s)
        if not inside:
            return False
    if quiet is not None:
        s, e = quiet.start, quiet.end
        if (s <= now < e) if s < e else (now >= s or now < e):
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(at=instants, tz=st.sampled_from(FIXED_OFFSET_ZONES), window=windows, quiet=quiets)
def test_without_clock_changes_it_is_a_plain_wall_clock_comparison(at, tz, window, quiet):
    assert is_allowed(at, tz, window, quiet) == _by_wall_clock(at, tz, window, quiet)


def test_several_quiet_periods_are_all_kept_quiet():
    """A member's own quiet hours add to the channel's: 21:00-09:00 and 12:00-14:00 leave 09-12 and 14-21."""
    from campaigns.schedule import QuietHours, is_allowed, next_allowed
    from datetime import UTC, datetime, time

    both = (QuietHours(time(21), time(9)), QuietHours(time(12), time(14)))
    day = datetime(2026, 6, 1, tzinfo=UTC)
    assert is_allowed(day.replace(hour=10), "UTC", None, both)
    assert not is_allowed(day.replace(hour=13), "UTC", None, both)
    assert next_allowed(day.replace(hour=12, minute=30), "UTC", None, both) == day.replace(hour=14)
    assert next_allowed(day.replace(hour=22), "UTC", None, both) == day.replace(day=2, hour=9)
