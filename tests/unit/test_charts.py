"""The dashboard's SVG charts: well-formed XML, bars as wide as their counts, points where their values are,
the figures in data attributes, round axis ticks, and no crash (a "No data yet") on empty, one-day or all-zero
data."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.pages.charts import (
    CURVE_HEIGHT,
    MAX_DAY_LABELS,
    Bar,
    Series,
    curve_svg,
    funnel_svg,
    nice_ticks,
)

SVG = "{http://www.w3.org/2000/svg}"
D0 = date(2026, 11, 2)


def parse(markup: str) -> ET.Element:
    root = ET.fromstring(str(markup))    # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("viewBox")
    return root


def bars_of(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-step"): g for g in root.iter(f"{SVG}g") if g.get("data-step")}


def fill_width(g: ET.Element) -> float:
    [fill] = [r for r in g.iter(f"{SVG}rect") if r.get("class") == "fill"]
    return float(fill.get("width"))


def points_of(root: ET.Element) -> list[ET.Element]:
    return [c for c in root.iter(f"{SVG}circle") if c.get("data-series")]


def days(n: int) -> list[date]:
    return [D0 + timedelta(days=i) for i in range(n)]


# --- funnel ------------------------------------------------------------------------------------------------


FUNNEL = [Bar("audience", "Audience", 11_185), Bar("reached", "Reached", 10_000), Bar("delivered", "Delivered", 2_000),
          Bar("opened", "Opened", 2_400), Bar("clicked", "Clicked", 400), Bar("converted", "Converted", 300)]


def test_funnel_bars_are_as_wide_as_their_counts_and_carry_them():
    root = parse(funnel_svg(FUNNEL, base=10_000))
    bars = bars_of(root)
    assert list(bars) == [b.key for b in FUNNEL]
    assert {k: int(g.get("data-count")) for k, g in bars.items()} == {b.key: b.count for b in FUNNEL}
    widest = fill_width(bars["audience"])
    assert widest == pytest.approx(330)
    for b in FUNNEL:
        # two decimals in the markup: within 0.005 px of count / largest × the bar area
        assert fill_width(bars[b.key]) == pytest.approx(330 * b.count / 11_185, abs=0.006)
    # a bar longer than another whose count is smaller, even out of funnel order (delivered < opened)
    assert fill_width(bars["opened"]) > fill_width(bars["delivered"])


def test_funnel_labels_give_the_count_and_the_share_of_reached():
    root = parse(funnel_svg(FUNNEL, base=10_000))
    bars = bars_of(root)
    texts = {k: [t.text for t in g.iter(f"{SVG}text")] for k, g in bars.items()}
    assert texts["reached"] == ["Reached", "10,000 · 100.0%"]
    assert texts["clicked"] == ["Clicked", "400 · 4.0%"]
    assert texts["audience"][1] == "11,185 · 111.9%"       # the audience includes who was not reached
    assert bars["converted"].get("data-share") == "0.030000"
    assert bars["converted"].find(f"{SVG}title").text == "Converted: 300 (3.0% of reached)"


def test_funnel_with_nobody_reached_yet_has_counts_but_no_share():
    bars = bars_of(parse(funnel_svg([Bar("audience", "Audience", 50), Bar("reached", "Reached", 0)], base=0)))
    assert bars["reached"].get("data-share") is None
    assert [t.text for t in bars["audience"].iter(f"{SVG}text")] == ["Audience", "50 · —"]
    assert fill_width(bars["reached"]) == 0


@pytest.mark.parametrize("bars", [[], [Bar("audience", "Audience", 0), Bar("reached", "Reached", 0)]])
def test_a_campaign_with_nothing_yet_shows_no_data_yet(bars):
    root = parse(funnel_svg(bars, base=0))
    assert root.get("data-empty") == "true"
    assert [t.text for t in root.iter(f"{SVG}text")] == ["No data yet"]
    assert not bars_of(root)


def test_labels_are_escaped_not_markup():
    root = parse(funnel_svg([Bar("a<b", 'Tom & "Jerry" <script>', 3)], base=3))
    [g] = bars_of(root).values()
    assert g.get("data-step") == "a<b"
    assert next(t.text for t in g.iter(f"{SVG}text")) == 'Tom & "Jerry" <script>'
    assert not list(root.iter("script")) and not list(root.iter(f"{SVG}script"))


# --- daily curve -------------------------------------------------------------------------------------------


SERIES = [Series("sent", "Sent", [5_000, 5_000, 0]), Series("opened", "Opened", [1, 1, 0]),
          Series("clicked", "Clicked", [0, 0, 0]), Series("conversions", "Conversions", [0, 200, 100])]


def test_curve_has_a_point_per_day_and_series_with_its_figure_and_tooltip():
    root = parse(curve_svg(days(3), SERIES))
    pts = points_of(root)
    assert len(pts) == 12
    got = {(p.get("data-series"), p.get("data-day")): int(p.get("data-count")) for p in pts}
    want = {(s.key, (D0 + timedelta(days=i)).isoformat()): v for s in SERIES for i, v in enumerate(s.values)}
    assert got == want
    tip = next(p for p in pts if p.get("data-series") == "conversions" and p.get("data-day") == "2026-11-03")
    assert tip.find(f"{SVG}title").text == "Conversions, 2026-11-03: 200"
    assert len([p for p in root.iter(f"{SVG}polyline")]) == 4
    legend = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "legend" for t in g.iter(f"{SVG}text")]
    assert legend == ["Sent", "Opened", "Clicked", "Conversions"]


def test_points_sit_at_their_values_on_a_linear_axis_with_round_ticks():
    root = parse(curve_svg(days(3), SERIES))
    ticks = [int(t.get("data-tick")) for t in root.iter(f"{SVG}text") if t.get("data-tick") is not None]
    assert ticks == [0, 1000, 2000, 3000, 4000, 5000]
    tick_y = {int(t.get("data-tick")): float(t.get("y")) for t in root.iter(f"{SVG}text") if t.get("data-tick")}
    zero, top = tick_y[0], tick_y[5000]
    for p in points_of(root):
        expected = zero + (top - zero) * int(p.get("data-count")) / 5000
        assert float(p.get("cy")) == pytest.approx(expected, abs=0.006)
    xs = sorted({float(p.get("cx")) for p in points_of(root)})
    assert len(xs) == 3 and xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])    # days evenly spaced


def test_one_day_is_a_column_of_points_in_the_middle_without_lines():
    root = parse(curve_svg(days(1), [Series("sent", "Sent", [7]), Series("opened", "Opened", [3])]))
    pts = points_of(root)
    assert len(pts) == 2 and len({p.get("cx") for p in pts}) == 1
    width = float(root.get("viewBox").split()[2])
    assert 0.4 * width < float(pts[0].get("cx")) < 0.6 * width
    assert not list(root.iter(f"{SVG}polyline"))
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("data-day")] == ["02 Nov"]


def test_all_zero_figures_draw_a_flat_line_on_a_zero_to_one_axis():
    root = parse(curve_svg(days(4), [Series("sent", "Sent", [0, 0, 0, 0])]))
    ticks = [t.get("data-tick") for t in root.iter(f"{SVG}text") if t.get("data-tick") is not None]
    assert ticks == ["0", "1"]
    ys = {float(p.get("cy")) for p in points_of(root)}
    assert len(ys) == 1 and all(math.isfinite(y) for y in ys) and ys.pop() < CURVE_HEIGHT


def test_no_day_yet_shows_no_data_yet():
    root = parse(curve_svg([], [Series("sent", "Sent", [])]))
    assert root.get("data-empty") == "true"
    assert [t.text for t in root.iter(f"{SVG}text")] == ["No data yet"]


def test_a_long_campaign_labels_a_few_days_but_keeps_every_point():
    n = 400
    root = parse(curve_svg(days(n), [Series("sent", "Sent", list(range(n)))]))
    labels = [t for t in root.iter(f"{SVG}text") if t.get("data-day")]
    assert 2 <= len(labels) <= MAX_DAY_LABELS + 1
    assert labels[0].get("data-day") == D0.isoformat()
    assert len(points_of(root)) == n


def test_a_series_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="'sent' has 2 values for 3 days"):
        curve_svg(days(3), [Series("sent", "Sent", [1, 2])])


def test_formats_and_texts_come_from_the_caller():
    from app.pages.charts import Formats

    fmt = Formats(number=lambda x: f"<{x:.0f}>", percent=lambda x: f"{x * 100:.0f} pct", day=lambda d: "D",
                  day_long=lambda d: "the day")
    root = parse(funnel_svg([Bar("reached", "Reached", 4)], base=8, fmt=fmt))
    assert [t.text for t in root.iter(f"{SVG}text")] == ["Reached", "<4> · 50 pct"]
    root = parse(curve_svg(days(1), [Series("sent", "Sent", [4])], fmt=fmt))
    assert points_of(root)[0].find(f"{SVG}title").text == "Sent, the day: <4>"


# --- ticks -------------------------------------------------------------------------------------------------


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_ticks_are_round_start_at_zero_and_cover_the_top(top):
    ticks = nice_ticks(top)
    assert ticks[0] == 0 and ticks[-1] >= top
    assert 2 <= len(ticks) <= 11
    step = ticks[1] - ticks[0]
    assert step >= 1
    assert all(b - a == pytest.approx(step) for a, b in itertools.pairwise(ticks))
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)
    assert ticks[-2] < top or top == 0      # no extra empty band above the highest figure
