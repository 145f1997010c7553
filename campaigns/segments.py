"""Audience segments: the rules a campaign's audience is made of, validated with one clear error per
problem at the rule's path. ``campaigns.audience`` compiles them to SQL.

```yaml
audience:
  rules:
    all:
      - {field: tier, op: in, value: [gold, silver]}
      - {field: purchases.count, days: 30, op: gte, value: 2}
      - any: [{field: city, value: Kazan}, {not: {field: card.status, value: blocked}}]
      - {field: consent, channel: email, topic: promotions}
  include: [M000001]        # external ids added regardless of the rules
  exclude: [M000003]        # external ids always removed
```
The older forms stay valid: ``{all: true}`` and ``{filter: [{field, op, value}, ...]}``.

A rule is a mapping with ``field`` (+ ``op``, ``value`` and, for some fields, ``days``, ``channel``,
``topic``) or exactly one of ``all`` / ``any`` (a list of rules) / ``not`` (one rule). Every field
has a type that says which operators and values it takes (``FIELDS``); ``attributes.<name>`` is any
custom attribute, compared as the value's type says (a number compares numbers, text compares text,
a date ``YYYY-MM-DD`` compares dates, true/false compares booleans).

Relative dates (``days: N``, ``{days_ago: N}``) stay relative here; the compiler resolves them
against the ``now`` it is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_DEPTH = 8          # levels of all/any/not
MAX_RULES = 200        # rules (leaves and groups) in one audience
MAX_VALUES = 1000      # values in one in/not_in list
MAX_LISTED = 5000      # external ids in include or exclude
MAX_DAYS = 36500

ERROR_TYPE = "segment_rule"
CHANNELS = ("email", "sms", "whatsapp", "telegram", "push", "receipt", "inbox", "direct_mail")
ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*")
TOPIC = re.compile(r"\*|[a-z0-9][a-z0-9_\-]{0,63}")


def fail(message: str) -> NoReturn:
    """Raise one validation problem (pydantic reports it at the location being validated)."""
    raise PydanticCustomError(ERROR_TYPE, "{reason}", {"reason": message})


# --- operators and fields ------------------------------------------------------------------------


class Op(StrEnum):
    eq = "eq"
    ne = "ne"
    in_ = "in"
    not_in = "not_in"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    between = "between"
    exists = "exists"
    contains = "contains"


LIST_OPS = (Op.in_, Op.not_in)
ORDER_OPS = (Op.gt, Op.gte, Op.lt, Op.lte, Op.between)


class FieldType(StrEnum):
    text = "text"
    number = "number"
    date = "date"          # a day (YYYY-MM-DD) or {days_ago: N}; purchases.last_at also takes a time
    month = "month"        # 1..12
    enum = "enum"
    consent = "consent"
    any = "any"            # custom attribute: the value's type decides


class Source(StrEnum):
    column = "column"          # a column of member
    attribute = "attribute"    # a key of member.attributes
    purchases = "purchases"    # purchase events of the member
    card = "card"              # the member's cards
    consent = "consent"        # consent_state


def _ops(*names: str) -> tuple[Op, ...]:
    return tuple(Op(n) for n in names)


TYPE_OPS: dict[FieldType, tuple[Op, ...]] = {
    FieldType.text: _ops("eq", "ne", "in", "not_in", "exists", "contains"),
    FieldType.number: _ops("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists"),
    FieldType.date: _ops("eq", "ne", "gt", "gte", "lt", "lte", "between", "exists"),
    FieldType.month: _ops("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists"),
    FieldType.enum: _ops("eq", "ne", "in", "not_in"),
    FieldType.consent: _ops("eq"),
    FieldType.any: tuple(Op),
}


@dataclass(frozen=True)
class FieldSpec:
    """What a rule's ``field`` names: its type, its operators and where its data lives."""

    name: str
    type: FieldType
    source: Source
    key: str                             # column name, attribute key or the purchase measure
    ops: tuple[Op, ...] = ()
    choices: tuple[str, ...] = ()        # enum values
    window: bool = False                 # takes ``days: N`` (purchases in the last N days)
    instant: bool = False                # a date field that also takes a date-time
    doc: str = ""

    @property
    def allowed(self) -> tuple[Op, ...]:
        return self.ops or TYPE_OPS[self.type]


