"""The two-proportion comparison against hand-computed figures."""

from __future__ import annotations

import math

import pytest

from analytics.uplift import compare


def test_worked_example_10000_at_3_percent_against_1000_at_2_percent():
    u = compare(300, 10_000, 20, 1_000)
    assert u is not None
    # by hand: SE = sqrt(.03*.97/10000 + .02*.98/1000) = sqrt(0.00000291 + 0.0000196) = 0.00474447...
    se = math.sqrt(0.0000291 / 10 + 0.0000196)
    assert se == pytest.approx(0.0047444704, abs=1e-10)
    assert u.uplift == pytest.approx(0.01)
    assert u.ci_low == pytest.approx(0.01 - 1.959963985 * 0.0047444704, abs=1e-9)    # 0.000701...
    assert u.ci_high == pytest.approx(0.01 + 1.959963985 * 0.0047444704, abs=1e-9)   # 0.019299...
    assert (round(u.ci_low * 100, 2), round(u.ci_high * 100, 2)) == (0.07, 1.93)
    # pooled: p = 320/11000 = 0.0290909; SE0 = sqrt(p(1-p)(1/10000 + 1/1000)) = 0.00557396; z = 1.79405
    assert u.z == pytest.approx(1.79405, abs=1e-4)
    assert u.p_value == pytest.approx(0.07281, abs=1e-4)   # 2 * (1 - Phi(1.79405))
    assert not u.significant


def test_a_clear_difference_is_significant_and_no_difference_is_not():
    strong = compare(500, 10_000, 20, 1_000)    # 5% against 2%
    assert strong is not None and strong.significant and strong.ci_low > 0
    assert strong.p_value < 1e-4
    same = compare(200, 10_000, 20, 1_000)
    assert same is not None and same.uplift == pytest.approx(0) and same.p_value == pytest.approx(1.0)
    worse = compare(100, 10_000, 20, 1_000)     # 1% against 2%: negative uplift
    assert worse is not None and worse.uplift == pytest.approx(-0.01) and worse.ci_high < 0


def test_edge_cases():
    assert compare(3, 100, 0, 0) is None and compare(0, 0, 3, 100) is None
    flat = compare(0, 100, 0, 50)
    assert flat is not None and (flat.uplift, flat.ci_low, flat.ci_high, flat.p_value) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError):
        compare(11, 10, 0, 5)
