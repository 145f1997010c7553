"""Unit costs, message costs and how far a budget goes, all in exact decimals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.costs import DEFAULT_UNIT_COSTS, affordable, message_cost, money, unit_costs
from storage.tables import ChannelName

D = Decimal


def test_defaults_cover_every_channel():
    assert set(DEFAULT_UNIT_COSTS) == {c.value for c in ChannelName}
    assert DEFAULT_UNIT_COSTS["sms"] == D("0.05")
    assert DEFAULT_UNIT_COSTS["direct_mail"] == D("0.8")
    assert DEFAULT_UNIT_COSTS["telegram"] == 0


def test_program_overrides_replace_defaults_from_numbers_or_text():
    costs = unit_costs({"sms": "0.07", "email": 0, "whatsapp": 0.045, "direct_mail": D("1.2")})
    assert costs["sms"] == D("0.0700")
    assert costs["email"] == D("0")
    assert costs["whatsapp"] == D("0.0450")  # from the float's shortest text, not its binary value
    assert costs["direct_mail"] == D("1.2")
    assert costs["push"] == DEFAULT_UNIT_COSTS["push"]
    assert unit_costs(None) == DEFAULT_UNIT_COSTS
    assert unit_costs({}) is not DEFAULT_UNIT_COSTS


def test_override_finer_than_four_places_is_rounded_half_up():
    assert unit_costs({"email": "0.00015"})["email"] == D("0.0002")


@pytest.mark.parametrize("raw,message", [("-0.01", "negative"), (-1, "negative"), ("NaN", "finite"),
                                         (float("nan"), "finite"), (float("inf"), "finite"), ("cheap", "amount"),
                                         (None, "amount"), (True, "amount")])
def test_bad_override_names_the_channel(raw, message):
    with pytest.raises(ValueError, match=f"sms.*{message}"):
        unit_costs({"sms": raw})


def test_override_for_unknown_channel_is_refused():
    with pytest.raises(ValueError, match="fax"):
        unit_costs({"fax": "1"})


def test_sms_costs_per_segment_other_channels_per_message():
    costs = unit_costs(None)
    assert message_cost("sms", costs, segments=3) == D("0.15")
    assert message_cost("whatsapp", costs, segments=3) == D("0.03")
    assert message_cost("email", costs) == D("0.001")
    assert message_cost("telegram", costs) == 0


@pytest.mark.parametrize("segments", [0, -1, 1.5, True])
def test_message_cost_refuses_impossible_segment_counts(segments):
    with pytest.raises(ValueError, match="segments"):
        message_cost("sms", DEFAULT_UNIT_COSTS, segments=segments)


def test_message_cost_for_a_channel_without_a_cost_is_refused():
    with pytest.raises(ValueError, match="fax"):
        message_cost("fax", DEFAULT_UNIT_COSTS)


@pytest.mark.parametrize("x,expected", [("0.00005", "0.0001"), ("0.00004", "0.0000"), ("-0.00005", "-0.0001"),
                                        (1, "1.0000"), (D("2.5"), "2.5000"), (0.1, "0.1000"), (" 3.14159 ", "3.1416")])
def test_money_has_four_places_rounded_half_up(x, expected):
    result = money(x)
    assert str(result) == expected


@pytest.mark.parametrize("x", [float("nan"), float("-inf"), D("NaN"), D("Infinity"), "inf", "", "1,5", None, [1]])
def test_money_refuses_what_is_not_a_finite_amount(x):
    with pytest.raises(ValueError):
        money(x)


def test_budget_stops_at_the_first_message_that_does_not_fit():
    costs = [D("0.05"), D("0.10"), D("0.80"), D("0.05")]
    assert affordable(costs, D("1.00")) == 4  # exactly spent
    assert affordable(costs, D("0.99")) == 3
    assert affordable(costs, D("0.94")) == 2  # the 0.80 does not fit; the 0.05 after it is not sent
    assert affordable(costs, D("0")) == 0
    assert affordable([D(0), D(0)], D("0")) == 2
    assert affordable([], D("5")) == 0


def test_budget_spent_to_the_last_cent_sends_the_last_message():
    assert affordable([D("0.05")] * 20, D("1.00")) == 20
    assert affordable([D("0.05")] * 21, D("1.00")) == 20


# --- properties -----------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(costs=st.lists(amounts, max_size=50), remaining=amounts)
def test_affordable_prefix_fits_and_the_next_does_not(costs, remaining):
    n = affordable(costs, remaining)
    assert 0 <= n <= len(costs)
    assert sum(costs[:n], D(0)) <= remaining
    if n < len(costs):
        assert sum(costs[:n + 1], D(0)) > remaining


@settings(max_examples=200)
@given(costs=st.lists(amounts, max_size=50), extra=amounts)
def test_everything_fits_when_the_total_does(costs, extra):
    assert affordable(costs, sum(costs, D(0)) + extra) == len(costs)


@settings(max_examples=200)
@given(cost=amounts, n=st.integers(0, 100_000))
def test_decimal_costs_add_up_exactly(cost, n):
    assert sum([cost] * min(n, 1000), D(0)) == cost * min(n, 1000)
    assert money(cost * n) == cost * n
    assert message_cost("sms", {"sms": cost}, segments=max(n, 1)) == cost * max(n, 1)


@settings(max_examples=200)
@given(x=st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**9, max_value=10**9))
def test_money_is_within_half_a_ten_thousandth(x):
    assert abs(money(x) - x) <= D("0.00005")
    assert money(money(x)) == money(x)
