"""Small SVG line plots: a run's curves.svg and the HTML report's plots.

Written by hand rather than with matplotlib: importing matplotlib and laying out a figure costs
seconds, a noticeable share of a one-minute run (benchmarks/README.md), for a few lines of a few
dozen points. What a reader needs is here: ticks at round numbers with gridlines, a legend, and
shaded interval bands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y)
    color: str = COLORS[0]
    dots: bool = False  # mark each point (evaluations; a series of one point always gets one)
    dashed: bool = False
    band: list[tuple[float, float, float]] = field(default_factory=list)  # (x, low, high): a shaded interval


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        low, high = low - (abs(low) * 0.05 or 1), high + (abs(high) * 0.05 or 1)
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    ticks, k = [], math.ceil(low / step - 1e-9)
    while k * step <= high + step * 1e-9:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def tick_label(value: float, ticks: list[float]) -> str:
    """A tick's text with as many decimals as the tick step needs (0.1, 0.15, 2500, 1e-05)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1
    if step < 1e-4 or abs(value) >= 1e6:
        return f"{value:.1e}"
    decimals = 0
    while decimals < 8 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def panel(x0: float, y0: float, width: float, height: float, title: str, series: list[Series],
          x_label: str = "step", subtitle: str = "", x_names: list[str] | None = None,
          x_range: tuple[float, float] | None = None) -> str:
    """One framed plot with gridlines, round ticks, a legend, and each series' band, line and dots.
    `x_names`: categories at x = 0, 1, ... named on the axis instead of numeric ticks (no legend).
    `x_range`: the x axis's extent (panels of one figure line up); default: the data's."""
    left, right, top, bottom = x0 + 56, x0 + width - 14, y0 + (42 if subtitle else 30), y0 + height - 40
    out = [f'<text x="{x0 + width / 2:.1f}" y="{y0 + 17}" text-anchor="middle" font-weight="bold" '
           f'font-size="13">{escape(title)}</text>']
    if subtitle:
        out.append(f'<text x="{x0 + width / 2:.1f}" y="{y0 + 31}" text-anchor="middle" fill="#555">{escape(subtitle)}</text>')
    xs = [p[0] for s in series for p in s.points] + [b[0] for s in series for b in s.band]
    ys = [p[1] for s in series for p in s.points if math.isfinite(p[1])]
    ys += [v for s in series for b in s.band for v in b[1:] if math.isfinite(v)]
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="white" stroke="#888"/>')
    if not xs or not ys:
        out.append(f'<text x="{(left + right) / 2}" y="{(top + bottom) / 2}" text-anchor="middle" fill="#888">no data</text>')
        return "\n".join(out)
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if x_names:
        x_lo, x_hi = -0.5, len(x_names) - 0.5
    elif x_range and x_range[1] > x_range[0]:
        x_lo, x_hi = min(x_lo, x_range[0]), max(x_hi, x_range[1])
    if x_hi == x_lo:  # one point: centred
        x_lo, x_hi = x_lo - 1, x_hi + 1
    margin = (y_hi - y_lo) * 0.06 or abs(y_hi) * 0.05 or 1  # a flat line sits mid-panel
    y_lo, y_hi = y_lo - margin, y_hi + margin
    x_ticks = nice_ticks(x_lo, x_hi, 6, integer=all(float(x).is_integer() for x in xs))
    y_ticks = nice_ticks(y_lo, y_hi, 6)

    def px(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / ((y_hi - y_lo) or 1) * (bottom - top)

    for tick in y_ticks:
        y = py(tick)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{tick_label(tick, y_ticks)}</text>')
    labels = [(i, name if len(name) <= 24 else "..." + name[-21:]) for i, name in enumerate(x_names)] if x_names \
        else [(tick, tick_label(tick, x_ticks)) for tick in x_ticks]
    for tick, text in labels:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#eeeeee"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{escape(text)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 32}" text-anchor="middle" fill="#444">{escape(x_label)}</text>')
    for s in series:
        label = escape(s.label)
        if len(s.band) > 1:
            upper = [f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in s.band]
            lower = [f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(s.band)]
            out.append(f'<polygon class="band" data-label="{label}" points="{" ".join(upper + lower)}" '
                       f'fill="{s.color}" fill-opacity="0.15" stroke="none"/>')
        elif s.band:  # one point: an error bar
            x, lo, hi = s.band[0]
            out.append(f'<line class="band" data-label="{label}" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(lo):.1f}" '
                       f'y2="{py(hi):.1f}" stroke="{s.color}" stroke-width="2" stroke-opacity="0.5"/>')
        coords = [(px(x), py(y)) for x, y in s.points if math.isfinite(y)]
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<polyline class="series" data-label="{label}" fill="none" stroke="{s.color}" stroke-width="1.8"'
                   f'{dash} points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>')
        if s.dots or len(coords) == 1:
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.8" fill="{s.color}"/>' for x, y in coords]
    if len(series) > 1 and not x_names:
        widest = max(len(s.label) for s in series)
        out.append(f'<rect x="{right - 36 - 6.2 * widest:.1f}" y="{top + 3}" width="{32 + 6.2 * widest:.1f}" '
                   f'height="{14 * len(series) + 4}" fill="white" fill-opacity="0.85" stroke="#ddd"/>')
        for number, s in enumerate(series):
            y = top + 14 + 14 * number
            dash = ' stroke-dasharray="5,3"' if s.dashed else ""
            out.append(f'<line x1="{right - 26}" x2="{right - 8}" y1="{y - 4}" y2="{y - 4}" stroke="{s.color}" '
                       f'stroke-width="2"{dash}/>')
            out.append(f'<text x="{right - 30}" y="{y}" text-anchor="end" fill="#222">{escape(s.label)}</text>')
    return "\n".join(out)


def figure(panels: list[tuple[str, str, list[Series]]], x_label: str = "step", columns: int = 2,
           width: int = 420, height: int = 290, x_names: list[str] | None = None) -> str:
    """A grid of panels (title, subtitle, series) as one SVG document, sharing one x range
    (x_names: see panel)."""
    columns = max(1, min(columns, len(panels)))
    xs = [p[0] for _, _, series in panels for s in series for p in s.points]
    x_range = (min(xs), max(xs)) if xs else None
    rows = math.ceil(len(panels) / columns)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{columns * width}" height="{rows * height}" '
             f'viewBox="0 0 {columns * width} {rows * height}" font-family="sans-serif" font-size="11">'
             '<rect width="100%" height="100%" fill="white"/>']
    for index, (title, subtitle, series) in enumerate(panels):
        parts.append(panel((index % columns) * width, (index // columns) * height, width, height, title, series,
                           x_label, subtitle, x_names, x_range))
    parts.append("</svg>\n")
    return "\n".join(parts)
