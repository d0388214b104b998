"""Turns the engine's report shapes into chart series.

Dispatch is by shape (which keys are present: `results`, `comparison`, `points`,
`candidates`, `steps`) rather than by technique name, so a new technique that emits a
familiar shape gets its charts without touching this module, and a report missing a key
simply yields fewer series instead of an error.
"""

from __future__ import annotations

from app.reports.fmt import as_dict, as_list, dig, fmt_num, num, short_id, short_provider
from app.reports.svg import Point, Series


def rows(report: dict, key: str) -> list[dict]:
    return [r for r in as_list(as_dict(report).get(key)) if isinstance(r, dict)]


def model_labels(report: dict) -> dict[str, str]:
    """Compare reports: model id -> label, in the report's order, ids found only in points last."""
    out = {str(m.get("id")): str(m.get("label") or m.get("name") or short_id(m.get("id")))
           for m in rows(report, "models") if m.get("id") is not None}
    for p in rows(report, "points"):
        for mid in as_dict(p.get("results")):
            out.setdefault(str(mid), short_id(mid))
    return out


def _group_label(row: dict, report: dict, multi_threads: bool, multi_prov: bool) -> str:
    parts = []
    if multi_threads:
        parts.append(f"threads={row.get('threads', '?')}")
    if multi_prov:
        parts.append(short_provider(row.get("provider") or report.get("provider")))
    return ", ".join(parts)


def _grouped(items: list[dict], report: dict) -> dict[str, list[dict]]:
    """Groups measured points by (threads, provider); the label names only what varies."""
    multi_t = len({str(r.get("threads")) for r in items}) > 1
    multi_p = len({str(r.get("provider") or report.get("provider")) for r in items}) > 1
    groups: dict[str, list[dict]] = {}
    for r in items:
        groups.setdefault(_group_label(r, report, multi_t, multi_p), []).append(r)
    return groups


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _by_batch(points: list[Point]) -> list[Point]:
    # Missing x values sort last instead of raising on None < float (the chart drops them).
    return sorted(points, key=lambda p: (num(p.x) is None, num(p.x) or 0.0))


def latency_series(report: dict, prefix: str = "") -> list[Series]:
    """p50 latency against batch size, one series per model and threads/provider group."""
    out: list[Series] = []
    for label, items in _grouped(rows(report, "results"), report).items():
        pts = [Point(num(r.get("batch_size")), num(r.get("p50_ms")), noisy=bool(r.get("noisy")),
                     tip=f"{_join(prefix, label)} bs={r.get('batch_size')}: p50 {fmt_num(r.get('p50_ms'))} ms")
               for r in items]
        out.append(Series(_join(prefix, label) or "p50", _by_batch(pts)))
    groups = _grouped(rows(report, "comparison"), report)
    for who in ("parent", "result"):
        for label, items in groups.items():
            pts = [Point(num(r.get("batch_size")), num(r.get(f"{who}_p50_ms")),
                         tip=f"{_join(prefix, who, label)} bs={r.get('batch_size')}: p50 {fmt_num(r.get(f'{who}_p50_ms'))} ms")
                   for r in items]
            out.append(Series(_join(prefix, who, label), _by_batch(pts)))
    pts_rows = rows(report, "points")
    groups = _grouped(pts_rows, report)
    for mid, name in model_labels(report).items():
        for label, items in groups.items():
            pts = []
            for r in items:
                res = as_dict(dig(r, "results", mid))
                pts.append(Point(num(r.get("batch_size")), num(res.get("p50_ms")), noisy=bool(res.get("noisy")),
                                 tip=f"{_join(name, label)} bs={r.get('batch_size')}: p50 {fmt_num(res.get('p50_ms'))} ms"))
            out.append(Series(_join(prefix, name, label), _by_batch(pts)))
    return [s for s in out if any(p.x is not None and p.y is not None for p in s.points)]


def latency_stat(report: dict) -> str:
    stat = dig(report, "recommendation", "sla", "latency_stat")
    return stat if isinstance(stat, str) and stat.isidentifier() else "p99"


def _is_best(row: dict, best: dict, report: dict) -> bool:
    if not best:
        return False
    same = row.get("batch_size") == best.get("batch_size") and row.get("threads") == best.get("threads")
    if best.get("provider") is not None:
        same = same and (row.get("provider") or report.get("provider")) == best.get("provider")
    return same


def throughput_series(report: dict) -> tuple[list[Series], str, bool]:
    """items/s against latency. Returns (series, latency stat on x, derived) where derived
    means items/s was computed as batch/p50 because the report carries no throughput."""
    stat = latency_stat(report)
    best = as_dict(dig(report, "recommendation", "best"))
    out: list[Series] = []
    bench = rows(report, "results")
    if bench and all(num(r.get(f"{stat}_ms")) is None for r in bench):
        stat = "p50"
    matched = False
    for label, items in _grouped(bench, report).items():
        pts = []
        for r in items:
            hit = _is_best(r, best, report)
            matched |= hit
            pts.append(Point(num(r.get(f"{stat}_ms")), num(r.get("throughput_items_per_s")), noisy=bool(r.get("noisy")),
                             highlight=hit, tip=f"{_join(label, 'bs=' + str(r.get('batch_size')))}: {stat} "
                             f"{fmt_num(r.get(f'{stat}_ms'))} ms, {fmt_num(r.get('throughput_items_per_s'))} items/s"))
        out.append(Series(label or "measured", _by_batch(pts)))
    pts_rows = rows(report, "points")
    if pts_rows and all(num(dig(r, "results", m, f"{stat}_ms")) is None for r in pts_rows for m in model_labels(report)):
        stat = "p50"
    for mid, name in model_labels(report).items():
        for label, items in _grouped(pts_rows, report).items():
            pts = []
            for r in items:
                res = as_dict(dig(r, "results", mid))
                lat, tput = num(res.get(f"{stat}_ms")), num(res.get("throughput_items_per_s"))
                tip = f"{_join(name, label)} bs={r.get('batch_size')}: {stat} {fmt_num(lat)} ms, {fmt_num(tput)} items/s"
                pts.append(Point(lat, tput, noisy=bool(res.get("noisy")), tip=tip))
            out.append(Series(_join(name, label), _by_batch(pts)))
    derived = False
    if not out or not any(s.points for s in out):
        groups = _grouped(rows(report, "comparison"), report)
        for who in ("parent", "result"):
            for label, items in groups.items():
                pts = []
                for r in items:
                    bs, p50 = num(r.get("batch_size")), num(r.get(f"{who}_p50_ms"))
                    tput = bs * 1000.0 / p50 if bs and p50 else None
                    pts.append(Point(p50, tput, tip=f"{_join(who, label)} bs={r.get('batch_size')}: {fmt_num(tput)} items/s"))
                out.append(Series(_join(who, label), _by_batch(pts)))
        stat, derived = "p50", True
    bx, by = num(best.get(f"{stat}_ms")), num(best.get("throughput_items_per_s"))
    if best and not matched and bx is not None and by is not None:
        out.append(Series("recommended", [Point(bx, by, highlight=True, tip="recommended configuration")]))
    return [s for s in out if s.points], stat, derived