def _f(name: str, type_: FieldType, source: Source, key: str, doc: str, **kw: Any) -> FieldSpec:
    return FieldSpec(name, type_, source, key, doc=doc, **kw)


_EQ_IN = _ops("eq", "ne", "in", "not_in")
FIELDS: dict[str, FieldSpec] = {f.name: f for f in (
    _f("tier", FieldType.text, Source.attribute, "tier", "attributes.tier"),
    _f("city", FieldType.text, Source.attribute, "city", "attributes.city"),
    _f("kind", FieldType.enum, Source.column, "kind", "member kind",
       choices=("individual", "legal_entity")),
    _f("locale", FieldType.text, Source.column, "locale", "member locale, e.g. ru-RU"),
    _f("time_zone", FieldType.text, Source.column, "time_zone", "member time zone (IANA name)"),
    _f("email", FieldType.text, Source.column, "email", "member email address"),
    _f("phone", FieldType.text, Source.column, "phone", "member phone (E.164)"),
    _f("birthday", FieldType.date, Source.attribute, "birthday", "attributes.birthday, YYYY-MM-DD"),
    _f("birthday_month", FieldType.month, Source.attribute, "birthday", "month of attributes.birthday"),
    _f("registered_at", FieldType.date, Source.attribute, "registered_at", "attributes.registered_at"),
    _f("purchases.count", FieldType.number, Source.purchases, "count", "number of purchases",
       ops=_ops("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between"), window=True),
    _f("purchases.sum", FieldType.number, Source.purchases, "sum", "sum of the purchases' payload.amount",
       ops=_ops("eq", "ne", "gt", "gte", "lt", "lte", "between"), window=True),
    _f("purchases.last_at", FieldType.date, Source.purchases, "last_at", "time of the last purchase",
       ops=_ops("gt", "gte", "lt", "lte", "between", "exists"), instant=True),
    _f("purchases.category", FieldType.text, Source.purchases, "category",
       "bought an item of the category (payload.items[].category)", ops=_EQ_IN, window=True),
    _f("purchases.store", FieldType.text, Source.purchases, "store", "bought in the store (payload.store)",
       ops=_EQ_IN, window=True),
    _f("card.status", FieldType.text, Source.card, "status", "has a card in that status",
       ops=_ops("eq", "ne", "in", "not_in", "exists")),
    _f("consent", FieldType.consent, Source.consent, "consent",
       "currently opted in to channel + topic, channel not revoked or suppressed"),
)}
WINDOW_FIELDS = tuple(n for n, f in FIELDS.items() if f.window)


def field_spec(name: str) -> FieldSpec | None:
    """The spec of a field name: a named field or ``attributes.<name>``; None if unknown."""
    found = FIELDS.get(name)
    if found is not None:
        return found
    key = name.removeprefix("attributes.")
    if key != name and ATTRIBUTE_KEY.fullmatch(key):
        return FieldSpec(name, FieldType.any, Source.attribute, key, doc="custom attribute")
    return None


# --- values --------------------------------------------------------------------------------------


