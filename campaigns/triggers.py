"""Trigger rules compiled to SQL: conditions over an event's JSON payload, and which events a triggered
campaign reacts to (type, payload conditions, the member in the campaign's audience)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from campaigns.segments import Op
from campaigns.spec import EventCondition


def _path(cond: EventCondition) -> Any:
    parts = cond.field.split(".")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _typed(element: Any, value: Any) -> Any:
    if isinstance(value, bool):
        return element.as_boolean()
    if isinstance(value, int | float):
        return element.as_float()
    return element.as_string()


def event_condition(payload: Any, cond: EventCondition) -> ColumnElement[bool]:
    """One condition over a JSON payload column; numbers compare as numbers, text as text."""
    element = payload[_path(cond)]
    if cond.op is Op.exists:
        present = element.as_string().is_not(None) | element.as_float().is_not(None)
        return present if cond.value else ~present
    if isinstance(cond.value, list):
        values = cond.value
        col = _typed(element, values[0]) if values else element.as_string()
        typed = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in values]
        if cond.op is Op.in_:
            return col.in_(typed)
        return or_(col.not_in(typed), col.is_(None))
    col = _typed(element, cond.value)
    value = float(cond.value) if isinstance(cond.value, int | float) and not isinstance(cond.value, bool) \
        else cond.value
    match cond.op:
        case Op.eq:
            return col == value
        case Op.ne:
            return or_(col != value, col.is_(None))
        case Op.gt:
            return col > value
        case Op.gte:
            return col >= value
        case Op.lt:
            return col < value
        case Op.lte:
            return col <= value
    raise ValueError(f"unsupported op {cond.op}")  # pragma: no cover - the spec validates ops


def event_conditions(payload: Any, conds: Sequence[EventCondition]) -> list[ColumnElement[bool]]:
    return [event_condition(payload, c) for c in conds]


def all_of(payload: Any, conds: Sequence[EventCondition]) -> ColumnElement[bool]:
    return and_(*event_conditions(payload, conds))
