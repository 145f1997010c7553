"""Audience rules compiled to SQL (never filtered in Python)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, true

from campaigns.spec import Audience, Condition, Op
from storage.tables import Member


def _column(field: str) -> Any:
    if field.startswith("attributes."):
        return Member.attributes[field.removeprefix("attributes.")].as_string()  # type: ignore[index]
    return getattr(Member, field)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _condition(cond: Condition) -> ColumnElement[bool]:
    col = _column(cond.field)
    if cond.op is Op.eq:
        return col == _as_text(cond.value)
    if cond.op is Op.ne:
        return (col != _as_text(cond.value)) | col.is_(None)
    values = [_as_text(v) for v in cond.value]  # type: ignore[union-attr]
    if cond.op is Op.in_:
        return col.in_(values)
    return col.not_in(values) | col.is_(None)


def audience_clause(program_id: int, audience: Audience) -> ColumnElement[bool]:
    """WHERE clause selecting the campaign's members."""
    base = Member.program_id == program_id
    if audience.all:
        return and_(base, true())
    return and_(base, *(_condition(c) for c in audience.filter))