class DaysAgo(BaseModel):
    """A date relative to the time the audience is evaluated: ``{days_ago: N}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days_ago: int


class ValueKind(StrEnum):
    text = "text"
    number = "number"
    boolean = "true/false"
    date = "date"


def value_kind(v: Any, *, iso_strings: bool = True) -> ValueKind:
    """The kind of a validated scalar value (how a custom attribute is compared)."""
    if isinstance(v, bool):
        return ValueKind.boolean
    if isinstance(v, int | float):
        return ValueKind.number
    if isinstance(v, date | DaysAgo) or (iso_strings and isinstance(v, str) and ISO_DATE.fullmatch(v)):
        return ValueKind.date
    return ValueKind.text


KIND_OPS: dict[ValueKind, tuple[Op, ...]] = {
    ValueKind.text: TYPE_OPS[FieldType.text],
    ValueKind.number: (*TYPE_OPS[FieldType.number], Op.contains),
    ValueKind.boolean: _ops("eq", "ne"),
    ValueKind.date: (*TYPE_OPS[FieldType.date], Op.in_, Op.not_in),
}


def _show(v: Any) -> str:
    if isinstance(v, dict | list):
        return repr(v)[:80]
    return repr(v)[:80] if not isinstance(v, date) else v.isoformat()


def _days_ago(raw: dict[Any, Any]) -> DaysAgo:
    n = raw.get("days_ago")
    if set(raw) != {"days_ago"} or isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_DAYS:
        fail(f"a relative date is {{days_ago: N}} with a whole N from 0 to {MAX_DAYS}, not {_show(raw)}")
    return DaysAgo(days_ago=n)


def _as_date(raw: Any, spec: FieldSpec) -> date | datetime | DaysAgo:
    if isinstance(raw, dict):
        return _days_ago(raw)
    if isinstance(raw, datetime) or (isinstance(raw, str) and ISO_DATETIME.fullmatch(raw)):
        if not spec.instant:
            fail(f"field {spec.name!r} takes a date (YYYY-MM-DD), not a time: {_show(raw)}")
        try:
            at = raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
        except ValueError:
            fail(f"{_show(raw)} is not a date-time (use 2025-01-31T18:00:00+03:00)")
        if at.tzinfo is None:
            fail(f"give a time zone offset, e.g. {at.isoformat()}+03:00, or just a date")
        return at
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and ISO_DATE.fullmatch(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            fail(f"{raw!r} is not a calendar date")
    fail(f"field {spec.name!r} ({spec.type}) takes a date YYYY-MM-DD or {{days_ago: N}}, not {_show(raw)}")


def _scalar(raw: Any, spec: FieldSpec, op: Op) -> Any:
    """One value of the field's type, normalized (dates parsed, whole numbers as text for text fields)."""
    t = spec.type
    if isinstance(raw, list):
        fail(f"'{op}' takes one value, not a list" + (" (use in)" if op is Op.eq else ""))
    if raw is None:
        fail(f"'{op}' needs a value")
    if t in (FieldType.text, FieldType.enum):
        if isinstance(raw, int) and not isinstance(raw, bool) and t is FieldType.text:
            return str(raw)
        if not isinstance(raw, str):
            hint = " (YAML reads yes/no/on/off as true/false: quote the text)" if isinstance(raw, bool) else ""
            fail(f"field {spec.name!r} ({t}) takes text, not {_show(raw)}{hint}")
        if t is FieldType.enum and raw not in spec.choices:
            fail(f"{raw!r} is not a {spec.name}: use {' or '.join(spec.choices)}")
        if not raw or len(raw) > 500:
            fail(f"field {spec.name!r} takes text of 1 to 500 characters")
        return raw
    if t is FieldType.number:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            fail(f"field {spec.name!r} (number) takes a number, not {_show(raw)}")
        return raw
    if t is FieldType.month:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 12:
            fail(f"field {spec.name!r} (month) takes a month number 1-12, not {_show(raw)}")
        return raw
    if t is FieldType.date:
        return _as_date(raw, spec)
    # a custom attribute: text, number, true/false or a date
    if isinstance(raw, dict):
        return _days_ago(raw)
    if isinstance(raw, datetime):
        fail(f"custom attributes compare dates (YYYY-MM-DD), not times: {_show(raw)}")
    if isinstance(raw, float) and not math.isfinite(raw):
        fail(f"{raw} is not a usable number")
    if isinstance(raw, str) and not 0 < len(raw) <= 500:
        fail("text values are 1 to 500 characters")
    if isinstance(raw, str | int | float | bool | date):
        return raw
    fail(f"use text, a number, true/false or a date, not {_show(raw)}")


