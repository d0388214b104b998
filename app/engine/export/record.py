"""What an exporter records about a model: the producing job's params, flattened, and the
headline figures of its report (latency p50 and items/s per batch size, size and size ratio,
fidelity, accuracy) as flat ``name -> number`` metrics.

Reports are read as stored JSON (dicts), tolerantly: a field an older engine did not write is
simply not recorded. Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_PARAM_VALUE = 500  # the smallest value limit of MLflow servers still in use (newer: 6000)
MAX_KEY = 250
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def key(name: str) -> str:
    """A metric or param name MLflow accepts (alphanumerics, _ - . space /), at most 250 chars."""
    return _UNSAFE.sub("_", name)[:MAX_KEY]


def flat_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys (lists of objects by index); other lists and scalars as JSON
    text, truncated to what MLflow stores. ``{"measure": {"batch_sizes": [1, 8]}}`` ->
    ``{"measure.batch_sizes": "[1, 8]"}``."""
    if isinstance(params, Mapping) and (params or not prefix):
        items = params.items()
    elif isinstance(params, list) and params and all(isinstance(v, Mapping) for v in params):
        items = enumerate(params)  # a pipeline's steps: steps.0.technique, steps.0.params.per_channel
    else:
        items = None
    if items is not None:
        out: dict[str, str] = {}
        for name, value in items:
            out.update(flat_params(value, f"{prefix}.{name}" if prefix else str(name)))
        return out
    text = params if isinstance(params, str) else json.dumps(params, sort_keys=True)
    if len(text) > MAX_PARAM_VALUE:
        text = text[:MAX_PARAM_VALUE - 1] + "…"
    return {key(prefix): text}


def headline(report: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The report whose figures describe the model: a pipeline's last step that produced a
    model (its output is the job's), else its last step; any other report itself."""
    if not isinstance(report, Mapping) or report.get("technique") != "pipeline":
        return report if isinstance(report, Mapping) else None
    steps = [s for s in report.get("steps") or [] if isinstance(s, Mapping)]
    produced = [s for s in steps if s.get("output_model_id")] or steps
    return headline(produced[-1].get("report")) if produced else None


def metrics(report: Mapping[str, Any] | None) -> dict[str, float]:
    """Headline figures of a report (see the module's docstring); empty for no report. A
    pipeline's ``end_to_end`` section (its input vs its final output) adds the same figures
    under ``end_to_end.``."""
    e2e = report.get("end_to_end") if isinstance(report, Mapping) and report.get("technique") == "pipeline" else None
    out = _figures(headline(report))
    if isinstance(e2e, Mapping):
        out.update({key(f"end_to_end.{name}"): value for name, value in _figures(e2e).items()})
    return out


def _figures(report: Mapping[str, Any] | None) -> dict[str, float]:
    if report is None:
        return {}
    out: dict[str, float] = {}
    _sizes(report, out)
    points = report.get("comparison") or report.get("latency") or []
    _compare_points([p for p in points if isinstance(p, Mapping)], out)
    _benchmark_points([p for p in report.get("results") or [] if isinstance(p, Mapping)], out)
    _fidelity(report.get("fidelity"), out)
    _accuracy(report.get("accuracy"), out)
    verdict = report.get("verdict")
    if isinstance(verdict, Mapping):
        _put(out, "speedup_min", verdict.get("min_speedup"))
        _put(out, "speedup_max", verdict.get("max_speedup"))
    return out


def _put(out: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[key(name)] = float(value)


def _sizes(report: Mapping[str, Any], out: dict[str, float]) -> None:
    parent, result = report.get("parent"), report.get("result")
    if isinstance(result, Mapping):
        _put(out, "size_bytes", result.get("size_bytes"))
    elif isinstance(report.get("model"), Mapping):  # benchmark
        _put(out, "size_bytes", report["model"].get("size_bytes"))
    if isinstance(parent, Mapping):
        _put(out, "parent_size_bytes", parent.get("size_bytes"))
    ratio = report.get("size_ratio")
    if ratio is None and isinstance(parent, Mapping) and isinstance(result, Mapping):
        before, after = parent.get("size_bytes"), result.get("size_bytes")
        ratio = after / before if isinstance(before, (int, float)) and before and isinstance(after, (int, float)) else None
    _put(out, "size_ratio", ratio)


def _point_suffix(point: Mapping[str, Any], many_threads: bool) -> str:
    suffix = f"bs{point.get('batch_size')}"
    return f"{suffix}_t{point.get('threads')}" if many_threads else suffix


def _compare_points(points: list[Mapping[str, Any]], out: dict[str, float]) -> None:
    """Parent vs result timed back to back (quantize, prune, distill reports)."""
    many = len({p.get("threads") for p in points}) > 1
    for point in points:
        suffix, batch, p50 = _point_suffix(point, many), point.get("batch_size"), point.get("result_p50_ms")
        _put(out, f"latency_p50_ms.{suffix}", p50)
        _put(out, f"parent_latency_p50_ms.{suffix}", point.get("parent_p50_ms"))
        _put(out, f"latency_p99_ms.{suffix}", point.get("result_p99_ms"))
        _put(out, f"speedup.{suffix}", point.get("speedup"))
        if isinstance(batch, int) and isinstance(p50, (int, float)) and p50 > 0:
            _put(out, f"items_per_s.{suffix}", batch * 1000.0 / p50)


def _benchmark_points(points: list[Mapping[str, Any]], out: dict[str, float]) -> None:
    many = len({(p.get("threads"), p.get("provider")) for p in points}) > 1
    for point in points:
        suffix = _point_suffix(point, many)
        _put(out, f"latency_p50_ms.{suffix}", point.get("p50_ms"))
        _put(out, f"latency_p99_ms.{suffix}", point.get("p99_ms"))
        _put(out, f"items_per_s.{suffix}", point.get("throughput_items_per_s"))


def _fidelity(fidelity: Any, out: dict[str, float]) -> None:
    if not isinstance(fidelity, Mapping):
        return
    for name, output in (fidelity.get("outputs") or {}).items():
        if isinstance(output, Mapping):
            for field in ("cosine_mean", "cosine_min", "top1_agreement", "max_abs_error", "mean_abs_error"):
                _put(out, f"fidelity.{name}.{field}", output.get(field))


def _accuracy(accuracy: Any, out: dict[str, float]) -> None:
    if not isinstance(accuracy, Mapping):
        return
    for side, prefix in (("model", "accuracy"), ("reference", "accuracy.reference")):
        scores = accuracy.get(side)
        if isinstance(scores, Mapping):
            for field in ("top1", "top5", "mse", "mae"):
                _put(out, f"{prefix}.{field}", scores.get(field))
    _put(out, "accuracy.drop", accuracy.get("drop"))
