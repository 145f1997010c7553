"""The campaign spec: YAML validated by pydantic, with errors that name the path of the bad field."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campaigns.rules import ChannelOrder, Duration, FrequencyCap, SendWindow
from campaigns.segments import Audience, Op, Rule, error_path
from campaigns.variants import Variant, Variants
from storage.tables import ChannelName

KEY = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
MAX_SEGMENTS = 10
OTHER_SEGMENT = "other"      # the report's segment of members matching none of the spec's segments


class SpecError(ValueError):
    """The spec is not valid. ``problems`` lists (path, message); str() shows them all."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


class AtField(ValueError):
    """A check across fields, raised by a model validator, that belongs to one of them: pydantic reports a
    model validator's error at the model, so ``parse_spec`` moves it to ``field`` (``end_at``, not the spec)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


Scalar = str | int | float | bool


EVENT_TYPE = r"^(purchase|registration|card_activated|tier_changed|points_expiring|custom:[a-z0-9_\-.]{1,56})$"
PAYLOAD_PATH = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}$"


# payload conditions take the segment operators that make sense for one value
EVENT_OPS = (Op.eq, Op.ne, Op.in_, Op.not_in, Op.gt, Op.gte, Op.lt, Op.lte, Op.exists)


class EventCondition(BaseModel):
    """A condition over the triggering event's payload, e.g. ``{field: amount, op: gte, value: 1000}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: Annotated[str, Field(pattern=PAYLOAD_PATH, description="a payload key, dotted for nested keys")]
    op: Op = Op.eq
    value: Scalar | list[Scalar] = True

    @model_validator(mode="after")
    def _value_fits_op(self) -> EventCondition:
        if self.op not in EVENT_OPS:
            raise ValueError(f"op {self.op.value!r} is not for event payloads: use "
                             f"{', '.join(o.value for o in EVENT_OPS)}")
        is_list = isinstance(self.value, list)
        if self.op in (Op.in_, Op.not_in) and not is_list:
            raise ValueError(f"op {self.op.value!r} needs a list value")
        if self.op not in (Op.in_, Op.not_in) and is_list:
            raise ValueError(f"op {self.op.value!r} needs a single value, not a list")
        if self.op in (Op.gt, Op.gte, Op.lt, Op.lte) and (
                isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"op {self.op.value!r} needs a number")
        if self.op is Op.exists and not isinstance(self.value, bool):
            raise ValueError("op 'exists' takes true or false")
        return self


class CancelIf(BaseModel):
    """Cancel the pending message when the member has a newer event of this type before it is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Annotated[str, Field(pattern=EVENT_TYPE)]
    where: list[EventCondition] = Field(default_factory=list)


class TimeTrigger(StrEnum):
    birthday = "birthday"                # N days before the member's birthday (attributes.birthday)
    inactivity = "inactivity"            # no purchase for N days
    points_expiring = "points_expiring"  # points expire within N days (attributes.points_expire_on)


class Trigger(BaseModel):
    """What makes a triggered campaign send: an event from the loyalty core, or a date rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Annotated[str | None, Field(pattern=EVENT_TYPE)] = None
    where: list[EventCondition] = Field(default_factory=list)
    on: TimeTrigger | None = None
    days: Annotated[int, Field(ge=0, le=3650)] = 0
    delay: Duration = timedelta(0)
    cancel_if: CancelIf | None = None
    once_per_member: bool = False
    cooldown: Duration | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Trigger:
        if (self.event is None) == (self.on is None):
            raise ValueError("give either event: (purchase, registration, ...) or on: (birthday, inactivity, "
                             "points_expiring)")
        if self.on is not None and (self.where or self.cancel_if):
            raise ValueError("where and cancel_if apply to event triggers only")
        if self.on is TimeTrigger.inactivity and self.days < 1:
            raise ValueError("an inactivity trigger needs days: N (at least 1)")
        if not timedelta(0) <= self.delay <= timedelta(days=90):
            raise ValueError("delay must be between 0 and 90 days")
        return self


class FollowUpTarget(StrEnum):
    not_delivered = "not_delivered"    # no delivery report (SMS/WhatsApp callback, printed, read) came back
    delivered = "delivered"
    not_opened = "not_opened"
    opened = "opened"
    not_clicked = "not_clicked"
    clicked = "clicked"
    not_bought = "not_bought"
    bought = "bought"