def check_value(spec: FieldSpec, op: Op, raw: Any) -> Any:
    """The rule's value, validated for the field and operator; raises with one clear message."""
    if op is Op.exists:
        if raw is None:
            return True
        if not isinstance(raw, bool):
            fail(f"'exists' takes true or false, not {_show(raw)}")
        return raw
    if op in LIST_OPS:
        if not isinstance(raw, list) or not raw:
            fail(f"'{op}' takes a non-empty list, e.g. [a, b]")
        if len(raw) > MAX_VALUES:
            fail(f"'{op}' takes at most {MAX_VALUES} values ({len(raw)} given)")
        values = []
        for i, item in enumerate(raw):
            try:
                values.append(_scalar(item, spec, Op.eq))
            except PydanticCustomError as exc:
                fail(f"item {i}: {exc.message()}")
        _same_kind(spec, values)
        return values
    if op is Op.between:
        if not isinstance(raw, list) or len(raw) != 2:
            fail("'between' takes [low, high] (both included)")
        lo, hi = (_scalar(v, spec, Op.eq) for v in raw)
        _same_kind(spec, [lo, hi])
        if spec.type is not FieldType.month:  # months may wrap around the new year: [11, 2]
            klo, khi = _order_key(lo), _order_key(hi)
            if klo and khi and klo[0] == khi[0] and klo[1] > khi[1]:
                fail(f"'between' needs low <= high, got [{_show(lo)}, {_show(hi)}]")
        return [lo, hi]
    return _scalar(raw, spec, op)


def _order_key(v: Any) -> tuple[int, Any] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return (0, v)
    if isinstance(v, datetime):
        return (2, v)
    if isinstance(v, date):
        return (1, v.isoformat())
    if isinstance(v, str) and ISO_DATE.fullmatch(v):
        return (1, v)
    return None


def _same_kind(spec: FieldSpec, values: list[Any]) -> None:
    if spec.type is not FieldType.any:
        return
    kinds = {value_kind(v) for v in values}
    if len(kinds) > 1:
        fail(f"use values of one kind, not a mix of {' and '.join(sorted(kinds))}")


# --- rules ---------------------------------------------------------------------------------------

_GROUPS = ("all", "any", "not")
_LEAF_KEYS = ("field", "op", "value", "days", "channel", "topic")


def _field_names() -> str:
    return ", ".join(FIELDS) + " or attributes.<name>"


