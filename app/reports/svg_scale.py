"""Axis scales and tick placement for the report's SVG charts.

Latencies in one report easily span three decades (a 0.01 ms batch-1 MLP next to a 30 ms
batch-256 point), so axes switch to log scale when the data asks for it; ticks then sit on
1-2-5 steps (or powers of two for batch sizes), which people read faster than 10^k labels.
"""

from __future__ import annotations

import math


def wants_log(values: list[float], ratio: float = 30.0) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) >= 2 and max(pos) / min(pos) >= ratio


def domain(values: list[float], *, log: bool, zero: bool) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if log:
        if hi / lo < 1.0001:
            return lo / 2, hi * 2
        pad = (hi / lo) ** 0.06
        return lo / pad, hi * pad
    if zero and lo >= 0:
        lo = 0.0
    if hi - lo < 1e-12:
        # One value only (e.g. two models with the same accuracy): a narrow band keeps it readable.
        span = abs(hi) * 0.01 or 1.0
        return lo - span, hi + span
    pad = (hi - lo) * 0.08
    return (lo if zero and lo == 0 else lo - pad), hi + pad


class Scale:
    """Maps data values to pixels, linearly or in log10 space."""

    def __init__(self, lo: float, hi: float, px0: float, px1: float, log: bool):
        self.log, self.lo, self.hi = log, lo, hi
        self._a, self._b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        self.px0, self.px1 = px0, px1

    def __call__(self, v: float) -> float:
        t = math.log10(v) if self.log else v
        return self.px0 + (t - self._a) / ((self._b - self._a) or 1.0) * (self.px1 - self.px0)

    def ticks(self, base: int = 10, explicit: list[float] | None = None) -> list[float]:
        if explicit:
            found = sorted({v for v in explicit if self.lo <= v <= self.hi})
            if 1 <= len(found) <= 10:
                return found
        return log_ticks(self.lo, self.hi, base) if self.log else linear_ticks(self.lo, self.hi)


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo)
    v, out = math.ceil(lo / step - 1e-9) * step, []
    while v <= hi + step * 1e-9 and len(out) < 20:
        out.append(round(v, 12))
        v += step
    return out


def log_ticks(lo: float, hi: float, base: int = 10) -> list[float]:
    if base == 2:
        cand = [2.0 ** k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
    else:
        cand = []
        for mults in ((1, 2, 5), (1, 3), (1,)):
            k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            cand = [float(f"{m * 10.0 ** k:.12g}") for k in range(k0, k1 + 1) for m in mults]  # 0.3, not 0.30000000000000004
            if len([c for c in cand if lo <= c <= hi]) <= 7:
                break
    cand = [c for c in cand if lo <= c <= hi]
    if len(cand) < 2:
        # Less than a decade (or octave) of data: evenly spaced values still read fine on a log axis.
        return [t for t in linear_ticks(lo, hi) if t > 0]
    while len(cand) > 8:
        cand = cand[::2]
    return cand


def tick_labels(ticks: list[float]) -> list[str]:
    """Shortest labels that still tell the ticks apart: 1.5k / 2M for big values, and just enough
    decimals for small ones (a cosine axis needs 0.9995, a batch axis needs none)."""
    big = max((abs(t) for t in ticks), default=0) >= 10_000
    if big:
        out = []
        for t in ticks:
            a = abs(t)
            for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
                if a >= div or div == 1:
                    out.append(f"{t / div:.3g}{suffix}")
                    break
        return out
    for digits in range(0, 10):
        labels = [f"{t:.{digits}f}" for t in ticks]
        if all(abs(float(s) - t) <= 1e-9 * max(1.0, abs(t)) for s, t in zip(labels, ticks)):
            break
    return [s.rstrip("0").rstrip(".") if "." in s else s for s in labels]


def thin(positions: list[float], min_gap: float) -> list[int]:
    """Indexes of ticks to keep so that no two labels sit closer than min_gap pixels."""
    keep: list[int] = []
    for i, p in enumerate(positions):
        if not keep or abs(p - positions[keep[-1]]) >= min_gap:
            keep.append(i)
    return keep
