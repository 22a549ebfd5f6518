"""Inline SVG charts, generated in Python: no JavaScript library, no network, prints as vectors.

Every chart returns a string holding one ``<svg>`` element. Text is escaped here; callers pass
plain strings. Interactive hooks are plain attributes the page's small script understands:

* ``data-tip="…"``  text of the hover tooltip (also works for keyboard focus where focusable);
* ``data-s="sN"``   membership of a series that a legend button ``data-toggle="sN"`` hides/shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Iterable, Sequence


# --------------------------------------------------------------------------- palettes
# One colour per criterion, the same in every chart and table of every report.
CRITERION_COLORS = {
    "magnitude": "#4e79a7",
    "wanda": "#f28e2b",
    "snip": "#59a14f",
    "fisher": "#e15759",
    "obs": "#b07aa1",
    "flap": "#2a9d8f",
    "captum": "#c9a227",
    "random": "#8c8c8c",
    "ssm_energy": "#9c755f",
    "ssm_gramian": "#6b5b95",
}
_EXTRA = ["#ff9da7", "#17becf", "#bcbd22", "#6b5b95", "#d37295", "#3d5a80", "#e76f51", "#588157"]

# Parameter groups and unit kinds (anatomy bars, sensitivity curves, heatmap columns).
GROUP_COLORS = {
    "in_proj": "#3b6fb6",
    "x_proj": "#e07b39",
    "dt_proj": "#8e6bbf",
    "conv1d": "#d1495b",
    "dt_bias": "#66a61e",
    "A_log": "#e6ab02",
    "D": "#a6761d",
    "norm": "#7a7a7a",
    "out_proj": "#1b9e77",
    "unit:head": "#1f3b73",
    "unit:channel": "#1a1a1a",  # near-black: in_proj's blue and channels appear in the same Mamba-1 panels
    "unit:head_channel": "#7b1fa2",
    "unit:state": "#17becf",
    "unit:dt_rank": "#6d4c41",
    "layer": "#37474f",
    "embeddings": "#b0bec5",
    "lm_head": "#90a4ae",
    "norm_f": "#cfd8dc",
    "layer_norm": "#bdbdbd",
}
_GROUP_EXTRA = ["#5d8aa8", "#c08552", "#7b9e89", "#a05195", "#d45087", "#2f4b7c", "#ffa600", "#665191"]


def criterion_color(name: str, order: Sequence[str] = ()) -> str:
    if name in CRITERION_COLORS:
        return CRITERION_COLORS[name]
    extra = [c for c in order if c not in CRITERION_COLORS]
    idx = extra.index(name) if name in extra else (sum(map(ord, name)) % len(_EXTRA))
    return _EXTRA[idx % len(_EXTRA)]


def group_color(name: str, order: Sequence[str] = ()) -> str:
    if name in GROUP_COLORS:
        return GROUP_COLORS[name]
    extra = [c for c in order if c not in GROUP_COLORS]
    idx = extra.index(name) if name in extra else (sum(map(ord, name)) % len(_GROUP_EXTRA))
    return _GROUP_EXTRA[idx % len(_GROUP_EXTRA)]


def esc(value: object) -> str:
    return escape(str(value), quote=True)


# --------------------------------------------------------------------------- numbers
def finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: object, digits: int = 4) -> str:
    """Compact number: 4 significant digits, scientific only for very large/small magnitudes."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e6 or a < 1e-4:
            return f"{v:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
        return f"{v:.{digits}g}" if a < 1000 else f"{v:,.0f}"
    return str(v)


def fmt_pct(v: float | None, digits: int = 0) -> str:
    return "–" if v is None or not finite(v) else f"{v * 100:.{digits}f}%"




