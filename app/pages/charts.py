"""Charts for the dashboard as inline SVG, drawn on the server: no script, no web font, nothing fetched.

Pure functions, figures in, markup out:

- :func:`funnel_svg` — horizontal bars (audience → reached → delivered → opened → clicked → converted), each
  as wide as its count against the largest one, labelled with the count and its share of a base (the
  reached messages);
- :func:`curve_svg` — one line per series over consecutive days, with a y axis of round ticks, day labels,
  a legend, and a point per day and series carrying a ``<title>`` (the tooltip).

Every bar and point carries its figure in ``data-*`` attributes (``data-step``/``data-count`` on a bar,
``data-series``/``data-day``/``data-count`` on a point), so a test reads the chart's numbers the way a
screen does not need to. Colours are presentation attributes, not ``style``: the pages' Content-Security-Policy
allows no inline style attribute. With nothing to draw (no audience, no day) a chart says "No data yet".
Texts and number formats come from the caller (the dashboard formats them for the program's locale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

from app.pages.texts import dashboard_texts

# line colours (and dash patterns, so the lines differ without colour too), in series order
PALETTE = (("#3451c7", ""), ("#1e7e34", "7 4"), ("#b35c00", "2 3"), ("#a3187a", "10 3 2 3"))


@dataclass(frozen=True)
class Formats:
    """How numbers and days are written on a chart."""

    number: Callable[[float], str] = lambda x: f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"
    percent: Callable[[float], str] = lambda x: f"{x:.1%}"
    day: Callable[[date], str] = lambda d: d.strftime("%d %b")          # an axis label
    day_long: Callable[[date], str] = lambda d: d.isoformat()           # in a tooltip


@dataclass(frozen=True)
class Bar:
    key: str        # machine name: data-step
    label: str
    count: int


@dataclass(frozen=True)
class Series:
    key: str        # machine name: data-series
    label: str
    values: Sequence[int | float]   # one per day


def _num(x: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _attr(value: object) -> str:
    return str(escape(str(value)))


def _empty(chart_id: str, title: str, message: str, *, width: int, height: int = 120) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-empty" id="{_attr(chart_id)}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="{_attr(chart_id)}-title" data-empty="true">'
        f'<title id="{_attr(chart_id)}-title">{escape(title)}: {escape(message)}</title>'
        f'<text class="empty" x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle" '
        f'dominant-baseline="middle">{escape(message)}</text></svg>')


# --- funnel ------------------------------------------------------------------------------------------------

FUNNEL_WIDTH = 640
_LABEL_W, _BAR_X, _BAR_W, _ROW, _BAR_H, _PAD = 140, 150, 330, 34, 22, 8


def funnel_svg(bars: Sequence[Bar], *, base: int, fmt: Formats = Formats(), chart_id: str = "funnel",
               t: Mapping[str, str] | None = None) -> Markup:
    """Horizontal bars, widths proportional to the counts (the largest spans the bar area); each labelled
    "count · share of ``base``" (no share when ``base`` is 0). All counts 0 (or no bar): "No data yet"."""
    t = t or dashboard_texts()
    top = max((b.count for b in bars), default=0)
    if top <= 0:
        return _empty(chart_id, t["funnel"], t["no_data"], width=FUNNEL_WIDTH)
    height = _PAD * 2 + _ROW * len(bars)
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart funnel" id="{_attr(chart_id)}" '
            f'viewBox="0 0 {FUNNEL_WIDTH} {height}" role="img" '
            f'aria-labelledby="{_attr(chart_id)}-title {_attr(chart_id)}-desc" data-base="{int(base)}">'),
           f'<title id="{_attr(chart_id)}-title">{escape(t["funnel"])}</title>',
           f'<desc id="{_attr(chart_id)}-desc">{escape(t["funnel_desc"])}</desc>']
    for i, bar in enumerate(bars):
        y = _PAD + i * _ROW
        width = _BAR_W * bar.count / top
        share = bar.count / base if base > 0 else None
        percent = fmt.percent(share) if share is not None else t["not_available"]
        count = fmt.number(bar.count)
        middle = _num(y + _ROW / 2)
        out.append(
            f'<g class="bar bar-{_attr(bar.key)}" data-step="{_attr(bar.key)}" data-count="{int(bar.count)}"'
            + (f' data-share="{share:.6f}"' if share is not None else "") + ">"
            f'<title>{escape(t["bar_title"].format(label=bar.label, count=count, percent=percent))}</title>'
            f'<text class="label" x="{_LABEL_W}" y="{middle}" text-anchor="end" dominant-baseline="middle">'
            f'{escape(bar.label)}</text>'
            f'<rect class="track" x="{_BAR_X}" y="{_num(y + (_ROW - _BAR_H) / 2)}" width="{_BAR_W}" '
            f'height="{_BAR_H}" fill="#eceef6"/>'
            f'<rect class="fill" x="{_BAR_X}" y="{_num(y + (_ROW - _BAR_H) / 2)}" width="{_num(width)}" '
            f'height="{_BAR_H}" fill="#3451c7"/>'
            f'<text class="value" x="{_BAR_X + _BAR_W + 10}" y="{middle}" dominant-baseline="middle">'
            f'{escape(t["bar_value"].format(count=count, percent=percent))}</text></g>')
    out.append("</svg>")
    return Markup("".join(out))


# --- daily curve -------------------------------------------------------------------------------------------

CURVE_WIDTH, CURVE_HEIGHT = 720, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 20, 44, 40
MAX_DAY_LABELS = 8


def nice_ticks(top: float, count: int = 5) -> list[int | float]:
    """Round tick values from 0 to at least ``top`` (steps of 1, 2 or 5 × 10ⁿ, never below 1: counts are
    whole numbers). ``top`` ≤ 0 gives [0, 1], so an all-zero curve still has an axis."""
    if not math.isfinite(top) or top <= 0:
        return [0, 1]
    raw = top / count
    step: int | float = 1
    if raw > 1:
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
        if float(step).is_integer():
            step = int(step)
    return [i * step for i in range(max(1, math.ceil(top / step)) + 1)]


def curve_svg(days: Sequence[date], series: Sequence[Series], *, fmt: Formats = Formats(),
              chart_id: str = "curve", t: Mapping[str, str] | None = None) -> Markup:
    """Lines over ``days`` (one value per day in each series): y from 0 to a round top, a label on at most
    :data:`MAX_DAY_LABELS` days, a legend, a point with a tooltip per day and series. One day is a column of
    points in the middle; no day (or no series) is "No data yet"."""
    t = t or dashboard_texts()
    if not days or not series:
        return _empty(chart_id, t["curve"], t["no_data"], width=CURVE_WIDTH)
    for s in series:
        if len(s.values) != len(days):
            raise ValueError(f"series {s.key!r} has {len(s.values)} values for {len(days)} days")
    ticks = nice_ticks(max((max(s.values, default=0) for s in series), default=0))
    top = ticks[-1]
    plot_w, plot_h = CURVE_WIDTH - _LEFT - _RIGHT, CURVE_HEIGHT - _TOP - _BOTTOM
    n = len(days)

    def x(i: int) -> float:
        return _LEFT + plot_w / 2 if n == 1 else _LEFT + plot_w * i / (n - 1)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    range_text = t["curve_range"].format(first=fmt.day_long(days[0]), last=fmt.day_long(days[-1]))
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart curve" id="{_attr(chart_id)}" '
            f'viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" role="img" '
            f'aria-labelledby="{_attr(chart_id)}-title {_attr(chart_id)}-desc" data-days="{n}">'),
           f'<title id="{_attr(chart_id)}-title">{escape(t["curve"])}</title>',
           f'<desc id="{_attr(chart_id)}-desc">{escape(range_text)}</desc>']
    # legend
    out.append('<g class="legend">')
    lx = _LEFT
    for k, s in enumerate(series):
        colour, dash = PALETTE[k % len(PALETTE)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="legend-item" data-series="{_attr(s.key)}">'
                   f'<line x1="{lx}" y1="16" x2="{lx + 28}" y2="16" stroke="{colour}" stroke-width="3"{dash_attr}/>'
                   f'<text x="{lx + 34}" y="16" dominant-baseline="middle">{escape(s.label)}</text></g>')
        lx += 44 + 8 * len(s.label) + 16
    out.append("</g>")
    # y axis: grid lines and ticks
    out.append('<g class="axis axis-y">')
    for v in ticks:
        yy = _num(y(v))
        out.append(f'<line class="grid" x1="{_LEFT}" y1="{yy}" x2="{CURVE_WIDTH - _RIGHT}" y2="{yy}" '
                   f'stroke="#e4e4ea"/>'
                   f'<text x="{_LEFT - 8}" y="{yy}" text-anchor="end" dominant-baseline="middle" '
                   f'data-tick="{v}">{escape(fmt.number(v))}</text>')
    out.append(f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_num(y(0))}" stroke="#8a8a95"/></g>')
    # x axis: a tick per day (a label on every k-th), the last day always labelled
    every = max(1, math.ceil(n / MAX_DAY_LABELS))
    base_y = _num(y(0))
    out.append(f'<g class="axis axis-x"><line x1="{_LEFT}" y1="{base_y}" x2="{CURVE_WIDTH - _RIGHT}" '
               f'y2="{base_y}" stroke="#8a8a95"/>')
    for i, d in enumerate(days):
        xx = _num(x(i))
        labelled = i % every == 0 or (i == n - 1 and (n - 1) % every >= every / 2)
        out.append(f'<line x1="{xx}" y1="{base_y}" x2="{xx}" y2="{_num(y(0) + (6 if labelled else 3))}" '
                   f'stroke="#8a8a95"/>')
        if labelled:
            out.append(f'<text x="{xx}" y="{_num(y(0) + 20)}" text-anchor="middle" '
                       f'data-day="{d.isoformat()}">{escape(fmt.day(d))}</text>')
    out.append("</g>")
    # lines and points
    for k, s in enumerate(series):
        colour, dash = PALETTE[k % len(PALETTE)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="series series-{_attr(s.key)}" data-series="{_attr(s.key)}">')
        if n > 1:
            points = " ".join(f"{_num(x(i))},{_num(y(v))}" for i, v in enumerate(s.values))
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5" '
                       f'stroke-linejoin="round"{dash_attr}/>')
        for i, (d, v) in enumerate(zip(days, s.values, strict=True)):
            tip = t["curve_point"].format(series=s.label, day=fmt.day_long(d), count=fmt.number(v))
            out.append(f'<circle class="point" cx="{_num(x(i))}" cy="{_num(y(v))}" r="{4 if n <= 60 else 2.5}" '
                       f'fill="{colour}" data-series="{_attr(s.key)}" data-day="{d.isoformat()}" '
                       f'data-count="{_attr(_plain(v))}"><title>{escape(tip)}</title></circle>')
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def _plain(v: float) -> str:
    """A figure as data: whole numbers without a decimal point."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))
