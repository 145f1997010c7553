"""Program-level rules and the small value types campaign specs share: durations, frequency caps,
send windows, program settings (unit costs, quiet hours per channel, program-wide caps, consent topics,
double opt-in, the consent wording members are shown). Pure.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from storage.tables import ChannelName

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


def _distinct_channels(v: list[ChannelName]) -> list[ChannelName]:
    if len(set(v)) != len(v):
        raise ValueError("list each channel once: the order is the fallback order")
    return v


# channels in fallback order: at least one, each once (a campaign's, a follow-up's, a variant's)
ChannelOrder = Annotated[list[ChannelName], Field(min_length=1), AfterValidator(_distinct_channels)]


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


TOPIC_KEY = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
Localized = str | dict[str, str]          # one text, or one per locale ("en", "ru", ...)


def localized(value: Localized | None, locale: str | None, fallback: str = "en") -> str | None:
    """The text of ``value`` for ``locale`` (its language, then ``fallback``, then any)."""
    if value is None or isinstance(value, str):
        return value
    for key in (locale, (locale or "").split("-")[0], fallback):
        if key and key in value:
            return value[key]
    return next(iter(value.values()), None)


class Topic(BaseModel):
    """A subject members subscribe to (promotions, news, partner offers). ``service`` topics need no
    marketing consent (points accrued, expiry notices) but honour a block on the whole channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, Field(pattern=TOPIC_KEY)]
    name: Localized
    description: Localized | None = None
    kind: str = Field(default="marketing", pattern=r"^(marketing|service)$")


class ConsentWording(BaseModel):
    """The text members are shown when they give consent, versioned: the ledger keeps the version and a
    hash of the exact text shown (the proof of what they agreed to)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[str, Field(min_length=1, max_length=64)]
    text: Localized


DEFAULT_TOPICS = (Topic(key="promotions", name={"en": "Offers and promotions", "ru": "Акции и предложения"},
                        description={"en": "Bonus points, sales and personal offers",
                                     "ru": "Бонусные баллы, скидки и персональные предложения"}),
                  Topic(key="news", name={"en": "News", "ru": "Новости"},
                        description={"en": "What is new at the program", "ru": "Новости программы"}))
DEFAULT_WORDING = ConsentWording(version="clarion-default-1", text={
    "en": "I agree to receive advertising and information messages from {program} on the channels and topics "
          "I chose. I can change this or unsubscribe at any time.",
    "ru": "Я согласен(на) получать рекламные и информационные сообщения {program} по выбранным каналам и "
          "темам. Я могу изменить выбор или отписаться в любой момент."})


class Brand(BaseModel):
    """The program's look, for shared layouts: ``{{ program.brand.color }}``, ``.logo_url``, ``.footer``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] = "#1a56db"
    logo_url: Annotated[str | None, Field(pattern=r"^https://[^\s\"'<>]+$")] = None
    footer: Localized | None = None      # the legal footer (company, address), per locale


class ProgramRules(BaseModel):
    """What a program sets once for all its campaigns (stored in ``program.settings``)."""

    model_config = ConfigDict(extra="forbid")

    unit_costs: dict[str, Decimal] = Field(default_factory=dict)
    quiet_hours: dict[str, QuietHoursRule | None] = Field(default_factory=dict)
    caps: list[FrequencyCap] = Field(default_factory=list)
    topics: list[Topic] = Field(default_factory=lambda: list(DEFAULT_TOPICS), max_length=50)
    double_opt_in: dict[str, bool] = Field(default_factory=lambda: {"email": True})
    consent_wording: ConsentWording = DEFAULT_WORDING
    brand: Brand = Brand()

    @field_validator("topics")
    @classmethod
    def _topics(cls, v: list[Topic]) -> list[Topic]:
        keys = [t.key for t in v]
        if len(set(keys)) != len(keys):
            raise ValueError("topic keys must be distinct")
        if "service" in keys:
            raise ValueError("'service' is built in (messages that need no marketing consent)")
        return v

    @field_validator("double_opt_in")
    @classmethod
    def _doi(cls, v: dict[str, bool]) -> dict[str, bool]:
        bad = [c for c in v if c not in ("email", "sms")]
        if bad:
            raise ValueError(f"double opt-in is for email (a confirmation link) and sms (reply YES), not {bad[0]!r}")
        return v

    def topic_keys(self) -> list[str]:
        return [t.key for t in self.topics]

    def needs_confirmation(self, channel: str) -> bool:
        return bool(self.double_opt_in.get(channel))

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


@functools.lru_cache(maxsize=256)
def _quiet(start: str, end: str) -> Any:
    from campaigns.schedule import QuietHours, parse_hhmm

    return QuietHours(parse_hhmm(start), parse_hhmm(end))


def member_quiet_hours(preferences: dict[str, Any] | None) -> Any:
    """The member's own quiet hours from ``member.preferences`` ({"quiet_hours": {"from", "to"}}), or None."""
    q = (preferences or {}).get("quiet_hours") if isinstance(preferences, dict) else None
    if not isinstance(q, dict) or not q.get("from") or not q.get("to") or q["from"] == q["to"]:
        return None
    try:
        return _quiet(str(q["from"]), str(q["to"]))
    except ValueError:
        return None


def daily_window(window: SendWindow | None) -> Any:
    from campaigns.schedule import DailyWindow, parse_hhmm

    if window is None:
        return None
    return DailyWindow(parse_hhmm(window.start), parse_hhmm(window.end),
                       frozenset(WEEKDAYS.index(d) for d in window.days))
