"""Holdout assignment: deterministic, close to the share asked for, independent between campaigns."""

from __future__ import annotations

from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.holdout import bucket, held_out

MEMBERS = range(1, 10_001)


def test_assignment_is_the_documented_hash():
    h = int.from_bytes(blake2b(b"spring-sale:42", digest_size=8).digest(), "big")
    assert bucket("spring-sale", 42) == h / 2**64
    assert held_out("spring-sale", 42, 0.3) == (h / 2**64 < 0.3)


def test_assignment_is_the_same_on_every_call():
    first = [held_out("spring-sale", m, 0.1) for m in range(1, 2001)]
    assert first == [held_out("spring-sale", m, 0.1) for m in range(1, 2001)]


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2])
def test_holdout_size_is_within_one_percent_of_the_share(share):
    held = sum(held_out("spring-sale", m, share) for m in MEMBERS)
    assert abs(held / len(MEMBERS) - share) <= 0.01


def test_share_zero_holds_out_nobody():
    assert not any(held_out("spring-sale", m, 0) for m in MEMBERS)


def test_two_campaigns_hold_out_independent_members():
    a = {m for m in MEMBERS if held_out("spring-sale", m, 0.1)}
    b = {m for m in MEMBERS if held_out("birthday-bonus", m, 0.1)}
    assert abs(len(a & b) / len(MEMBERS) - 0.01) <= 0.005


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_nonsense_share_is_refused(share):
    with pytest.raises(ValueError, match="share"):
        held_out("spring-sale", 1, share)


@settings(max_examples=200)
@given(key=st.text(max_size=40), member=st.integers(0, 2**63), low=st.floats(0, 0.5), high=st.floats(0, 0.5))
def test_bucket_is_in_unit_interval_and_a_larger_share_only_adds_members(key, member, low, high):
    low, high = sorted((low, high))
    assert 0 <= bucket(key, member) < 1
    assert held_out(key, member, low) <= held_out(key, member, high)
    assert held_out(key, member, high) == (high > 0 and bucket(key, member) < high)
