"""Uplift of a campaign against its control group: the two-proportion comparison, by hand (no SciPy).

For ``x1`` conversions among ``n1`` treated members and ``x2`` among ``n2`` held-out ones:

- uplift ``d = p1 - p2`` with ``p1 = x1/n1``, ``p2 = x2/n2`` (in proportions; the report shows points);
- its 95% confidence interval ``d ± z·SE`` with the unpooled standard error
  ``SE = sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)`` and ``z = Φ⁻¹(0.975) ≈ 1.96`` (the Wald interval);
- the two-sided p-value of the pooled z-test of ``p1 = p2``: ``p = (x1+x2)/(n1+n2)``,
  ``z = d / sqrt(p(1-p)(1/n1 + 1/n2))``, ``p-value = 2(1 - Φ(|z|)) = erfc(|z|/√2)``.

Worked example (tests/unit/test_uplift.py): 10,000 treated converting at 3.0% against 1,000 controls at 2.0% →
uplift 1.0 point, 95% CI [0.07, 1.93] points, p = 0.073 (not significant at 5%).

With no control member, or no treated one, there is nothing to compare: :func:`compare` returns None. When
every member of both groups converted (or none did), the standard error is 0: the interval is the point and
the p-value is 1 when the rates are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2)     # 1.959963984540054


@dataclass(frozen=True)
class Uplift:
    treated_rate: float
    control_rate: float
    uplift: float            # treated_rate - control_rate (a proportion: 0.01 = 1 point)
    ci_low: float
    ci_high: float
    p_value: float
    z: float

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero (the test rejects "no difference" at 5%)."""
        return self.p_value < 1 - CONFIDENCE


def compare(x1: int, n1: int, x2: int, n2: int) -> Uplift | None:
    """Treated: ``x1`` of ``n1`` converted; control: ``x2`` of ``n2``. None when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"conversions must be between 0 and the group's size: {x1}/{n1}, {x2}/{n2}")
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se0 == 0:
        z, p_value = 0.0, 1.0
    else:
        z = d / se0
        p_value = math.erfc(abs(z) / math.sqrt(2))
    return Uplift(treated_rate=p1, control_rate=p2, uplift=d, ci_low=d - Z * se, ci_high=d + Z * se,
                  p_value=p_value, z=z)
