"""Accuracy-vs-latency points for the Pareto chart: quantize.auto candidates, compare models
with accuracy, pipeline steps. Each point is (p50 at the smallest measured batch size, a
quality metric), because batch 1 (or the smallest batch) is the latency interactive users
feel, and the smallest batch is the one every candidate was timed at.
"""

from __future__ import annotations

from app.reports.extract import model_labels, rows
from app.reports.fmt import as_dict, dig, fmt_num, num, short_id
from app.reports.svg import Point


def _smallest_batch_p50(p50_by_batch: dict) -> tuple[float | None, str]:
    """Candidates carry {"1": 0.018, "8": ...}; keys are JSON strings, so sort them as numbers."""
    keyed = []
    for k, v in as_dict(p50_by_batch).items():
        try:
            keyed.append((float(k), num(v), str(k)))
        except (TypeError, ValueError):
            continue
    keyed = sorted(t for t in keyed if t[1] is not None)
    return (keyed[0][1], keyed[0][2]) if keyed else (None, "")


def _first_comparison(report: dict) -> dict:
    cmp = [r for r in rows(report, "comparison") if num(r.get("batch_size")) is not None]
    return min(cmp, key=lambda r: (num(r.get("batch_size")), num(r.get("threads")) or 0)) if cmp else {}


def _candidates(report: dict) -> tuple[list[Point], str]:
    cands = rows(report, "candidates")
    use_acc = any(num(c.get("accuracy")) is not None for c in cands)
    metric = "accuracy" if use_acc else "mean_cosine"
    points = []
    for c in cands:
        x, bs = _smallest_batch_p50(c.get("p50_ms"))
        y = num(c.get(metric))
        name = str(c.get("name") or c.get("mode") or "candidate") + (" (chosen)" if c.get("chosen") else "")
        points.append(Point(x, y, label=name, highlight=bool(c.get("chosen")),
                            tip=f"{name}: p50 {fmt_num(x)} ms at bs={bs or '?'}, {metric} {fmt_num(y, 6)}"))
    parent = _first_comparison(report)
    # The unquantized parent is an option too (keep the original): cosine 1 by definition,
    # accuracy from the report's reference run when the candidates are scored by accuracy.
    py = num(dig(report, "accuracy", "reference", "top1")) if use_acc else 1.0
    px = num(parent.get("parent_p50_ms"))
    if points and px is not None and py is not None:
        points.append(Point(px, py, label="parent", tip=f"parent (unquantized): p50 {fmt_num(px)} ms, {metric} {fmt_num(py, 6)}"))
    return points, ("accuracy" if use_acc else "mean cosine to parent")


def _compare(report: dict) -> tuple[list[Point], str]:
    acc = as_dict(report.get("accuracy"))
    metric = "top1"
    for v in acc.values():
        if isinstance(v, dict) and num(v.get("top1")) is None:
            metric = next((k for k, x in v.items() if num(x) is not None), "top1")
        break
    ordered = sorted(rows(report, "points"), key=lambda r: (num(r.get("batch_size")) is None, num(r.get("batch_size")) or 0))
    points = []
    for mid, name in model_labels(report).items():
        entry = acc.get(mid)
        y = num(entry.get(metric)) if isinstance(entry, dict) else num(entry)
        p50s = (num(dig(r, "results", mid, "p50_ms")) for r in ordered)
        x = next((v for v in p50s if v is not None), None)
        points.append(Point(x, y, label=name, tip=f"{name}: p50 {fmt_num(x)} ms, {metric} {fmt_num(y, 6)}"))
    return points, metric


def _pipeline(report: dict) -> tuple[list[Point], str]:
    points, seen = [], set()
    current = report.get("model_id")
    for i, step in enumerate(rows(report, "steps"), 1):
        sub = as_dict(step.get("report"))
        first = _first_comparison(sub)
        for who, mid, acc, label in (
            ("parent", current, dig(sub, "accuracy", "reference", "top1"), f"input {short_id(current)}"),
            ("result", step.get("output_model_id"), dig(sub, "accuracy", "model", "top1"),
             f"step {i}: {step.get('technique', '?')}"),
        ):
            x, y = num(first.get(f"{who}_p50_ms")), num(acc)
            key = str(mid) if mid else f"{i}-{who}"
            if x is not None and y is not None and key not in seen:
                seen.add(key)
                points.append(Point(x, y, label=label, tip=f"{label}: p50 {fmt_num(x)} ms, top-1 {fmt_num(y, 6)}"))
        if step.get("output_model_id"):
            current = step.get("output_model_id")
    return points, "top-1 accuracy"


def tradeoff_points(report: dict) -> tuple[list[Point], str]:
    """Points plus the y-axis metric name; empty when the report has nothing to trade off."""
    report = as_dict(report)
    if rows(report, "candidates"):
        pts, metric = _candidates(report)
    elif rows(report, "points") and as_dict(report.get("accuracy")):
        pts, metric = _compare(report)
    elif rows(report, "steps"):
        pts, metric = _pipeline(report)
    else:
        return [], ""
    pts = [p for p in pts if p.x is not None and p.y is not None]
    return (pts, metric) if len(pts) >= 2 else ([], "")
