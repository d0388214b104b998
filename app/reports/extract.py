"""Turns typed reports into chart series: a benchmark's ``results``, a quantization's
parent/result ``comparison``, a compare's per-model ``points``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.engine import reports as r
from app.reports.fmt import fmt_num, num, short_id, short_provider
from app.reports.svg import Point, Series
from app.reports.view import provider_of


def model_labels(report: BaseModel) -> dict[str, str]:
    """Compare reports: model id -> label, in the report's order, ids found only in points last."""
    if not isinstance(report, r.CompareReport):
        return {}
    out = {m.id: m.label or short_id(m.id) for m in report.models}
    for p in report.points:
        for mid in p.results:
            out.setdefault(mid, short_id(mid))
    return out


def _grouped(items: list[Any], report: BaseModel) -> dict[str, list[Any]]:
    """Groups measured points by (threads, provider); the label names only what varies."""
    multi_t = len({r.threads for r in items}) > 1
    multi_p = len({provider_of(r, report) for r in items}) > 1
    groups: dict[str, list[Any]] = {}
    for row in items:
        parts = ([f"threads={row.threads}"] if multi_t else []) + \
            ([short_provider(provider_of(row, report))] if multi_p else [])
        groups.setdefault(", ".join(parts), []).append(row)
    return groups


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _by_batch(points: list[Point]) -> list[Point]:
    # Missing x values sort last instead of raising on None < float (the chart drops them).
    return sorted(points, key=lambda p: (num(p.x) is None, num(p.x) or 0.0))


def _plottable(series: list[Series]) -> list[Series]:
    return [s for s in series if any(num(p.x) is not None and num(p.y) is not None for p in s.points)]


def latency_series(report: BaseModel, prefix: str = "") -> list[Series]:
    """p50 latency against batch size, one series per model and threads/provider group."""
    out: list[Series] = []
    if isinstance(report, r.BenchmarkReport):
        for label, items in _grouped(report.results, report).items():
            pts = [Point(x.batch_size, x.p50_ms, noisy=bool(x.noisy),
                         tip=f"{_join(prefix, label)} bs={x.batch_size}: p50 {fmt_num(x.p50_ms)} ms") for x in items]
            out.append(Series(_join(prefix, label) or "p50", _by_batch(pts)))
    if isinstance(report, r.QuantizeReport):
        groups = _grouped(report.comparison, report)
        for who in ("parent", "result"):
            for label, items in groups.items():
                pts = [Point(x.batch_size, getattr(x, f"{who}_p50_ms"),
                             tip=f"{_join(prefix, who, label)} bs={x.batch_size}: p50 "
                             f"{fmt_num(getattr(x, f'{who}_p50_ms'))} ms") for x in items]
                out.append(Series(_join(prefix, who, label), _by_batch(pts)))
    if isinstance(report, r.CompareReport):
        groups = _grouped(report.points, report)
        for mid, name in model_labels(report).items():
            for label, items in groups.items():
                pts = []
                for x in items:
                    res = x.results.get(mid)
                    p50 = res.p50_ms if res else None
                    pts.append(Point(x.batch_size, p50, noisy=bool(res and res.noisy),
                                     tip=f"{_join(name, label)} bs={x.batch_size}: p50 {fmt_num(p50)} ms"))
                out.append(Series(_join(prefix, name, label), _by_batch(pts)))
    return _plottable(out)


def latency_stat(report: BaseModel) -> str:
    rec = getattr(report, "recommendation", None)
    stat = rec.sla.latency_stat if rec else "p99"
    return stat if stat.isidentifier() else "p99"


def _is_best(row: r.BenchmarkPoint, best: r.BestPoint | None, report: BaseModel) -> bool:
    if best is None:
        return False
    same = row.batch_size == best.batch_size and row.threads == best.threads
    if best.provider is not None:
        same = same and provider_of(row, report) == best.provider
    return same


def _stat(row: Any, stat: str) -> float | None:
    return getattr(row, f"{stat}_ms", None)


def throughput_series(report: BaseModel) -> tuple[list[Series], str, bool]:
    """items/s against latency. Returns (series, latency stat on x, derived) where derived
    means items/s was computed as batch/p50 because the report carries no throughput."""
    stat = latency_stat(report)
    rec = getattr(report, "recommendation", None)
    best = rec.best if rec else None
    out: list[Series] = []
    matched = False
    if isinstance(report, r.BenchmarkReport):
        if report.results and all(num(_stat(x, stat)) is None for x in report.results):
            stat = "p50"
        for label, items in _grouped(report.results, report).items():
            pts = []
            for x in items:
                hit = _is_best(x, best, report)
                matched |= hit
                pts.append(Point(_stat(x, stat), x.throughput_items_per_s, noisy=bool(x.noisy), highlight=hit,
                                 tip=f"{_join(label, f'bs={x.batch_size}')}: {stat} {fmt_num(_stat(x, stat))} ms, "
                                 f"{fmt_num(x.throughput_items_per_s)} items/s"))
            out.append(Series(label or "measured", _by_batch(pts)))
    if isinstance(report, r.CompareReport):
        labels = model_labels(report)
        if report.points and all(num(_stat(x.results.get(m), stat)) is None for x in report.points for m in labels):
            stat = "p50"
        for mid, name in labels.items():
            for label, items in _grouped(report.points, report).items():
                pts = []
                for x in items:
                    res = x.results.get(mid)
                    lat, tput = _stat(res, stat), res.throughput_items_per_s if res else None
                    pts.append(Point(lat, tput, noisy=bool(res and res.noisy),
                                     tip=f"{_join(name, label)} bs={x.batch_size}: {stat} {fmt_num(lat)} ms, "
                                     f"{fmt_num(tput)} items/s"))
                out.append(Series(_join(name, label), _by_batch(pts)))
    derived = False
    if not any(s.points for s in out):
        out = []
        comparison = report.comparison if isinstance(report, r.QuantizeReport) else []
        groups = _grouped(comparison, report)
        for who in ("parent", "result"):
            for label, items in groups.items():
                pts = []
                for x in items:
                    p50 = num(getattr(x, f"{who}_p50_ms"))
                    tput = x.batch_size * 1000.0 / p50 if x.batch_size and p50 else None
                    pts.append(Point(p50, tput, tip=f"{_join(who, label)} bs={x.batch_size}: {fmt_num(tput)} items/s"))
                out.append(Series(_join(who, label), _by_batch(pts)))
        stat, derived = "p50", True
    if best is not None and not matched:
        bx, by = num(_stat(best, stat)), num(best.throughput_items_per_s)
        if bx is not None and by is not None:
            out.append(Series("recommended", [Point(bx, by, highlight=True, tip="recommended configuration")]))
    return [s for s in out if s.points], stat, derived
