"""A/B variants: each member always in the same variant, split close to the shares, independent of the
holdout and of other campaigns; bad variant lists refused with messages that say what is wrong."""

from __future__ import annotations

from hashlib import blake2b
from itertools import pairwise
from statistics import correlation

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from campaigns.holdout import held_out
from campaigns.variants import (
    Variant,
    Variants,
    assign,
    expected_counts,
    validate_variants,
    variant_bucket,
)

MEMBERS = range(1, 10_001)


def split(*shares: float) -> list[Variant]:
    return validate_variants([Variant(key=chr(ord("a") + i), share=s) for i, s in enumerate(shares)])


def observed(campaign: str, variants: list[Variant], members: range | list[int] = MEMBERS) -> dict[str, int]:
    counts = dict.fromkeys((v.key for v in variants), 0)
    for m in members:
        counts[assign(campaign, m, variants).key] += 1
    return counts


# --- determinism -----------------------------------------------------------------------------------------

def test_assignment_is_the_documented_hash():
    # pinned: a change of hash, personalization or input text reassigns every running test, so it must show
    digest = blake2b(b"spring-sale:42", digest_size=8, person=b"clarion/variant").digest()
    assert digest.hex() == "ef621ecf92212b47"
    assert variant_bucket("spring-sale", 42) == int.from_bytes(digest, "big") / 2**64
    assert variant_bucket("spring-sale", 42) == 0xEF621ECF92212B47 / 2**64


def test_first_members_of_a_fifty_fifty_split_are_pinned():
    # also pins the mapping of bucket to variant (ranges in the order listed)
    variants = split(50, 50)
    assert "".join(assign("spring-sale", m, variants).key for m in range(1, 33)) == \
        "bbabaabbabbabbbbbbbbabbbbbbaabbb"


def test_a_member_gets_the_same_variant_on_every_call():
    variants = split(33.3, 33.3, 33.4)
    first = [assign("spring-sale", m, variants).key for m in range(1, 2001)]
    assert first == [assign("spring-sale", m, variants).key for m in range(1, 2001)]
    # equal variants built anew (as after reloading the spec) give the same answer
    assert first == [assign("spring-sale", m, split(33.3, 33.3, 33.4)).key for m in range(1, 2001)]


# --- split sizes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shares", [(50, 50), (70, 30), (33.3, 33.3, 33.4), (10, 90)])
def test_each_variant_gets_its_share_within_one_percent(shares):
    variants = split(*shares)
    counts = observed("spring-sale", variants)
    for v in variants:
        assert abs(counts[v.key] / len(MEMBERS) - v.share / 100) <= 0.01, (v.key, counts)


def test_expected_counts_follow_the_shares():
    assert expected_counts(10_000, split(33.3, 33.3, 33.4)) == pytest.approx({"a": 3330, "b": 3330, "c": 3340})
    assert expected_counts(200, split(100)) == {"a": 200}


def test_one_variant_of_a_hundred_gets_everyone():
    assert observed("spring-sale", split(100), range(1, 1001)) == {"a": 1000}


# --- independence --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shares", [(50, 50), (10, 90)])
def test_members_held_out_spread_over_the_variants_by_their_shares(shares):
    # 50,000 members, 10% held out: ~5,000 held. The standard error of a variant's share among them is
    # sqrt(p(1-p)/5000) ≤ 0.71%, so 2% is ~3 standard errors: an independent hash passes, while a split on
    # the holdout's own bucket puts every held-out member in the first variant (100% against 50% or 10%).
    held = [m for m in range(1, 50_001) if held_out("spring-sale", m, 0.1)]
    assert 4_700 <= len(held) <= 5_300
    variants = split(*shares)
    counts = observed("spring-sale", variants, held)
    for v in variants:
        assert abs(counts[v.key] / len(held) - v.share / 100) <= 0.02, (v.key, counts)


def test_two_campaigns_split_the_same_members_independently():
    # correlation of "in variant b" between two campaigns; its standard error over 10,000 members is 1%
    variants = split(50, 50)
    a = [assign("spring-sale", m, variants).key == "b" for m in MEMBERS]
    b = [assign("birthday-bonus", m, variants).key == "b" for m in MEMBERS]
    assert abs(correlation([float(x) for x in a], [float(x) for x in b])) <= 0.03
    assert abs(correlation([variant_bucket("spring-sale", m) for m in MEMBERS],
                           [variant_bucket("birthday-bonus", m) for m in MEMBERS])) <= 0.03


# --- editing a running split ----------------------------------------------------------------------------------

def test_appending_a_variant_moves_only_members_of_the_last_one():
    before = split(50, 50)
    after = split(50, 30, 20)
    for m in range(1, 2001):
        old, new = assign("spring-sale", m, before).key, assign("spring-sale", m, after).key
        assert new == old or (old, new) == ("b", "c")


