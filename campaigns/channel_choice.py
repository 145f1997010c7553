"""Which channel a member gets: the first of the campaign's channels (its fallback order) that the member
allows (consent policy) and has an address on, among those not tried yet. Pure.

    candidates(...)  the channels that may be used, in the campaign's order
    pick(...)        of those, the first whose send window and quiet hours are open now; else the one
                     that opens first (the delivery waits for it)

When no channel is left, the reason reported is the first channel's own (e.g. ``no_consent`` for email
when the campaign is ``[email, sms]`` and the member allows neither): what a marketer looks at first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consent.policy import Decision, SuppressReason, decide


@dataclass(frozen=True, slots=True)
class Contacts:
    """What a member can be reached at, as far as channel choice needs to know."""

    email: str | None = None
    phone: str | None = None
    telegram_chat_id: str | None = None
    push_tokens: int = 0
    has_card: bool = False
    postal: bool = False


def has_address(channel: str, c: Contacts) -> bool:
    match channel:
        case "email":
            return bool(c.email)
        case "sms" | "whatsapp":
            return bool(c.phone)
        case "telegram":
            return bool(c.telegram_chat_id)
        case "push":
            return c.push_tokens > 0
        case "receipt":
            return c.has_card
        case "inbox":
            return True          # every member has the app / personal account inbox
        case "direct_mail":
            return c.postal
    return False


@dataclass(frozen=True, slots=True)
class Choice:
    channels: tuple[str, ...]          # allowed and addressed, in order; empty = none
    reason: str | None = None          # why none, when empty


NO_ACCOUNT = "no_account"


def candidates(order: Sequence[str], *, topic: str, contacts: Contacts,
               states: Mapping[str, Mapping[str, str]], tried: Sequence[str] = (),
               available: Collection[str] | None = None) -> Choice:
    """``states``: channel → {topic: status} for this member. ``tried``: channels already failed.
    ``available``: the channels the program can send on (None: all)."""
    allowed: list[str] = []
    first_reason: str | None = None
    for channel in order:
        if channel in tried:
            continue
        if available is not None and channel not in available:
            first_reason = first_reason or NO_ACCOUNT
            continue
        decision: Decision = decide(states.get(channel, {}), topic=topic, channel=channel)
        if decision.allowed and not has_address(channel, contacts):
            decision = Decision(False, SuppressReason.no_address)
        if decision.allowed:
            allowed.append(channel)
        elif first_reason is None:
            first_reason = str(decision.reason)
    if allowed:
        return Choice(tuple(allowed))
    return Choice((), first_reason or SuppressReason.no_address)


def pick(channels: Sequence[str], now: datetime,
         opens: Callable[[str], datetime | None]) -> tuple[str | None, datetime | None]:
    """(channel, when): the first channel open ``now`` → (it, now); else the earliest to open → (it, then);
    (None, None) when no window ever opens for any of them. ``opens(channel)`` is when it may go next."""
    best: tuple[str, datetime] | None = None
    for channel in channels:
        when = opens(channel)
        if when is None:
            continue
        if when <= now:
            return channel, now
        if best is None or when < best[1]:
            best = (channel, when)
    return (best[0], best[1]) if best else (None, None)


def tried_channels(attempts: Any) -> tuple[str, ...]:
    """The channels of a delivery's ``attempts`` (JSON list of {channel, code}), in order."""
    if not attempts:
        return ()
    return tuple(str(a.get("channel")) for a in attempts if isinstance(a, dict) and a.get("channel"))
