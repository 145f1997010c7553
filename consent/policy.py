"""The consent policy: may this member get this message on this channel now? Pure, no I/O.

Inputs are the member's current consent states (derived from the ledger) for the channel, keyed by
topic; ``"*"`` is the whole channel. Marketing topics need a prior opt-in (granted or confirmed);
``service`` messages need none but still honour a block on the whole channel. A topic ``requested`` with
double opt-in is not consent until the member confirms (``unconfirmed``).

Opt-in is the rule for every channel that reaches the member over a telecom network or the internet
(email, SMS, WhatsApp, Telegram, push: GDPR/ePrivacy, 38-FZ art. 18). The channels that reach the member
on paper or inside their own account (the till receipt, the app inbox, direct mail) are opt-out: allowed
unless the member revoked the topic or the channel (``OPT_OUT_CHANNELS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

CHANNEL_WIDE = "*"
SERVICE_TOPIC = "service"
OPT_OUT_CHANNELS = frozenset({"receipt", "inbox", "direct_mail"})


class SuppressReason(StrEnum):
    no_consent = "no_consent"            # marketing topic never opted into
    revoked = "revoked"                  # opted out of the topic (or the channel)
    suppressed = "suppressed"            # address suppressed (hard bounce, complaint)
    no_address = "no_address"            # no usable address for the channel
    unconfirmed = "unconfirmed"          # asked for with double opt-in, the confirmation link not used yet


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: SuppressReason | None = None


ALLOW = Decision(True)

_OPTED_IN = {"granted", "confirmed"}


def decide(states: Mapping[str, str], *, topic: str, channel: str | None = None) -> Decision:
    """``states``: topic → current status ("granted", "confirmed", "revoked", "suppressed") on ``channel``."""
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
    if state == "requested":
        return Decision(False, SuppressReason.unconfirmed)
    if channel in OPT_OUT_CHANNELS:
        return ALLOW
    return Decision(False, SuppressReason.no_consent)
