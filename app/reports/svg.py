"""Tiny server-side SVG charts: lines with several series, scatter with a highlighted Pareto
front, and reference lines (an SLA bound). The output is plain inline SVG: no script, no
external font or stylesheet, so the report stays a single file that works offline and under
a CSP that forbids everything. All text goes through esc(); labels come from user data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.reports.fmt import clip, esc, num
from app.reports.svg_scale import Scale, domain, thin, tick_labels, wants_log

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; markers differ too.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#117733", "#444444")
SHAPES = ("circle", "square", "triangle", "diamond")
W, PLOT_H, R, T = 560, 250, 20, 18  # left margin is computed per chart from its y labels
MAX_SERIES, MAX_POINTS = 10, 600  # bounds the SVG size whatever the report holds


@dataclass
class Point:
    x: float
    y: float
    tip: str = ""
    label: str = ""
    noisy: bool = False
    highlight: bool = False


@dataclass
class Series:
    label: str
    points: list[Point] = field(default_factory=list)


@dataclass
class RefLine:
    axis: str  # "x": a vertical line at x=value; "y": a horizontal one
    value: float
    label: str


def _f(v: float) -> str:
    return f"{v:.1f}"


def _marker(shape: str, x: float, y: float, color: str, hollow: bool, r: float = 4.0) -> str:
    paint = f'fill="{"#fff" if hollow else color}" stroke="{color}" stroke-width="1.8"'
    if shape == "square":
        return f'<rect x="{_f(x - r)}" y="{_f(y - r)}" width="{_f(2 * r)}" height="{_f(2 * r)}" {paint}/>'
    if shape == "triangle":
        top, side, base = _f(y - r * 1.2), r * 1.1, _f(y + r * 0.9)
        return f'<path d="M{_f(x)},{top}L{_f(x + side)},{base}L{_f(x - side)},{base}Z" {paint}/>'
    if shape == "diamond":
        k = r * 1.3
        return f'<path d="M{_f(x)},{_f(y - k)}L{_f(x + k)},{_f(y)}L{_f(x)},{_f(y + k)}L{_f(x - k)},{_f(y)}Z" {paint}/>'
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" {paint}/>'


def _clean(series: list[Series], x_log: bool, y_log: bool) -> tuple[list[Series], int]:
    """Drop unplottable points, cap series and points; returns the kept series and how many
    points were left out (reported under the chart rather than silently)."""
    kept, total, dropped = [], 0, 0
    for s in series:
        pts = [p for p in s.points if num(p.x) is not None and num(p.y) is not None
               and (p.x > 0 or not x_log) and (p.y > 0 or not y_log)]
        if not pts:
            continue
        if len(kept) >= MAX_SERIES or total >= MAX_POINTS:
            dropped += len(pts)
            continue
        room = MAX_POINTS - total
        dropped += max(0, len(pts) - room)
        kept.append(Series(s.label, pts[:room]))
        total += min(len(pts), room)
    return kept, dropped


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both axes, lower x (latency) and higher y (accuracy) being better."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p.x, -p.y)):
        if p.y > best:
            front.append(p)
            best = p.y
    return front


def _legend(items: list[tuple[str, str]], top: float, left: float) -> tuple[str, float]:
    """items: (swatch svg drawn at origin, label). Wraps into rows; returns svg and height."""
    out, x, y, row_h = [], left, top, 18.0
    for swatch, label in items:
        text = clip(label, 42)
        w = 26 + len(text) * 6.3 + 16
        if x + w > W - R and x > left:
            x, y = left, y + row_h
        out.append(f'<g transform="translate({_f(x)},{_f(y)})">{swatch}'
                   f'<text x="24" y="4" class="lg">{esc(text)}<title>{esc(label)}</title></text></g>')
        x += w
    return "".join(out), (y - top + row_h) if items else 0.0


def _place_labels(pts: list[tuple[float, float, str]], box: tuple[float, float, float, float]) -> str:
    """Text labels beside points, trying four spots each and skipping a label rather than
    letting it overlap another (the point's tooltip and the table still carry it)."""
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for px, py, label in pts:
        text = clip(label, 28)
        w, h = len(text) * 6.0 + 2, 12.0
        for dx, dy, anchor in ((11, -8, "start"), (11, 16, "start"), (-11, -8, "end"), (-11, 16, "end")):
            x0 = px + dx if anchor == "start" else px + dx - w
            rect = (x0, py + dy - 10, x0 + w, py + dy - 10 + h)
            inside = box[0] <= rect[0] and rect[2] <= box[2] and box[1] <= rect[1] and rect[3] <= box[3]
            clash = any(not (rect[2] < o[0] or o[2] < rect[0] or rect[3] < o[1] or o[3] < rect[1]) for o in placed)
            if inside and not clash:
                placed.append(rect)
                out.append(f'<text x="{_f(px + dx)}" y="{_f(py + dy)}" text-anchor="{anchor}" class="pl">{esc(text)}</text>')
                break
    return "".join(out)


def _axes(sx: Scale, sy: Scale, x_base: int, x_ticks, y_ticks, y_labels, x_label: str, y_label: str) -> str:
    left, bottom = sx.px0, T + PLOT_H
    parts = [f'<rect x="{_f(left)}" y="{T}" width="{_f(W - R - left)}" height="{PLOT_H}" class="plot"/>']
    ticks = sx.ticks(x_base, x_ticks)
    keep = set(thin([sx(t) for t in ticks], 40))
    for i, (t, lab) in enumerate(zip(ticks, tick_labels(ticks))):
        if i in keep:
            parts.append(f'<line x1="{_f(sx(t))}" x2="{_f(sx(t))}" y1="{T}" y2="{bottom}" class="grid"/>'
                         f'<text x="{_f(sx(t))}" y="{bottom + 16}" text-anchor="middle" class="tk">{esc(lab)}</text>')
    keep = set(thin([-sy(t) for t in y_ticks], 16))
    for i, (t, lab) in enumerate(zip(y_ticks, y_labels)):
        if i in keep:
            parts.append(f'<line x1="{_f(left)}" x2="{W - R}" y1="{_f(sy(t))}" y2="{_f(sy(t))}" class="grid"/>'
                         f'<text x="{_f(left - 7)}" y="{_f(sy(t) + 4)}" text-anchor="end" class="tk">{esc(lab)}</text>')
    parts.append(f'<text x="{_f((left + W - R) / 2)}" y="{bottom + 36}" text-anchor="middle" class="ax">{esc(x_label)}</text>'
                 f'<text transform="translate(15,{T + PLOT_H / 2}) rotate(-90)" text-anchor="middle" class="ax">'
                 f'{esc(y_label)}</text>')
    return "".join(parts)


def _refs(refs: list[RefLine], sx: Scale, sy: Scale) -> str:
    """Reference lines. A vertical line's label sits at the bottom of the plot: throughput
    curves climb to the top right, so the bottom is where a label is least likely to cover data."""
    left, bottom, parts = sx.px0, T + PLOT_H, []
    for r in refs:
        if r.axis == "x":
            x = sx(r.value)
            anchor, dx = ("start", 5) if x + 5 + len(r.label) * 6.2 < W - R else ("end", -5)
            # Shade the side that breaks the bound, so "inside the SLA" reads at a glance.
            parts.append(f'<rect x="{_f(x)}" y="{T}" width="{_f(max(0.0, W - R - x))}" height="{PLOT_H}" class="out"/>'
                         f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{T}" y2="{bottom}" class="ref"/>'
                         f'<text x="{_f(x + dx)}" y="{bottom - 8}" text-anchor="{anchor}" class="rl">{esc(r.label)}</text>')
        else:
            y = sy(r.value)
            parts.append(f'<rect x="{_f(left)}" y="{_f(y)}" width="{_f(W - R - left)}" height="{_f(max(0.0, bottom - y))}"'
                         ' class="out"/>'
                         f'<line x1="{_f(left)}" x2="{W - R}" y1="{_f(y)}" y2="{_f(y)}" class="ref"/>'
                         f'<text x="{W - R - 5}" y="{_f(y - 5)}" text-anchor="end" class="rl">{esc(r.label)}</text>')
    return "".join(parts)


def chart(series: list[Series], *, kind: str, title: str, x_label: str, y_label: str, connect: bool,
          x_log: bool | None = None, y_log: bool | None = None, x_base: int = 10, x_ticks: list[float] | None = None,
          refs: list[RefLine] | None = None, front: bool = False, label_points: bool = False,
          x_zero: bool = True, y_zero: bool = True, highlight_label: str = "recommended") -> str:
    """One chart as an <svg class="chart" data-chart=kind>. None for x_log/y_log means
    "log when the values span more than ~30x"."""
    raw_x = [p.x for s in series for p in s.points if num(p.x) is not None]
    raw_y = [p.y for s in series for p in s.points if num(p.y) is not None]
    x_log = wants_log(raw_x) if x_log is None else x_log
    y_log = wants_log(raw_y) if y_log is None else y_log
    series, dropped = _clean(series, x_log, y_log)
    refs = [r for r in (refs or []) if num(r.value) is not None and (r.value > 0 or not (x_log if r.axis == "x" else y_log))]

    def head(h: float) -> str:  # a function, not str.format: titles are user text and may hold braces
        return (f'<svg class="chart" data-chart="{esc(kind)}" role="img" aria-label="{esc(title)}" '
                f'viewBox="0 0 {W} {int(h)}" preserveAspectRatio="xMidYMid meet"><title>{esc(title)}</title>')

    if not series:
        return head(120) + f'<text x="{W / 2}" y="64" text-anchor="middle" class="muted">No plottable points.</text></svg>'
    xs = [p.x for s in series for p in s.points] + [r.value for r in refs if r.axis == "x"]
    ys = [p.y for s in series for p in s.points] + [r.value for r in refs if r.axis == "y"]
    sy = Scale(*domain(ys, log=y_log, zero=y_zero), T + PLOT_H, T, y_log)
    y_ticks = sy.ticks()
    y_labels = tick_labels(y_ticks)
    # The left margin follows the widest y label, so "0.99995" never runs into the axis title.
    left = max(48.0, 34 + max((len(t) for t in y_labels), default=1) * 6.4)
    sx = Scale(*domain(xs, log=x_log, zero=x_zero), left, W - R, x_log)
    parts = [_axes(sx, sy, x_base, x_ticks, y_ticks, y_labels, x_label, y_label), _refs(refs, sx, sy)]
    all_pts = [p for s in series for p in s.points]
    on_front = {id(p) for p in pareto_front(all_pts)} if front else set()
    bottom = T + PLOT_H
    if front and on_front:
        fp = sorted((p for p in all_pts if id(p) in on_front), key=lambda p: p.x)
        # A staircase, not a straight join: everything right of and below it is dominated.
        d = f"M{_f(sx(fp[0].x))},{_f(sy(fp[0].y))}" + "".join(
            f"H{_f(sx(b.x))}V{_f(sy(b.y))}" for b in fp[1:]) + f"H{W - R}"
        parts.append(f'<path d="{d}" class="front"/>')
    legend: list[tuple[str, str]] = []
    labels: list[tuple[float, float, str]] = []
    for i, s in enumerate(series):
        color, shape = PALETTE[i % len(PALETTE)], SHAPES[i % len(SHAPES)]
        if connect and len(s.points) > 1:
            pts = " ".join(f"{_f(sx(p.x))},{_f(sy(p.y))}" for p in s.points)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>')
        for p in s.points:
            x, y = sx(p.x), sy(p.y)
            faded = ' opacity="0.45"' if front and id(p) not in on_front else ""
            ring = f'<circle cx="{_f(x)}" cy="{_f(y)}" r="9" class="hl"/>' if p.highlight else ""
            parts.append(f"<g{faded}><title>{esc(p.tip or s.label)}</title>{ring}{_marker(shape, x, y, color, p.noisy)}</g>")
            if label_points and p.label:
                labels.append((x, y, p.label))
        line = f'<line x1="0" x2="18" y1="0" y2="0" stroke="{color}" stroke-width="2"/>' if connect else ""
        legend.append((line + _marker(shape, 9, 0, color, False), s.label))
    parts.append(_place_labels(labels, (left, T, W - R, bottom)))
    if any(p.noisy for p in all_pts):
        legend.append((_marker("circle", 9, 0, "#555", True), "hollow = noisy (wide CI)"))
    if any(p.highlight for p in all_pts):
        legend.append(('<circle cx="9" cy="0" r="7" class="hl"/>', highlight_label))
    if on_front:
        legend.append(('<line x1="0" x2="18" y1="0" y2="0" class="front"/>', "Pareto front"))
    leg_svg, leg_h = _legend(legend, bottom + 58, left)
    height = bottom + 50 + leg_h + (18 if dropped else 0)
    if dropped:
        parts.append(f'<text x="{_f(left)}" y="{height - 6}" class="muted">'
                     f'{dropped:,} more points not drawn (see the table).</text>')
    return head(height) + "".join(parts) + leg_svg + "</svg>"