class Rule(BaseModel):
    """One node of a segment: a condition on a field, or a group (all / any / not) of rules."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = None
    op: Op | None = Field(default=None, validate_default=True)
    value: Any = Field(default=None, validate_default=True)
    days: int | None = None
    channel: str | None = Field(default=None, validate_default=True)
    topic: str | None = Field(default=None, validate_default=True)
    all: list[Rule] | None = None
    any: list[Rule] | None = None
    not_: Rule | None = Field(default=None, alias="not")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            fail("a rule is a mapping: {field: ..., op: ..., value: ...}, {all: [...]}, {any: [...]} "
                 "or {not: {...}}")
        groups = [k for k in _GROUPS if k in data]
        if len(groups) > 1:
            fail(f"a rule takes one of all, any, not (found {', '.join(groups)}): nest them instead")
        if groups:
            mixed = [k for k in _LEAF_KEYS if k in data]
            if mixed:
                fail(f"'{groups[0]}' groups rules and takes no {', '.join(mixed)}: "
                     f"put the condition inside the group")
            return data
        if "field" not in data:
            found = ", ".join(map(str, data)) or "nothing"
            fail(f"a rule needs field (with op and value) or one of all, any, not (found {found})")
        return data

    @field_validator("field")
    @classmethod
    def _field(cls, v: str | None) -> str | None:
        if v is not None and field_spec(v) is None:
            fail(f"unknown field {v!r}: use {_field_names()}")
        return v

    @field_validator("op", mode="before")
    @classmethod
    def _op(cls, v: Any, info: ValidationInfo) -> Op | None:
        spec = _spec_of(info)
        if spec is None:
            return None
        if v is None:
            return Op.eq
        try:
            op = Op(v)
        except ValueError:
            fail(f"{v!r} is not an operator: use {', '.join(o.value for o in spec.allowed)}")
        if op not in spec.allowed:
            fail(f"{op.value!r} is not allowed for field {spec.name!r} ({spec.type}): "
                 f"use {', '.join(o.value for o in spec.allowed)}")
        return op

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any, info: ValidationInfo) -> Any:
        spec, op = _spec_of(info), info.data.get("op")
        if spec is None or op is None:
            return v
        if spec.source is Source.consent:
            if v is None:
                return True
            if not isinstance(v, bool):
                fail("field 'consent' takes value true (opted in, the default) or false")
            return v
        value = check_value(spec, op, v)
        if spec.type is FieldType.any:
            kind = value_kind(value[0] if isinstance(value, list) else value)
            if op is not Op.exists and op not in KIND_OPS[kind]:
                fail(f"{op.value!r} does not apply to a {kind} value: "
                     f"use {', '.join(o.value for o in KIND_OPS[kind])}")
        return value

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, v: Any, info: ValidationInfo) -> int | None:
        spec = _spec_of(info)
        if v is None or spec is None:
            return v
        if not spec.window:
            hint = "; for the last purchase use value: {days_ago: N}" if spec.name == "purchases.last_at" else ""
            fail(f"'days' applies to {', '.join(WINDOW_FIELDS)} only{hint}")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DAYS:
            fail(f"'days' is a whole number of days from 1 to {MAX_DAYS}, not {_show(v)}")
        return v

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, v: Any, info: ValidationInfo) -> str | None:
        spec = _spec_of(info)
        if spec is None:
            return v
        if spec.source is not Source.consent:
            if v is not None:
                fail("'channel' applies to field 'consent' only")
            return None
        if v not in CHANNELS:
            fail(f"field 'consent' needs channel: one of {', '.join(CHANNELS)}"
                 + (f" ({v!r} is not one)" if v is not None else ""))
        return v

    @field_validator("topic", mode="before")
    @classmethod
    def _topic(cls, v: Any, info: ValidationInfo) -> str | None:
        spec = _spec_of(info)
        if spec is None:
            return v
        if spec.source is not Source.consent:
            if v is not None:
                fail("'topic' applies to field 'consent' only")
            return None
        if not isinstance(v, str) or not TOPIC.fullmatch(v):
            fail("field 'consent' needs topic: a topic key such as promotions, or '*' for the whole channel"
                 + (f" (not {_show(v)})" if v is not None else ""))
        return v

    @field_validator("all", "any", mode="before")
    @classmethod
    def _group(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and (not isinstance(v, list) or not v):
            fail(f"'{info.field_name}' takes a non-empty list of rules")
        return v

    @field_validator("not_", mode="before")
    @classmethod
    def _not(cls, v: Any) -> Any:
        if isinstance(v, list):
            fail("'not' takes one rule; for several write not: {any: [...]} (none of them) "
                 "or not: {all: [...]} (not all of them)")
        return v

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the keys that are set, with ``not`` spelled as in YAML."""
        out = handler(self)
        out = {("not" if k == "not_" else k): v for k, v in out.items() if v is not None}
        if self.field is not None and self.op is Op.exists and self.value is True:
            out.pop("value", None)
        return out

    # --- reading a validated rule ---------------------------------------------------------------

    @property
    def spec(self) -> FieldSpec | None:
        return field_spec(self.field) if self.field is not None else None

    @property
    def children(self) -> list[Rule]:
        if self.all is not None:
            return self.all
        if self.any is not None:
            return self.any
        return [self.not_] if self.not_ is not None else []


def _spec_of(info: ValidationInfo) -> FieldSpec | None:
    name = info.data.get("field")
    return field_spec(name) if name else None


# --- the legacy filter ---------------------------------------------------------------------------

MEMBER_COLUMNS = ("locale", "kind", "time_zone")


class FilterOp(StrEnum):
    """The operators of the older ``filter`` form."""

    eq = "eq"
    ne = "ne"
    in_ = "in"
    not_in = "not_in"


Scalar = str | int | float | bool


