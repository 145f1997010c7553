"""Trigger activities: turn events (and date rules) into planned deliveries, a page at a time.

``match_events`` reads the program's events after a cursor (the event row id) that satisfy the
campaign's trigger (type, payload conditions) and whose member is in the campaign's audience, and
creates one delivery per event (occurrence = the event's id): held out, suppressed (consent, no
address), or planned with ``due_at`` = the event's time + the trigger's delay. Once-per-member and
cooldown are checked against the campaign's earlier deliveries. ``match_scheduled`` does the same for
date rules (birthday, inactivity, points expiring), run by a Temporal Schedule. Delivery of what is
planned is ``deliver_due`` (activities.delivery). Everything is idempotent: the delivery key
(campaign, member, step, occurrence) makes a re-run create nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from activities.delivery import CampaignContext, DeliveryActivities, parse_now
from campaigns import schedule
from campaigns.audience import audience_clause
from campaigns.spec import TimeTrigger
from campaigns.triggers import event_conditions
from storage.db import insert_ignore, session_scope, write_scope
from storage.tables import Delivery, DeliveryStatus, Event, Member, utcnow
from workflows.contracts import MatchEvents, MatchResult

# events received this recently may still be committing out of id order (PostgreSQL sequences):
# the cursor does not move past them, so they are examined again (idempotently) next time.
# SQLite has one writer at a time, so ids commit in order there and no grace is needed.
COMMIT_GRACE = timedelta(seconds=2)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class TriggerActivities:
    def __init__(self, *, engine: Engine, delivery: DeliveryActivities) -> None:
        self._engine = engine
        self._delivery = delivery

    @activity.defn(name="match_events")
    async def match_events(self, inp: MatchEvents) -> MatchResult:
        return await asyncio.to_thread(self._match_events, inp)

    @activity.defn(name="match_scheduled")
    async def match_scheduled(self, inp: MatchEvents) -> MatchResult:
        return await asyncio.to_thread(self._match_scheduled, inp)

    # --- events ------------------------------------------------------------------------------

    def _match_events(self, inp: MatchEvents) -> MatchResult:
        ctx = self._delivery.campaign(inp.campaign_id)
        trigger = ctx.spec.trigger
        assert trigger is not None and trigger.event is not None
        now = parse_now(inp.now)
        settled = utcnow() - (COMMIT_GRACE if self._engine.dialect.name != "sqlite" else timedelta(0))
        with write_scope(self._engine) as s:
            examined = list(s.execute(
                select(Event.id, Event.received_at).where(Event.program_id == ctx.program_id,
                                                          Event.id > inp.after)  # type: ignore[operator]
                .order_by(Event.id).limit(inp.limit)))
            if not examined:
                return MatchResult(cursor=inp.after, examined=0, matched=0, more=False)
            upto = examined[-1][0]
            cursor = inp.after
            for event_id, received_at in examined:
                if _aware(received_at) > settled:
                    break
                cursor = event_id
            matches = list(s.execute(
                select(Event.source_event_id, Event.member_id, Event.occurred_at)
                .where(Event.program_id == ctx.program_id, Event.id > inp.after, Event.id <= upto,  # type: ignore[operator]
                       Event.type == trigger.event, *event_conditions(Event.payload, trigger.where),
                       Event.member_id.in_(select(Member.id).where(  # type: ignore[attr-defined]
                           audience_clause(ctx.program_id, ctx.spec.audience, now=now))))
                .order_by(Event.id)))
            created = self._create(s, ctx, [(occ, member_id, _aware(at) + trigger.delay)
                                            for occ, member_id, at in matches], now)
        return MatchResult(cursor=cursor, examined=len(examined), matched=created,
                           more=len(examined) == inp.limit)

    # --- date rules --------------------------------------------------------------------------

    def _match_scheduled(self, inp: MatchEvents) -> MatchResult:
        ctx = self._delivery.campaign(inp.campaign_id)
        trigger = ctx.spec.trigger
        assert trigger is not None and trigger.on is not None
        now = parse_now(inp.now)
        zone = func.coalesce(Member.time_zone, ctx.program_tz)
        with session_scope(self._engine) as s:
            audience = audience_clause(ctx.program_id, ctx.spec.audience, now=now)
            candidates: list[tuple[str, int, datetime | None]] = []
            if trigger.on is TimeTrigger.inactivity:
                last = (select(Event.member_id, func.max(Event.occurred_at).label("last"))
                        .where(Event.type == "purchase").group_by(Event.member_id).subquery())
                rows = s.execute(select(Member.id, last.c.last).join(last, last.c.member_id == Member.id)
                                 .where(audience, last.c.last < now - timedelta(days=trigger.days)))
                candidates = [(f"inactive-since-{_aware(at).date().isoformat()}", mid, None) for mid, at in rows]
            else:
                attr = "birthday" if trigger.on is TimeTrigger.birthday else "points_expire_on"
                value = Member.attributes[attr].as_string()  # type: ignore[index]
                zones = [z for z, in s.execute(select(zone).where(audience, value.is_not(None)).distinct())]
                for tz in zones:
                    today = now.astimezone(schedule.zone(tz)).date()
                    for target, occurrence in self._dates(trigger.on, today, trigger.days):
                        pattern = target.strftime("%m-%d") if trigger.on is TimeTrigger.birthday \
                            else target.isoformat()
                        match = (func.substr(value, 6, 5) == pattern) if trigger.on is TimeTrigger.birthday \
                            else (value == pattern)
                        candidates += [(occurrence, mid, None) for mid, in s.execute(
                            select(Member.id).where(audience, zone == tz, match))]
            created = self._create(s, ctx, candidates, now)
        return MatchResult(cursor=0, examined=len(candidates), matched=created, more=False)

    @staticmethod
    def _dates(on: TimeTrigger, today: date, days: int) -> Iterable[tuple[date, str]]:
        """(the date a member's attribute must equal, the occurrence key) for a member whose local date is today."""
        target = today + timedelta(days=days)
        if on is TimeTrigger.birthday:
            yield target, f"birthday-{target.year}"
            leap_day_missing = target.month == 2 and target.day == 28 and not _is_leap(target.year)
            if leap_day_missing:  # born on 29 February: greeted on the 28th in other years
                yield date(2000, 2, 29), f"birthday-{target.year}"
        else:
            yield target, f"expiring-{target.isoformat()}"

    # --- rows --------------------------------------------------------------------------------

    def _create(self, s: Session, ctx: CampaignContext, candidates: Sequence[tuple[str, int, datetime | None]],
                now: datetime) -> int:
        """Delivery rows for (occurrence, member, due_at), honouring once-per-member and cooldown."""
        trigger = ctx.spec.trigger
        assert trigger is not None
        if not candidates:
            return 0
        member_ids = sorted({m for _, m, _ in candidates})
        limit_per_member = trigger.once_per_member or trigger.cooldown is not None
        latest: dict[int, datetime] = {}
        existing_occ: set[tuple[int, str]] = set()
        # with cancel-if, a waiting reaction may still be cancelled by a newer event: it does not block
        # the newer one here; deliver_due lets only the first reaction actually sent go
        ignored = [DeliveryStatus.suppressed] + ([DeliveryStatus.planned] if trigger.cancel_if else [])
        if limit_per_member:
            for mid, occ, created in s.execute(
                    select(Delivery.member_id, Delivery.occurrence, Delivery.created_at).where(
                        # a suppressed reaction (no consent, cancelled by a newer event) reached nobody:
                        # it does not use up "once" or start a cooldown; a held-out one does (control group)
                        Delivery.campaign_id == ctx.id, Delivery.step == "main",
                        Delivery.status.not_in(ignored),  # type: ignore[attr-defined]
                        Delivery.member_id.in_(member_ids))):  # type: ignore[attr-defined]
                existing_occ.add((mid, occ))
                created = _aware(created)
                latest[mid] = max(latest.get(mid, created), created)
        initial = self._delivery.initial_rows(s, ctx, "main", member_ids, now)
        rows: list[dict[str, Any]] = []
        taken: set[int] = set()
        for occurrence, mid, due in candidates:
            if limit_per_member and (mid, occurrence) not in existing_occ:
                if mid in taken:
                    continue
                if mid in latest and (trigger.once_per_member or
                                      (trigger.cooldown is not None and now - latest[mid] < trigger.cooldown)):
                    continue
                taken.add(mid)
            status, reason, channel, locale, segment = initial[mid]
            rows.append({"campaign_id": ctx.id, "member_id": mid, "step": "main", "occurrence": occurrence,
                         "status": status, "reason": reason, "channel": channel, "locale": locale,
                         "variant": ctx.variant_of(mid) if status != "held_out" else None, "segment": segment,
                         "due_at": due, "created_at": now, "updated_at": utcnow()})
        if not rows:
            return 0
        result = s.execute(insert_ignore(s, Delivery.__table__, ["campaign_id", "member_id", "step", "occurrence"])
                           .returning(Delivery.__table__.c.id), rows)
        return len(result.all())


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
