"""The campaign spec: YAML validated by pydantic, with errors that name the path of the bad field."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.tables import ChannelName

KEY = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
MEMBER_COLUMNS = ("locale", "kind", "time_zone")


class SpecError(ValueError):
    """The spec is not valid. ``problems`` lists (path, message); str() shows them all."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


class Op(StrEnum):
    eq = "eq"
    ne = "ne"
    in_ = "in"
    not_in = "not_in"


Scalar = str | int | float | bool


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="locale, kind, time_zone or attributes.<name>")
    op: Op = Op.eq
    value: Scalar | list[Scalar]

    @field_validator("field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v in MEMBER_COLUMNS or re.fullmatch(r"attributes\.[A-Za-z_][A-Za-z0-9_]{0,63}", v):
            return v
        raise ValueError(f"unknown field {v!r}: use one of {', '.join(MEMBER_COLUMNS)} or attributes.<name>")

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        is_list = isinstance(self.value, list)
        if self.op in (Op.in_, Op.not_in) and not is_list:
            raise ValueError(f"op {self.op.value!r} needs a list value")
        if self.op in (Op.eq, Op.ne) and is_list:
            raise ValueError(f"op {self.op.value!r} needs a single value, not a list")
        return self


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all: bool = False
    filter: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way(self) -> Audience:
        if self.all == bool(self.filter):
            raise ValueError("set either all: true or a non-empty filter")
        return self


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Annotated[str, Field(pattern=KEY)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    program: Annotated[str, Field(pattern=KEY)]
    kind: Literal["broadcast"] = "broadcast"
    topic: Annotated[str, Field(pattern=KEY)]
    channels: Annotated[list[ChannelName], Field(min_length=1)]
    audience: Audience
    template: Annotated[str, Field(pattern=KEY)]
    locale_default: str | None = None
    start_at: datetime | None = None

    @field_validator("channels")
    @classmethod
    def _email_only_for_now(cls, v: list[ChannelName]) -> list[ChannelName]:
        unsupported = [c.value for c in v if c != ChannelName.email]
        if unsupported:
            raise ValueError(f"channel(s) {', '.join(unsupported)} are not available yet; use email")
        return v

    @field_validator("start_at")
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


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_spec(data: Any) -> CampaignSpec:
    if not isinstance(data, dict):
        raise SpecError([("", "the spec must be a mapping of fields (key, name, program, ...)")])
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            loc = tuple(err["loc"])
            if "value" in loc:  # a union's members each report; one problem at the value is enough
                loc = loc[:loc.index("value") + 1]
                msg = "use text, a number, true/false, or a list of those"
            else:
                msg = err["msg"].removeprefix("Value error, ")
            problems.setdefault(_path(loc), msg)
        raise SpecError(list(problems.items())) from None


def load_spec(text: str) -> CampaignSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise SpecError([(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return parse_spec(data)