class Condition(BaseModel):
    """One condition of the older ``filter`` form (all conditions must hold)."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="locale, kind, time_zone or attributes.<name>")
    op: FilterOp = FilterOp.eq
    value: Any

    @field_validator("field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v in MEMBER_COLUMNS or re.fullmatch(r"attributes\.[A-Za-z_][A-Za-z0-9_]{0,63}", v):
            return v
        raise ValueError(f"unknown field {v!r}: use one of {', '.join(MEMBER_COLUMNS)} or attributes.<name>")

    @field_validator("value")
    @classmethod
    def _scalars(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        if not all(isinstance(i, Scalar) for i in items):
            fail("use text, a number, true/false, or a list of those")
        return v

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        is_list = isinstance(self.value, list)
        if self.op in (FilterOp.in_, FilterOp.not_in) and not is_list:
            raise ValueError(f"op {self.op.value!r} needs a list value")
        if self.op in (FilterOp.eq, FilterOp.ne) and is_list:
            raise ValueError(f"op {self.op.value!r} needs a single value, not a list")
        return self


# --- the audience --------------------------------------------------------------------------------


def _measure(node: Any, path: str, depth: int, counter: list[int]) -> None:
    """Bound depth and size of raw rules before pydantic walks them (no recursion past the bound)."""
    counter[0] += 1
    if counter[0] > MAX_RULES:
        fail(f"at most {MAX_RULES} rules in one audience")
    if not isinstance(node, dict):
        return
    for key in _GROUPS:
        sub = node.get(key)
        if sub is None:
            continue
        if depth >= MAX_DEPTH:
            fail(f"rules nest at most {MAX_DEPTH} levels of all/any/not deep ({path}.{key} is deeper)")
        if isinstance(sub, list):
            for i, child in enumerate(sub):
                _measure(child, f"{path}.{key}[{i}]", depth + 1, counter)
        else:
            _measure(sub, f"{path}.{key}", depth + 1, counter)


def _external_ids(v: Any, name: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        fail(f"'{name}' takes a list of member external ids")
    if len(v) > MAX_LISTED:
        fail(f"'{name}' takes at most {MAX_LISTED} external ids ({len(v)} given); use rules for more")
    out = []
    for i, item in enumerate(v):
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not 0 < len(item) <= 128:
            fail(f"item {i}: an external id is text of 1 to 128 characters, not {_show(item)}")
        out.append(item)
    return out


class Audience(BaseModel):
    """Who a campaign goes to: everyone (``all: true``), the older ``filter``, or ``rules``; plus
    ``include`` / ``exclude`` lists of external ids. Exclusion always wins."""

    model_config = ConfigDict(extra="forbid")

    all: bool = False
    filter: list[Condition] = Field(default_factory=list)
    rules: Rule | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("rules", mode="before")
    @classmethod
    def _bounded(cls, v: Any) -> Any:
        if isinstance(v, list):
            fail("'rules' is one rule: wrap a list in all: [...] (every rule) or any: [...] (at least one)")
        if v is not None:
            _measure(v, "rules", 0, [0])
        return v

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _ids(cls, v: Any, info: ValidationInfo) -> list[str]:
        return _external_ids(v, info.field_name or "")

    @model_validator(mode="after")
    def _one_way(self) -> Audience:
        ways = [name for name, on in (("all: true", self.all), ("filter", bool(self.filter)),
                                      ("rules", self.rules is not None)) if on]
        if len(ways) > 1:
            fail(f"use one of {' / '.join(ways)}, not both")
        if not ways and not self.include:
            fail("set all: true, rules, filter or include")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The older forms dump exactly as before (stored specs keep their hash)."""
        out = handler(self)
        for key in ("rules", "include", "exclude"):
            if not out.get(key):
                out.pop(key, None)
        return out


# --- errors as paths -----------------------------------------------------------------------------


def error_path(loc: Iterable[Any]) -> str:
    """``('audience', 'rules', 'all', 1, 'op')`` → ``audience.rules.all[1].op``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """(path, message) for each problem of a validation error, first message per path."""
    found: dict[str, str] = {}
    for err in exc.errors():
        found.setdefault(error_path((*prefix, *err["loc"])), err["msg"].removeprefix("Value error, "))
    return list(found.items())
