"""Events from the loyalty core (purchases, registrations, ...): validated, and stored once per (program, id).

The source's event id is the idempotency key: an id already stored, or repeated within one batch, is
a duplicate and never a second row. The unique constraint ``(program_id, source_event_id)`` decides,
so two requests racing with the same id still leave one row; ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` tells exactly which rows this call inserted. Good items of a batch are stored even when
others are refused; each refusal names the item's index and the field. Personal data is never logged.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analytics.attribution import attribute, purchase_of
from campaigns.spec import EVENT_TYPE
from storage.db import insert_ignore, write_scope
from storage.tables import Event, Member, Program, utcnow

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_AHEAD = timedelta(days=1)
UNKNOWN_MEMBER = "unknown member: push it first (PUT /api/v1/members/{id})"
_TYPE = re.compile(EVENT_TYPE)


_JSON_KIND = {bool: "true/false", str: "text", list: "a list", dict: "an object", type(None): "null"}


def _number(v: Any) -> float | int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        kind = _JSON_KIND.get(type(v), type(v).__name__)
        raise ValueError(f"must be a number >= 0 (a JSON number, not {kind}), e.g. 12.5")
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a number >= 0, not {v!r}")
    return v


class PurchaseItem(BaseModel):
    """One line of a receipt. Keys other than these are kept as they are."""

    model_config = ConfigDict(extra="allow")

    sku: str | None = Field(default=None, min_length=1, max_length=128)
    category: str | None = Field(default=None, min_length=1, max_length=128)
    qty: Any = None
    price: Any = None

    @field_validator("qty", "price")
    @classmethod
    def _non_negative(cls, v: Any) -> Any:
        return None if v is None else _number(v)


class PurchasePayload(BaseModel):
    """What a ``purchase`` event's payload must hold; other keys (receipt number, points, ...) are free."""

    model_config = ConfigDict(extra="allow")

    amount: Any = Field(description="the receipt total, a number >= 0")
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$",
                                 description="ISO 4217 code in capitals, e.g. EUR")
    store: str | None = Field(default=None, max_length=128)
    items: list[PurchaseItem] | None = None

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: Any) -> Any:
        return _number(v)

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, v: Any) -> Any:
        if isinstance(v, str) and not re.fullmatch(r"[A-Z]{3}", v):
            raise ValueError(f"use a 3-letter ISO 4217 code in capitals (e.g. EUR), not {v!r}")
        return v


