"""Timing statistics shared by single-model timing (``latency``) and comparisons
(``speedup``): the median and its distribution-free interval, the latency summary, the one
definition of items/s and the tail-outlier flag. numpy is imported inside ``summarize``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95
CI_CHECK_NS = 100_000_000  # stopping rules sort their samples at most this often
TAIL_RATIO = 5.0  # p99 above 5x the p50: the tail is interference, not the model
EXACT_UP_TO = 300  # exact binomial ranks below; the normal approximation is within one rank above


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Distribution-free interval of the median from order statistics: the k-th smallest and
    k-th largest values, k the largest rank with P(Binomial(n, 1/2) < k) <= (1 - confidence)/2.
    (None, None) when n is too small for any interval at that confidence (n < 6 at 95%)."""
    n = len(values)
    k = _rank(n, (1.0 - confidence) / 2)
    if k == 0:
        return None, None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def _rank(n: int, alpha: float) -> int:
    if n > EXACT_UP_TO:
        z = 1.959964 if abs(alpha - 0.025) < 1e-9 else _z(alpha)
        return max(0, math.floor(n / 2 - z * math.sqrt(n) / 2))
    limit, total, k = alpha * 2**n, 0, 0  # integers: exact for any n here
    while k < n and total + math.comb(n, k) <= limit:
        total += math.comb(n, k)
        k += 1
    return k


def _z(alpha: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha)


def median_ci_rel(values: Sequence[float]) -> float:
    """Half-width of the median's 95% interval relative to the median (inf: too few values)."""
    if len(values) < 6:
        return math.inf
    lo, hi = median_ci(values)
    mid = median(values)
    return math.inf if lo is None or hi is None or mid <= 0 else (hi - lo) / (2 * mid)


def tail_flag(p50_ms: float, p99_ms: float) -> str | None:
    """Why a p99 should not be trusted as the model's tail, or None."""
    if p50_ms > 0 and p99_ms > TAIL_RATIO * p50_ms:
        return (f"p99 {p99_ms:g} ms is {p99_ms / p50_ms:.0f}x the p50 {p50_ms:g} ms: tail outliers "
                "(another process, a page fault, a GC pause), not the model's own tail; re-run "
                "on a quiet host before using this p99 for an SLA")
    return None


def throughput(batch_size: int, p50_ms: float) -> float | None:
    """Items per second: batch size / p50 latency (the one definition every report uses)."""
    return round(batch_size / (p50_ms / 1e3), 2) if p50_ms > 0 else None


def summarize(times: Sequence[int], batch_size: int) -> dict[str, Any]:
    """Latency statistics of timed runs (nanoseconds) in the report's units."""
    import numpy as np

    ms = np.asarray(times, dtype=np.float64) / 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "batch_size": batch_size,
        "p50_ms": round(p50, 4),
        "p90_ms": round(p90, 4),
        "p99_ms": round(p99, 4),
        "mean_ms": round(float(ms.mean()), 4),
        "std_ms": round(float(ms.std()), 4),
        "min_ms": round(float(ms.min()), 4),
        "max_ms": round(float(ms.max()), 4),
        "runs": len(times),
        "ci_rel_half_width": round(median_ci_rel(times), 5) if len(times) >= 10 else None,
        # THE definition of items/s, everywhere: batch / p50 (the typical run, not the mean
        # that one preempted run can drag)
        "throughput_items_per_s": throughput(batch_size, p50),
        "tail_outlier": tail_flag(p50, p99) is not None,
    }
