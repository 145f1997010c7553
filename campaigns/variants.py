"""A/B variants: a campaign split into content or channel variants by share, each member always in the same one.

A variant is a key, a share (a percentage) and what it changes: its own template, its own channels in
fallback order, or neither (the control: the campaign's own content and channels). A spec lists them as

    variants:
      - {key: control, share: 50}
      - {key: short-copy, share: 30, template: spring-sale-short}
      - {key: sms-first, share: 20, channels: [sms, email]}

Assignment is deterministic and stateless. A member's variant bucket is the BLAKE2b hash (8-byte digest,
personalization ``b"clarion/variant"``) of ``"{campaign_key}:{member_id}"`` read as a 64-bit big-endian
integer, divided by 2**64. The shares, in the order listed, cut [0, 1) into consecutive ranges and the
member gets the variant whose range holds the bucket. So:

- the same member gets the same variant of the same campaign on every run, retry, replay, step,
  recurrence and machine (no Python ``hash()``, which is salted per process);
- the split is independent of the holdout: ``campaigns.holdout`` hashes the same text without the
  personalization, a different hash function, so the held-out members spread over the variants by their
  shares and each variant loses the same fraction to the holdout;
- different campaigns split independently: the campaign key is part of the hashed text.

Editing a running split reassigns members, and that is expected; the bucket never moves, only the range
boundaries do, so only members between an old and a new boundary change variant. Appending a variant and
taking its share from the one listed last moves only members of that last variant. Reordering variants
reassigns freely, and renaming a key keeps its members but splits the reports, so do neither mid-run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from hashlib import blake2b
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from campaigns.rules import ChannelOrder

VARIANT_KEY = r"^[a-z0-9][a-z0-9_\-]{0,31}$"  # delivery.variant holds at most 32 characters
TEMPLATE_KEY = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
MAX_VARIANTS = 10
SHARE_TOLERANCE = 0.001  # shares like 33.3 / 33.3 / 33.4 are written with decimals; float sums drift a little

_HASH = blake2b(digest_size=8, person=b"clarion/variant")  # copied per call: cheaper than building anew
_TOP = math.nextafter(1.0, 0.0)


class Variant(BaseModel):
    """One arm of an A/B test. Without ``template`` and ``channels`` it is the control copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, Field(pattern=VARIANT_KEY)]
    share: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False, strict=True,
                                  description="percent of the campaign's audience, e.g. 50 or 33.3")]
    template: Annotated[str | None, Field(pattern=TEMPLATE_KEY)] = None  # None: the campaign's template
    channels: ChannelOrder | None = None  # None: the campaign's channels


def validate_variants(variants: list[Variant]) -> list[Variant]:
    """The checks a list of variants needs as a whole; raises ValueError naming the problem.

    An empty list is valid (the campaign has no A/B test). One variant of 100 is valid too (the winner,
    rolled out to everyone while its deliveries keep its key)."""
    if len(variants) > MAX_VARIANTS:
        raise ValueError(f"at most {MAX_VARIANTS} variants, got {len(variants)}")
    twice = [key for key, n in Counter(v.key for v in variants).items() if n > 1]
    if twice:
        raise ValueError(f"variant keys must be distinct: {', '.join(map(repr, twice))} used more than once")
    total = math.fsum(v.share for v in variants)
    if variants and abs(total - 100) > SHARE_TOLERANCE:
        raise ValueError(f"variant shares add up to {round(total, 6):g}, not 100")
    return variants


# the spec's field type: variants: Variants = Field(default_factory=list)
Variants = Annotated[list[Variant], AfterValidator(validate_variants)]


def variant_bucket(campaign_key: str, member_id: int) -> float:
    """The member's position in [0, 1) for this campaign's variant split."""
    h = _HASH.copy()
    h.update(f"{campaign_key}:{member_id}".encode())
    return min(int.from_bytes(h.digest(), "big") / 2**64, _TOP)


def assign(campaign_key: str, member_id: int, variants: Sequence[Variant]) -> Variant:
    """The member's variant of this campaign. Shares are taken relative to their sum."""
    if not variants:
        raise ValueError("no variants to assign from")
    point = variant_bucket(campaign_key, member_id) * sum(v.share for v in variants)
    upto = 0.0
    for v in variants:
        upto += v.share
        if point < upto:
            return v
    return variants[-1]  # float rounding at the very top of the range


def expected_counts(n: int, variants: Sequence[Variant]) -> dict[str, float]:
    """How many of ``n`` members each variant should get, by key (for reports and checks)."""
    total = math.fsum(v.share for v in variants)
    return {v.key: n * v.share / total for v in variants}