class EventIn(BaseModel):
    """One event as the loyalty core sends it. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="the source's event id: the idempotency key")
    type: str = Field(json_schema_extra={"pattern": EVENT_TYPE},
                      description="purchase, registration, card_activated, tier_changed, points_expiring "
                                  "or custom:<name>")
    member: str = Field(min_length=1, max_length=128, description="the member's external id")
    occurred_at: datetime = Field(description="when it happened, with its UTC offset "
                                              "(e.g. 2024-05-01T14:30:00+03:00)")
    payload: dict[str, Any] = Field(default_factory=dict,
                                    description="for purchase: amount (required), currency, store, items")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not _TYPE.fullmatch(v):
            raise ValueError(f"unknown event type {v[:80]!r}: use purchase, registration, card_activated, "
                             "tier_changed, points_expiring or custom:<name> (a-z, 0-9, _ - .)")
        return v

    @field_validator("occurred_at")
    @classmethod
    def _occurred_at(cls, v: datetime, info: ValidationInfo) -> datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("needs a UTC offset, e.g. 2024-05-01T14:30:00+03:00 or 2024-05-01T11:30:00Z")
        now = (info.context or {}).get("now") or utcnow()
        if v - now > MAX_AHEAD:
            raise ValueError(f"is more than a day in the future ({v.isoformat()}); check the clock or the offset")
        return v

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        try:
            size = len(json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())
        except (TypeError, ValueError):
            raise ValueError("must be plain JSON (text, numbers, true/false, null, lists, objects)") from None
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"is {size} bytes as JSON; at most {MAX_PAYLOAD_BYTES} (64 KB)")
        if info.data.get("type") == "purchase":
            PurchasePayload.model_validate(v)  # its errors are located under payload.*
        return v


@dataclass
class EventError:
    index: int          # position in the batch (0-based)
    id: str | None      # the event's id, when it had a readable one
    field: str          # e.g. "occurred_at", "payload.amount", "member"
    message: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    attributed: int = 0     # purchases that counted for a campaign (analytics.attribution)
    errors: list[EventError] = field(default_factory=list)

    @property
    def refused(self) -> int:
        """How many items were refused (an item may have several errors)."""
        return len({e.index for e in self.errors})


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]) or "event", e["msg"].removeprefix("Value error, "))
            for e in exc.errors()]


def parse_event(raw: Any, *, now: datetime | None = None) -> EventIn | list[tuple[str, str]]:
    """A raw item → the event, or every problem as (field, message)."""
    if isinstance(raw, EventIn):
        return raw
    if not isinstance(raw, dict):
        return [("event", f"must be a JSON object, not {type(raw).__name__}")]
    try:
        return EventIn.model_validate(raw, context={"now": now or utcnow()})
    except ValidationError as exc:
        return _problems(exc)


def _raw_id(raw: Any) -> str | None:
    if isinstance(raw, EventIn):
        return raw.id
    value = raw.get("id") if isinstance(raw, dict) else None
    return value[:128] if isinstance(value, str) else None


def ingest_events(*, engine: Engine, program_id: int, items: Sequence[EventIn | dict[str, Any]],
                  now: datetime | None = None) -> IngestResult:
    """Validate, resolve members, and store the good items in one transaction (a repeated id is a duplicate)."""
    now = now or utcnow()
    result = IngestResult()
    good: list[tuple[int, EventIn]] = []
    for i, raw in enumerate(items):
        parsed = parse_event(raw, now=now)
        if isinstance(parsed, EventIn):
            good.append((i, parsed))
        else:
            result.errors.extend(EventError(i, _raw_id(raw), f, m) for f, m in parsed)
    if good:
        with Session(engine) as s:
            member_ids = dict(s.execute(select(Member.external_id, Member.id).where(
                Member.program_id == program_id,
                Member.external_id.in_(list({e.member for _, e in good})))).all())  # type: ignore[attr-defined]
        rows: dict[str, dict[str, Any]] = {}
        for i, e in good:
            member_id = member_ids.get(e.member)
            if member_id is None:
                result.errors.append(EventError(i, e.id, "member", UNKNOWN_MEMBER))
            elif e.id in rows:
                result.duplicates += 1  # repeated within this batch: the first one counts
            else:
                rows[e.id] = {"program_id": program_id, "source_event_id": e.id, "type": e.type,
                              "member_id": member_id, "occurred_at": e.occurred_at.astimezone(UTC),
                              "payload": e.payload, "received_at": now}
        if rows:
            with write_scope(engine) as s:
                stmt = insert_ignore(s, Event.__table__, ["program_id", "source_event_id"])
                inserted = s.execute(stmt.returning(Event.__table__.c.id, Event.__table__.c.source_event_id),
                                     list(rows.values())).all()
                purchases = [(eid, rows[source]) for eid, source in inserted if rows[source]["type"] == "purchase"]
                if purchases:  # in the same transaction: a stored purchase is always attributed
                    currency = s.scalar(select(Program.currency).where(Program.id == program_id)) or ""
                    result.attributed = len(attribute(s, [
                        purchase_of(eid, r["member_id"], r["occurred_at"], r["payload"], currency)
                        for eid, r in purchases]))
            result.accepted = len(inserted)
            result.duplicates += len(rows) - len(inserted)
    result.errors.sort(key=lambda e: e.index)
    log.info("events program=%s accepted=%s duplicates=%s refused=%s attributed=%s", program_id, result.accepted,
             result.duplicates, result.refused, result.attributed)
    return result
