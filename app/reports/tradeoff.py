"""Accuracy-vs-latency points for the Pareto chart: quantize.auto candidates, compare models
with accuracy, pipeline steps. Each point is (p50 at the smallest measured batch size, a
quality metric), because batch 1 (or the smallest batch) is the latency interactive users
feel, and the smallest batch is the one every candidate was timed at.
"""

from __future__ import annotations

from pydantic import BaseModel

from app.engine import reports as r
from app.reports.extract import model_labels
from app.reports.fmt import fmt_num, num, short_id
from app.reports.svg import Point


def _smallest_batch_p50(p50_by_batch: dict[str, float]) -> tuple[float | None, str]:
    """Candidates carry {"1": 0.018, "8": ...}; keys are JSON strings, so sort them as numbers."""
    keyed = []
    for k, v in p50_by_batch.items():
        try:
            keyed.append((float(k), num(v), k))
        except ValueError:
            continue
    keyed = sorted(t for t in keyed if t[1] is not None)
    return (keyed[0][1], keyed[0][2]) if keyed else (None, "")


def _first_comparison(report: BaseModel | None) -> r.ComparePoint | None:
    cmp = report.comparison if isinstance(report, r.QuantizeReport) else []
    return min(cmp, key=lambda x: (x.batch_size, x.threads)) if cmp else None


def _top1(scores: r.Scores | None) -> float | None:
    return scores.top1 if scores else None


def _candidates(report: r.QuantizeAutoReport) -> tuple[list[Point], str]:
    # Candidates are scored by cosine; a per-candidate accuracy is not recorded.
    metric = "mean_cosine"
    points = []
    for c in report.candidates:
        x, bs = _smallest_batch_p50(c.p50_ms)
        y = c.mean_cosine
        name = (c.name or c.mode or "candidate") + (" (chosen)" if c.chosen else "")
        points.append(Point(x, y, label=name, highlight=bool(c.chosen),
                            tip=f"{name}: p50 {fmt_num(x)} ms at bs={bs or '?'}, {metric} {fmt_num(y, 6)}"))
    parent = _first_comparison(report)
    # The unquantized parent is an option too (keep the original): cosine 1 by definition.
    if points and parent is not None and num(parent.parent_p50_ms) is not None:
        px = parent.parent_p50_ms
        points.append(Point(px, 1.0, label="parent", tip=f"parent (unquantized): p50 {fmt_num(px)} ms, {metric} {fmt_num(1.0, 6)}"))
    return points, "mean cosine to parent"


def _compare(report: r.CompareReport) -> tuple[list[Point], str]:
    acc = report.accuracy or {}
    first = next(iter(acc.values()), None)
    # Older reports give top-1 alone; current ones the whole evaluation, whose first figure is
    # its sample count (as this chart has always read it).
    metric = "top1" if first is None or first.top1 is not None else next(
        (k for k, v in first.model_dump(exclude_none=True).items() if num(v) is not None), "top1")
    ordered = sorted(report.points, key=lambda x: x.batch_size)
    points = []
    for mid, name in model_labels(report).items():
        entry = acc.get(mid)
        y = num(getattr(entry, metric, None)) if entry else None
        x = next((x.results[mid].p50_ms for x in ordered if mid in x.results), None)
        points.append(Point(x, y, label=name, tip=f"{name}: p50 {fmt_num(x)} ms, {metric} {fmt_num(y, 6)}"))
    return points, metric


def _pipeline(report: r.PipelineReport) -> tuple[list[Point], str]:
    points, seen = [], set()
    current = report.model_id
    for i, step in enumerate(report.steps, 1):
        sub = step.report
        first = _first_comparison(sub)
        acc = getattr(sub, "accuracy", None)
        acc = acc if isinstance(acc, r.Accuracy) else None
        for who, mid, y, label in (
            ("parent", current, _top1(acc.reference) if acc else None, f"input {short_id(current)}"),
            ("result", step.output_model_id, _top1(acc.model) if acc else None, f"step {i}: {step.technique}"),
        ):
            x = getattr(first, f"{who}_p50_ms") if first else None
            key = str(mid) if mid else f"{i}-{who}"
            if num(x) is not None and num(y) is not None and key not in seen:
                seen.add(key)
                points.append(Point(x, y, label=label, tip=f"{label}: p50 {fmt_num(x)} ms, top-1 {fmt_num(y, 6)}"))
        if step.output_model_id:
            current = step.output_model_id
    return points, "top-1 accuracy"


def tradeoff_points(report: BaseModel) -> tuple[list[Point], str]:
    """Points plus the y-axis metric name; empty when the report has nothing to trade off."""
    if isinstance(report, r.QuantizeAutoReport) and report.candidates:
        pts, metric = _candidates(report)
    elif isinstance(report, r.CompareReport) and report.points and report.accuracy:
        pts, metric = _compare(report)
    elif isinstance(report, r.PipelineReport) and report.steps:
        pts, metric = _pipeline(report)
    else:
        return [], ""
    pts = [p for p in pts if num(p.x) is not None and num(p.y) is not None]
    return (pts, metric) if len(pts) >= 2 else ([], "")