def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (finite(lo) and finite(hi)):
        return [0.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-6 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi - step * 1e-6:
        ticks.append(round(t, 12))
    return ticks


def tick_label(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    decimals = min(decimals + (1 if step * 10 ** decimals % 1 else 0), 6)
    return f"{v:.{decimals}f}".replace("-", "−")


# --------------------------------------------------------------------------- scales
@dataclass
class Linear:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi

    def __call__(self, v: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.a + (v - self.lo) / span * (self.b - self.a)


@dataclass
class Log:
    lo: float  # data value (positive)
    hi: float
    a: float
    b: float

    def __call__(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        span = (math.log10(self.hi) - math.log10(self.lo)) or 1.0
        return self.a + (math.log10(v) - math.log10(self.lo)) / span * (self.b - self.a)


def log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [10.0**e for e in range(first, last + 1)]
    if last - first <= 2:
        ticks = sorted({t * m for t in ticks for m in (1, 2, 5) if lo <= t * m <= hi} | {10.0**first, 10.0**last})
    return ticks


def log_label(v: float) -> str:
    if 1e-3 <= v < 1e5:
        return f"{v:g}"
    e = math.log10(v)
    return f"1e{round(e)}" if abs(e - round(e)) < 1e-9 else f"{v:.0e}"


def _pt(x: float, y: float) -> str:
    return f"{x:.1f},{y:.1f}"


def svg_open(width: float, height: float, label: str, cls: str = "chart") -> str:
    return (f'<svg class="{cls}" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
            f'role="img" aria-label="{esc(label)}">')


# --------------------------------------------------------------------------- line panels
@dataclass
class Point:
    x: float
    y: float
    lo: float | None = None
    hi: float | None = None
    tip: str = ""


@dataclass
class Series:
    sid: str  # toggle id shared across the panels of one figure
    label: str
    color: str
    points: list[Point]
    dashed: bool = False


@dataclass
class Frame:
    width: float = 360
    height: float = 230
    left: float = 52
    right: float = 12
    top: float = 10
    bottom: float = 38
    parts: list[str] = field(default_factory=list)


def _y_axis(frame: Frame, ys: Linear, ticks: list[float], label: str) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = []
    for t in ticks:
        y = ys(t)
        out.append(f'<line class="grid{" zero" if t == 0 else ""}" x1="{frame.left}" x2="{frame.width - frame.right}" '
                   f'y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{frame.left - 6}" y="{y + 3.5:.1f}" text-anchor="end">'
                   f'{esc(tick_label(t, step))}</text>')
    mid = (frame.top + frame.height - frame.bottom) / 2
    out.append(f'<text class="axis-label" transform="translate(12,{mid:.0f}) rotate(-90)" '
               f'text-anchor="middle">{esc(label)}</text>')
    return out


def _x_axis(frame: Frame, xs, ticks: list[float], label: str, fmt_tick: Callable[[float], str]) -> list[str]:
    base = frame.height - frame.bottom
    out = [f'<line class="axis" x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}"/>']
    for t in ticks:
        x = xs(t)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{base + 15}" text-anchor="middle">{esc(fmt_tick(t))}</text>')
    out.append(f'<text class="axis-label" x="{(frame.left + frame.width - frame.right) / 2:.0f}" '
               f'y="{frame.height - 4}" text-anchor="middle">{esc(label)}</text>')
    return out


def line_panel(series: list[Series], *, label: str, x_label: str, y_label: str, x_max: float = 1.0,
               width: float = 360, height: float = 230, x_pct: bool = True, y_log: bool = False,
               y_limits: tuple[float, float] | None = None, reference: tuple[float, str] | None = None) -> str:
    """Lines with optional uncertainty bands (``Point.lo``/``hi``), a zero line and point tooltips.

    ``y_limits`` fixes the linear y range (shared by the panels of one figure); values beyond it are
    drawn at the edge and marked off-scale with a triangle. ``reference`` is a dashed labelled
    horizontal line (the tolerance).
    """
    f = Frame(width=width, height=height)
    ys_all = [v for s in series for p in s.points for v in (p.y, p.lo, p.hi) if finite(v)]
    if y_limits is not None and not y_log:
        ticks = nice_ticks(*y_limits, 5)
        ticks = [t for t in ticks if y_limits[0] - 1e-12 <= t <= y_limits[1] + 1e-12] or list(y_limits)
        ys = _Clamped(y_limits[0], y_limits[1], height - f.bottom, f.top)
    elif y_log:
        pos = [v for v in ys_all if v > 0] or [1.0]
        lo, hi = min(pos), max(pos)
        if hi / lo < 10:
            lo, hi = lo / 2, hi * 2
        ticks = log_ticks(lo, hi)
        ys = Log(ticks[0], ticks[-1], height - f.bottom, f.top)
    else:
        lo, hi = (min(ys_all + [0.0]), max(ys_all + [0.0])) if ys_all else (0.0, 1.0)
        ticks = nice_ticks(lo, hi, 5)
        ys = Linear(ticks[0], ticks[-1], height - f.bottom, f.top)
    xs = Linear(0.0, x_max, f.left, width - f.right)
    if x_pct:
        step = 0.25 if x_max > 0.3 else 0.05
        xticks = [k * step for k in range(int(x_max / step + 1e-9) + 1)]
    else:
        xticks = [t for t in nice_ticks(0.0, x_max, 4) if t <= x_max + 1e-9]
    parts = [svg_open(width, height, label)]
    if y_log:
        parts += [f'<line class="grid" x1="{f.left}" x2="{width - f.right}" y1="{ys(t):.1f}" y2="{ys(t):.1f}"/>'
                  f'<text class="tick" x="{f.left - 6}" y="{ys(t) + 3.5:.1f}" text-anchor="end">'
                  f'{esc(log_label(t))}</text>' for t in ticks]
        mid = (f.top + height - f.bottom) / 2
        parts.append(f'<text class="axis-label" transform="translate(12,{mid:.0f}) rotate(-90)" '
                     f'text-anchor="middle">{esc(y_label)}</text>')
    else:
        parts += _y_axis(f, ys, ticks, y_label)
    parts += _x_axis(f, xs, xticks, x_label, (lambda t: f"{t:.0%}") if x_pct else (lambda t: fmt(t, 3)))
    if reference is not None and finite(reference[0]):
        y = ys(reference[0])
        parts.append(f'<line class="tolerance" x1="{f.left}" x2="{width - f.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tol-label" x="{f.left + 4}" y="{y - 3:.1f}">{esc(reference[1])}</text>')
    for s in series:
        pts = [p for p in s.points if finite(p.y) and (not y_log or p.y > 0)]
        if not pts:
            continue
        g = [f'<g class="series" data-s="{esc(s.sid)}">']
        band = [p for p in pts if finite(p.lo) and finite(p.hi)]
        if len(band) >= 2:
            upper = " ".join(_pt(xs(p.x), ys(p.hi)) for p in band)
            lower = " ".join(_pt(xs(p.x), ys(p.lo)) for p in reversed(band))
            g.append(f'<polygon class="band" points="{upper} {lower}" fill="{s.color}"/>')
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        g.append(f'<polyline class="line" points="{" ".join(_pt(xs(p.x), ys(p.y)) for p in pts)}" '
                 f'stroke="{s.color}"{dash}/>')
        for p in pts:
            tip = f' data-tip="{esc(p.tip)}"' if p.tip else ""
            if isinstance(ys, _Clamped) and p.y > ys.hi:  # off the top: a triangle at the edge says so
                x, y = xs(p.x), ys(p.y)
                g.append(f'<path class="pt offscale" d="M{x - 4:.1f},{y + 4:.1f} L{x + 4:.1f},{y + 4:.1f} '
                         f'L{x:.1f},{y - 3:.1f} Z" fill="{s.color}"{tip}/>')
                continue
            g.append(f'<circle class="pt" cx="{xs(p.x):.1f}" cy="{ys(p.y):.1f}" r="3" fill="{s.color}"{tip}/>')
        g.append("</g>")
        parts.append("".join(g))
    if isinstance(ys, _Clamped) and any(v > ys.hi for v in ys_all):
        parts.append(f'<text class="offscale" x="{width - f.right}" y="{height - 4}" text-anchor="end">'
                     "▲ above the scale</text>")
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class _Clamped(Linear):
    """A linear scale that pins values outside [lo, hi] to the plot's edge."""

    def __call__(self, v: float) -> float:
        return super().__call__(min(max(v, self.lo), self.hi))


# --------------------------------------------------------------------------- scatter
@dataclass
class Dot:
    x: float
    y: float
    color: str
    sid: str = ""
    tip: str = ""


def scatter(dots: list[Dot], *, label: str, x_label: str, y_label: str, width: float = 560, height: float = 380,
            diagonal: bool = True) -> str:
    f = Frame(width=width, height=height, left=60, bottom=40)
    good = [d for d in dots if finite(d.x) and finite(d.y)]
    xv = [d.x for d in good] or [0.0, 1.0]
    yv = [d.y for d in good] or [0.0, 1.0]
    xt = nice_ticks(min(xv + [0.0]), max(xv + [0.0]), 6)
    yt = nice_ticks(min(yv + [0.0]), max(yv + [0.0]), 6)
    xs = Linear(xt[0], xt[-1], f.left, width - f.right)
    ys = Linear(yt[0], yt[-1], height - f.bottom, f.top)
    parts = [svg_open(width, height, label)]
    parts += _y_axis(f, ys, yt, y_label)
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    parts += _x_axis(f, xs, xt, x_label, lambda t: tick_label(t, xstep))
    if xt[0] <= 0 <= xt[-1]:
        parts.append(f'<line class="grid zero" x1="{xs(0):.1f}" x2="{xs(0):.1f}" y1="{f.top}" '
                     f'y2="{height - f.bottom}"/>')
    if diagonal:
        lo, hi = max(xt[0], yt[0]), min(xt[-1], yt[-1])
        if hi > lo:
            parts.append(f'<line class="diag" x1="{xs(lo):.1f}" y1="{ys(lo):.1f}" x2="{xs(hi):.1f}" y2="{ys(hi):.1f}">'
                         f'</line><text class="tick diag-label" x="{xs(hi) - 4:.1f}" y="{ys(hi) + 12:.1f}" '
                         f'text-anchor="end">y = x</text>')
    for d in good:
        sid = f' data-s="{esc(d.sid)}"' if d.sid else ""
        tip = f' data-tip="{esc(d.tip)}"' if d.tip else ""
        parts.append(f'<circle class="dot" cx="{xs(d.x):.1f}" cy="{ys(d.y):.1f}" r="4.5" fill="{d.color}"{sid}{tip}/>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- heatmaps
def _mix(c1: tuple[int, int, int], c2: tuple[int, int, int], t: float) -> str:
    t = min(max(t, 0.0), 1.0)
    r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c1, c2))
    return f"#{r:02x}{g:02x}{b:02x}"


_NEG, _MID, _POS = (33, 102, 172), (247, 247, 247), (178, 24, 43)
_SEQ0, _SEQ1 = (247, 251, 255), (8, 69, 148)


def diverging(v: float, limit: float) -> str:
    if not finite(v) or limit <= 0:
        return "#eeeeee"
    t = v / limit
    return _mix(_MID, _POS, t) if t >= 0 else _mix(_MID, _NEG, -t)


def _ink(fill: str) -> str:
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#222222"


def heatmap(row_labels: list[str], col_labels: list[str], matrix: list[list[float | None]], *, label: str,
            limit: float | None = None, cell_w: float = 64, cell_h: float = 26, value_fmt=fmt,
            tip: Callable[[int, int, float | None], str] | None = None, row_w: float = 70,
            col_h: float = 70, show_values: bool = True) -> str:
    """Diverging (blue < 0 < red) cell map; ``limit`` is the |value| that saturates."""
    vals = [abs(v) for row in matrix for v in row if finite(v)]
    limit = limit if limit is not None else (max(vals) if vals else 1.0)
    # Column labels are rotated 40°: leave room on the right for the last ones.
    overhang = max((len(str(c)) * 5.6 * 0.77 - cell_w * (len(col_labels) - j - 0.5) for j, c in enumerate(col_labels)),
                   default=0.0)
    width = row_w + cell_w * len(col_labels) + 8 + max(overhang, 0.0)
    height = col_h + cell_h * len(row_labels) + 4
    parts = [svg_open(width, height, label, "chart heatmap")]
    for j, c in enumerate(col_labels):
        x = row_w + cell_w * (j + 0.5)
        parts.append(f'<text class="tick col-label" transform="translate({x:.1f},{col_h - 6}) rotate(-40)" '
                     f'text-anchor="start">{esc(c)}</text>')
    for i, r in enumerate(row_labels):
        y = col_h + cell_h * i
        parts.append(f'<text class="tick" x="{row_w - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end">'
                     f'{esc(r)}</text>')
        for j, v in enumerate(matrix[i]):
            x = row_w + cell_w * j
            fill = diverging(v, limit) if finite(v) else "#eeeeee"
            text = tip(i, j, v) if tip else f"{r} · {col_labels[j]}: {value_fmt(v)}"
            parts.append(f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cell_w - 1:.1f}" '
                         f'height="{cell_h - 1:.1f}" fill="{fill}" data-tip="{esc(text)}"/>')
            if show_values and cell_w >= 28 and cell_h >= 14:
                shown = value_fmt(v) if finite(v) else "–"
                parts.append(f'<text class="cell-text" x="{x + cell_w / 2 - 0.5:.1f}" y="{y + cell_h / 2 + 3.5:.1f}" '
                             f'text-anchor="middle" fill="{_ink(fill)}">{esc(shown)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def color_scale_legend(limit: float, label: str, width: float = 220) -> str:
    """A small diverging colour bar from -limit to +limit."""
    steps = 24
    parts = [svg_open(width, 34, f"colour scale: {label}", "chart legend-bar")]
    bw = (width - 20) / steps
    for k in range(steps):
        v = -limit + (k + 0.5) / steps * 2 * limit
        parts.append(f'<rect x="{10 + k * bw:.1f}" y="2" width="{bw + 0.3:.1f}" height="10" '
                     f'fill="{diverging(v, limit)}"/>')
    for v, anchor, x in ((-limit, "start", 10), (0.0, "middle", width / 2), (limit, "end", width - 10)):
        parts.append(f'<text class="tick" x="{x:.0f}" y="26" text-anchor="{anchor}">{esc(fmt(v, 2))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- bars
@dataclass
class Segment:
    value: float
    color: str
    tip: str
    sid: str = ""


def stacked_rows(rows: list[tuple[str, list[Segment], str]], *, label: str, width: float = 760,
                 row_h: float = 20, label_w: float = 80, note_w: float = 110) -> str:
    """Horizontal 100% stacked bars, one per row: (row label, segments, note on the right)."""
    bar_w = width - label_w - note_w
    height = row_h * len(rows) + 22
    parts = [svg_open(width, height, label)]
    for i, (name, segs, note) in enumerate(rows):
        y = 4 + i * row_h
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + row_h / 2 + 3:.1f}" text-anchor="end">'
                     f'{esc(name)}</text>')
        total = sum(s.value for s in segs) or 1.0
        x = label_w
        for s in segs:
            w = s.value / total * bar_w
            if w <= 0:
                continue
            sid = f' data-s="{esc(s.sid)}"' if s.sid else ""
            parts.append(f'<rect class="seg" x="{x:.2f}" y="{y + 2:.1f}" width="{max(w, 0.6):.2f}" '
                         f'height="{row_h - 5:.1f}" fill="{s.color}" data-tip="{esc(s.tip)}"{sid}/>')
            x += w
        parts.append(f'<text class="tick note" x="{label_w + bar_w + 8}" y="{y + row_h / 2 + 3:.1f}">'
                     f'{esc(note)}</text>')
    base = 4 + len(rows) * row_h + 2
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + frac * bar_w
        parts.append(f'<text class="tick" x="{x:.1f}" y="{base + 12}" text-anchor="middle">{frac:.0%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: Sequence[float], edges: Sequence[float], color: str, *, label: str, tip: str,
              width: float = 100, height: float = 40) -> str:
    """A small bar histogram (one saliency distribution); the whole chart carries one tooltip."""
    total = max(counts) if counts else 0
    parts = [svg_open(width, height, label, "chart spark"),
             f'<rect class="spark-bg" x="0" y="0" width="{width}" height="{height}" data-tip="{esc(tip)}"/>']
    n = len(counts)
    if n and total > 0:
        bw = (width - 4) / n
        for k, c in enumerate(counts):
            h = (height - 6) * (c / total) if c > 0 else 0
            if h > 0:
                h = max(h, 1.2)
                parts.append(f'<rect x="{2 + k * bw:.1f}" y="{height - 2 - h:.1f}" width="{max(bw - 0.6, 0.6):.1f}" '
                             f'height="{h:.1f}" fill="{color}" pointer-events="none"/>')
    parts.append(f'<line class="axis" x1="1" x2="{width - 1}" y1="{height - 1.5}" y2="{height - 1.5}" '
                 f'pointer-events="none"/></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------- horizon strips
@dataclass
class Strip:
    label: str
    quantiles: dict[str, float]  # min p05 median p95 max
    values: list[float]
    tip: str


def thin(values: Iterable[float], limit: int = 96) -> list[float]:
    """At most ``limit`` values that keep the distribution's shape (evenly spaced order statistics)."""
    vals = sorted(v for v in values if finite(v) and v > 0)
    if len(vals) <= limit:
        return vals
    return [vals[round(k * (len(vals) - 1) / (limit - 1))] for k in range(limit)]


def strips(rows: list[Strip], *, label: str, x_label: str, width: float = 760, row_h: float = 30,
           cap: float = 1e12) -> str:
    """Per-row box (p05–p95), whiskers (min–max), median and the individual values, on a log axis."""
    vals = [v for r in rows for v in [*r.values, *r.quantiles.values()] if finite(v) and 0 < v < cap]
    lo, hi = (min(vals), max(vals)) if vals else (1.0, 10.0)
    if hi / lo < 10:
        lo, hi = lo / 2, hi * 2
    ticks = log_ticks(lo, hi)
    f = Frame(width=width, height=row_h * len(rows) + 46, left=80, right=16, top=6, bottom=40)
    xs = Log(ticks[0], ticks[-1], f.left, width - f.right)
    parts = [svg_open(width, f.height, label)]
    for t in ticks:
        parts.append(f'<line class="grid" x1="{xs(t):.1f}" x2="{xs(t):.1f}" y1="{f.top}" y2="{f.height - f.bottom}"/>')
    parts += _x_axis(f, xs, ticks, x_label, log_label)
    for i, r in enumerate(rows):
        yc = f.top + row_h * (i + 0.5)
        q = {k: min(max(v, ticks[0]), ticks[-1]) for k, v in r.quantiles.items() if finite(v) and v > 0}
        parts.append(f'<text class="tick" x="{f.left - 8}" y="{yc + 3.5:.1f}" text-anchor="end">{esc(r.label)}</text>')
        g = [f'<g data-tip="{esc(r.tip)}">']
        if "min" in q and "max" in q:
            g.append(f'<line class="whisker" x1="{xs(q["min"]):.1f}" x2="{xs(q["max"]):.1f}" '
                     f'y1="{yc:.1f}" y2="{yc:.1f}"/>')
        if "p05" in q and "p95" in q:
            g.append(f'<rect class="box" x="{xs(q["p05"]):.1f}" y="{yc - 8:.1f}" '
                     f'width="{max(xs(q["p95"]) - xs(q["p05"]), 1):.1f}" height="16"/>')
        for k, v in enumerate(r.values):
            jitter = ((k * 0.618034) % 1 - 0.5) * 12
            g.append(f'<circle class="strip-dot" cx="{xs(min(v, ticks[-1])):.1f}" cy="{yc + jitter:.1f}" r="2"/>')
        if "median" in q:
            m = xs(q["median"])
            g.append(f'<line class="median" x1="{m:.1f}" x2="{m:.1f}" y1="{yc - 9:.1f}" y2="{yc + 9:.1f}"/>')
        g.append("</g>")
        parts.append("".join(g))
    parts.append("</svg>")
    return "".join(parts)
