"""Program-level rules and the small value types campaign specs share: durations, frequency caps,
send windows, program settings (unit costs, quiet hours per channel, program-wide caps). Pure.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: Any) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``3d``, ``1w`` (or a number of seconds, or a timedelta)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("give a duration like 30m, 2h, 3d or 1w")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
        if value.startswith("P"):  # ISO 8601, as pydantic serializes timedeltas
            from pydantic import TypeAdapter
            return TypeAdapter(timedelta).validate_python(value)
    raise ValueError(f"{value!r} is not a duration: give one like 30m, 2h, 3d or 1w")


def _non_negative(td: timedelta) -> timedelta:
    if td < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return td


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class CapScope(StrEnum):
    program = "program"      # all marketing messages of the program (service messages never count)
    campaign = "campaign"    # this campaign only


class FrequencyCap(BaseModel):
    """At most ``max`` messages per member in any ``per`` window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: Annotated[int, Field(ge=1, le=1000)]
    per: Duration
    scope: CapScope = CapScope.program

    @field_validator("per")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0) or v > timedelta(days=366):
            raise ValueError("per must be between 1 second and 366 days")
        return v


def _hhmm(v: Any) -> str:
    from campaigns.schedule import parse_hhmm

    if not isinstance(v, str):
        raise ValueError("give a time of day as HH:MM, in quotes (e.g. \"09:00\")")
    return parse_hhmm(v).strftime("%H:%M")


HHMM = Annotated[str, BeforeValidator(_hhmm)]


class SendWindow(BaseModel):
    """Sending is allowed between ``from`` and ``to`` in the member's local time, on ``days``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: HHMM = Field(alias="from")
    end: HHMM = Field(alias="to")
    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if str(d).lower()[:3] not in WEEKDAYS]
        if bad or not v:
            raise ValueError(f"days must be a non-empty list of {', '.join(WEEKDAYS)}")
        return sorted({str(d).lower()[:3] for d in v}, key=WEEKDAYS.index)


class QuietHoursRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: HHMM = Field(alias="from")
    end: HHMM = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursRule:
        if self.start == self.end:
            raise ValueError("quiet hours need from and to to differ (null switches them off)")
        return self


class ProgramRules(BaseModel):
    """What a program sets once for all its campaigns (stored in ``program.settings``)."""

    model_config = ConfigDict(extra="forbid")

    unit_costs: dict[str, Decimal] = Field(default_factory=dict)
    quiet_hours: dict[str, QuietHoursRule | None] = Field(default_factory=dict)
    caps: list[FrequencyCap] = Field(default_factory=list)

    @field_validator("unit_costs")
    @classmethod
    def _costs(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        from campaigns.costs import unit_costs

        unit_costs(v)  # validates channel by channel
        return v

    @model_validator(mode="after")
    def _channels(self) -> ProgramRules:
        from storage.tables import ChannelName

        known = {c.value for c in ChannelName}
        for name in (*self.unit_costs, *self.quiet_hours):
            if name not in known:
                raise ValueError(f"unknown channel {name!r}: use one of {', '.join(sorted(known))}")
        return self


def program_rules(settings: dict[str, Any] | None) -> ProgramRules:
    return ProgramRules.model_validate(settings or {})


def quiet_hours_for(rules: ProgramRules, channel: str) -> Any:
    """The program's quiet hours for a channel (its own setting, else the default; None = exempt)."""
    from campaigns.schedule import DEFAULT_QUIET_HOURS, QuietHours, parse_hhmm

    if channel in rules.quiet_hours:
        q = rules.quiet_hours[channel]
        return None if q is None else QuietHours(parse_hhmm(q.start), parse_hhmm(q.end))
    return DEFAULT_QUIET_HOURS.get(channel)


def daily_window(window: SendWindow | None) -> Any:
    from campaigns.schedule import DailyWindow, parse_hhmm

    if window is None:
        return None
    return DailyWindow(parse_hhmm(window.start), parse_hhmm(window.end),
                       frozenset(WEEKDAYS.index(d) for d in window.days))