class FollowUp(BaseModel):
    """A later step, to the members of the previous step who did (or did not) respond."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: Annotated[str, Field(pattern=KEY)]
    after: Duration
    to: FollowUpTarget
    template: Annotated[str | None, Field(pattern=KEY)] = None
    # this step's channels in fallback order (default: the campaign's); e.g. no delivery report within
    # 2 h on WhatsApp → SMS: {step: by-sms, after: 2h, to: not_delivered, channels: [sms]}
    channels: ChannelOrder | None = None

    @field_validator("after")
    @classmethod
    def _after(cls, v: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= v <= timedelta(days=90):
            raise ValueError("after must be between 1 minute and 90 days")
        return v


class Recurrence(BaseModel):
    """A broadcast repeated on a Temporal Schedule, e.g. every Monday 10:00 in the program's time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: Annotated[str, Field(min_length=9, max_length=120)]
    time_zone: str | None = None  # default: the program's

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        fields = v.split()
        if len(fields) != 5:
            raise ValueError("give a 5-field cron expression: minute hour day-of-month month day-of-week, "
                             "e.g. '0 10 * * mon'")
        return " ".join(fields)

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            from campaigns.schedule import zone
            zone(v)
        return v


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Annotated[str, Field(pattern=KEY)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    program: Annotated[str, Field(pattern=KEY)]
    kind: Literal["broadcast", "triggered"] = "broadcast"
    topic: Annotated[str, Field(pattern=KEY)]
    channels: ChannelOrder
    audience: Audience
    template: Annotated[str, Field(pattern=KEY)]
    locale_default: str | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    send_window: SendWindow | None = None
    recurring: Recurrence | None = None
    budget: Annotated[Decimal | None, Field(gt=0, max_digits=14, decimal_places=4)] = None
    holdout: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    caps: list[FrequencyCap] = Field(default_factory=list)
    trigger: Trigger | None = None
    follow_ups: Annotated[list[FollowUp], Field(max_length=5)] = Field(default_factory=list)
    # A/B test of the main step: each member gets one variant, deterministically (campaigns.variants); a
    # variant may change the template, the channels, or neither (the control copy)
    variants: Variants = Field(default_factory=list)
    # a purchase counts for the campaign (analytics.attribution) when the member's last message of it came
    # within this time before (for the control group: the time they were held out)
    attribution_window: Duration = timedelta(days=7)
    # the report's segments: named rules, the first one a member matches when the row is made is the
    # member's segment in the report (none matched: "other")
    segments: dict[str, Rule] = Field(default_factory=dict)

    @field_validator("attribution_window")
    @classmethod
    def _window(cls, v: timedelta) -> timedelta:
        if not timedelta(hours=1) <= v <= timedelta(days=90):
            raise ValueError("must be between 1 hour and 90 days, e.g. 7d")
        return v

    @field_validator("segments")
    @classmethod
    def _segments(cls, v: dict[str, Rule]) -> dict[str, Rule]:
        if len(v) > MAX_SEGMENTS:
            raise ValueError(f"at most {MAX_SEGMENTS} segments")
        for name in v:
            if not re.fullmatch(KEY, name) or name == OTHER_SEGMENT:
                raise ValueError(f"segment name {name[:70]!r}: use a-z, 0-9, _ and - (at most 64), not "
                                 f"{OTHER_SEGMENT!r}")
        return v

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone offset, e.g. 2026-12-01T10:00:00+03:00")
        return v

    @field_validator("locale_default")
    @classmethod
    def _locale(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from templates.render import normalize_locale

        return normalize_locale(v)

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise AtField("end_at", "end_at must be after start_at")
        if self.kind == "triggered" and self.trigger is None:
            raise AtField("trigger", "a triggered campaign needs a trigger:")
        if self.kind == "broadcast" and self.trigger is not None:
            raise AtField("trigger", "trigger: is for kind: triggered")
        if self.recurring and self.kind != "broadcast":
            raise AtField("recurring", "recurring: is for broadcasts")
        steps = [f.step for f in self.follow_ups]
        if "main" in steps or len(set(steps)) != len(steps):
            raise AtField("follow_ups", "follow-up steps need distinct names other than 'main'")
        return self

    @property
    def steps(self) -> list[str]:
        return ["main", *(f.step for f in self.follow_ups)]

    def follow_up(self, step: str) -> FollowUp | None:
        return next((f for f in self.follow_ups if f.step == step), None)

    def variant(self, key: str | None) -> Variant | None:
        return next((v for v in self.variants if v.key == key), None) if key else None

    def channels_for(self, step: str, variant: str | None = None) -> list[ChannelName]:
        """The step's channels in fallback order: a follow-up's own, else the variant's (main step), else the
        campaign's."""
        f = self.follow_up(step)
        if f and f.channels:
            return f.channels
        v = self.variant(variant) if step == "main" else None
        return (v.channels if v and v.channels else None) or self.channels

    @property
    def all_channels(self) -> list[ChannelName]:
        """Every channel any step or variant may use, the campaign's first."""
        seen = list(self.channels)
        for extra in [*(f.channels or [] for f in self.follow_ups), *(v.channels or [] for v in self.variants)]:
            seen += [c for c in extra if c not in seen]
        return seen

    @property
    def all_templates(self) -> list[str]:
        """Every template any step or variant may render."""
        names = [self.template, *(f.template for f in self.follow_ups if f.template),
                 *(v.template for v in self.variants if v.template)]
        return list(dict.fromkeys(names))

    def template_for(self, step: str, variant: str | None = None) -> str:
        f = self.follow_up(step)
        if f and f.template:
            return f.template
        v = self.variant(variant) if step == "main" else None
        return (v.template if v and v.template else None) or self.template


def parse_spec(data: Any) -> CampaignSpec:
    if not isinstance(data, dict):
        raise SpecError([("", "the spec must be a mapping of fields (key, name, program, ...)")])
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            if "value" in loc and len(loc) > loc.index("value") + 1:
                # a union's members each report (value.str, value.int, ...): one problem at the value
                loc = loc[:loc.index("value") + 1]
                msg = "use text, a number, true/false, or a list of those"
            else:
                msg = err["msg"].removeprefix("Value error, ")
            at = (err.get("ctx") or {}).get("error")
            if isinstance(at, AtField):
                loc = (*loc, at.field)
            problems.setdefault(error_path(loc), msg)
        raise SpecError(list(problems.items())) from None


def read_yaml(text: str) -> Any:
    """YAML text → data; a syntax error becomes a SpecError naming the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise SpecError([(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None


def load_spec(text: str) -> CampaignSpec:
    return parse_spec(read_yaml(text))