def test_changing_shares_moves_only_members_across_the_moved_boundary():
    before, after = split(50, 50), split(60, 40)
    moved = {(assign("spring-sale", m, before).key, assign("spring-sale", m, after).key)
             for m in range(1, 2001)}
    assert moved == {("a", "a"), ("b", "b"), ("b", "a")}


# --- validation ------------------------------------------------------------------------------------------------

def test_channel_and_content_variants_and_the_control_are_accepted():
    variants = validate_variants([
        Variant(key="control", share=50),
        Variant(key="short-copy", share=30, template="spring-sale-short"),
        Variant.model_validate({"key": "sms_first", "share": 20, "channels": ["sms", "email"]}),
    ])
    assert [(v.template, v.channels) for v in variants] == [
        (None, None), ("spring-sale-short", None), (None, ["sms", "email"])]


def test_no_variants_is_no_ab_test():
    assert validate_variants([]) == []
    with pytest.raises(ValueError, match="no variants"):
        assign("spring-sale", 1, [])


@pytest.mark.parametrize(("shares", "message"), [
    ((50, 49.9), "variant shares add up to 99.9, not 100"),
    ((33.3, 33.3, 33.3), "variant shares add up to 99.9, not 100"),
    ((60, 50), "variant shares add up to 110, not 100"),
    ((99.998,), "variant shares add up to 99.998, not 100"),
])
def test_shares_that_do_not_add_up_to_a_hundred_are_refused(shares, message):
    with pytest.raises(ValueError) as exc:
        split(*shares)
    assert str(exc.value) == message


def test_a_thousandth_of_a_percent_of_slack_is_allowed():
    assert len(split(33.333, 33.333, 33.3335)) == 3


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError) as exc:
        validate_variants([Variant(key="a", share=50), Variant(key="a", share=50)])
    assert str(exc.value) == "variant keys must be distinct: 'a' used more than once"


def test_more_than_ten_variants_are_refused():
    with pytest.raises(ValueError) as exc:
        split(*[100 / 11] * 11)
    assert str(exc.value) == "at most 10 variants, got 11"
    assert len(split(*[10] * 10)) == 10


class _Spec(BaseModel):  # how the campaign spec declares the field
    variants: Variants = []


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        _Spec.model_validate(data)
    return {".".join(map(str, e["loc"])): e["msg"].removeprefix("Value error, ") for e in exc.value.errors()}


@pytest.mark.parametrize(("variant", "field", "message"), [
    ({"key": "a", "share": 0}, "share", "Input should be greater than 0"),
    ({"key": "a", "share": -5}, "share", "Input should be greater than 0"),
    ({"key": "a", "share": 100.5}, "share", "Input should be less than or equal to 100"),
    ({"key": "a", "share": True}, "share", "Input should be a valid number"),
    ({"key": "a", "share": "50"}, "share", "Input should be a valid number"),
    ({"key": "B", "share": 50}, "key", "String should match pattern"),
    ({"key": "a" * 33, "share": 50}, "key", "String should match pattern"),
    ({"key": "-a", "share": 50}, "key", "String should match pattern"),
    ({"key": "a", "share": 50, "template": "Spring Sale"}, "template", "String should match pattern"),
    ({"key": "a", "share": 50, "channels": ["sms", "sms"]}, "channels", "list each channel once"),
    ({"key": "a", "share": 50, "channels": ["fax"]}, "channels.0", "Input should be 'email', 'sms'"),
    ({"key": "a", "share": 50, "channels": []}, "channels", "List should have at least 1 item"),
    ({"key": "a", "share": 50, "subject": "Hi"}, "subject", "Extra inputs are not permitted"),
])
def test_a_bad_variant_is_reported_at_its_field(variant, field, message):
    found = problems({"variants": [variant, {"key": "z", "share": 50}]})
    assert found[f"variants.0.{field}"].startswith(message), found


def test_a_bad_list_is_reported_at_the_list():
    assert problems({"variants": [{"key": "a", "share": 50}, {"key": "b", "share": 40}]}) == {
        "variants": "variant shares add up to 90, not 100"}


def test_variants_are_frozen():
    with pytest.raises(ValidationError):
        Variant(key="a", share=50).share = 60  # type: ignore[misc]


# --- any split -----------------------------------------------------------------------------------------------

@st.composite
def shares_summing_to_100(draw) -> list[float]:
    """1-10 positive shares in thousandths of a percent that add up to 100."""
    cuts = draw(st.lists(st.integers(1, 99_999), max_size=9, unique=True))
    edges = [0, *sorted(cuts), 100_000]
    return [(hi - lo) / 1000 for lo, hi in pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(shares=shares_summing_to_100(), key=st.text(max_size=40), member=st.integers(0, 2**63))
def test_any_split_assigns_one_of_its_variants(shares, key, member):
    variants = split(*shares)
    chosen = assign(key, member, variants)
    assert any(chosen is v for v in variants)
    assert chosen is assign(key, member, variants)
    assert 0 <= variant_bucket(key, member) < 1
