"""Holdout assignment: which members of a campaign are kept out of it, to measure what it achieved.

Deterministic and stateless: a member's bucket is the BLAKE2b hash of ``"{campaign_key}:{member_id}"``
read as a 64-bit big-endian integer, divided by 2**64. A member is held out when the bucket is below the
campaign's share. The same member is held out of the same campaign on every run, retry, replay and
machine; a different campaign key draws an independent bucket, so holdouts of different campaigns overlap
only by chance. Raising the share only adds members to the holdout; nobody held out is released.
"""

from __future__ import annotations

import math
from hashlib import blake2b

_TOP = math.nextafter(1.0, 0.0)  # the last float below 1: h / 2**64 rounds up to 1.0 for the top 2**10 values


def bucket(campaign_key: str, member_id: int) -> float:
    """The member's position in [0, 1) for this campaign."""
    digest = blake2b(f"{campaign_key}:{member_id}".encode(), digest_size=8).digest()
    return min(int.from_bytes(digest, "big") / 2**64, _TOP)


def held_out(campaign_key: str, member_id: int, share: float) -> bool:
    """True when the member is in the campaign's holdout of ``share`` (0 = nobody)."""
    if not 0 <= share <= 1:  # the spec allows up to 0.5; this only guards against nonsense
        raise ValueError(f"holdout share must be between 0 and 1, got {share!r}")
    return share > 0 and bucket(campaign_key, member_id) < share
