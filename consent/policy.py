"""The consent policy: may this member get this message on this channel now? Pure, no I/O.

Inputs are the member's current consent states (derived from the ledger) for the channel, keyed by
topic; ``"*"`` is the whole channel. Marketing topics need a prior opt-in (granted or confirmed);
``service`` messages need none but still honour a block on the whole channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

CHANNEL_WIDE = "*"
SERVICE_TOPIC = "service"


class SuppressReason(StrEnum):
    no_consent = "no_consent"            # marketing topic never opted into
    revoked = "revoked"                  # opted out of the topic (or the channel)
    suppressed = "suppressed"            # address suppressed (hard bounce, complaint)
    no_address = "no_address"            # no usable address for the channel


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: SuppressReason | None = None


ALLOW = Decision(True)

_OPTED_IN = {"granted", "confirmed"}


def decide(states: Mapping[str, str], *, topic: str) -> Decision:
    """``states``: topic → current status ("granted", "confirmed", "revoked", "suppressed")."""
    channel_state = states.get(CHANNEL_WIDE)
    if channel_state == "suppressed":
        return Decision(False, SuppressReason.suppressed)
    if channel_state == "revoked":
        return Decision(False, SuppressReason.revoked)
    if topic == SERVICE_TOPIC:
        return ALLOW
    state = states.get(topic)
    if state in _OPTED_IN:
        return ALLOW
    if state == "revoked":
        return Decision(False, SuppressReason.revoked)
    if state == "suppressed":
        return Decision(False, SuppressReason.suppressed)
    return Decision(False, SuppressReason.no_consent)
