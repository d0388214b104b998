"""The report's tables: every measured point, quantize.auto candidates and sensitivity, the
environment, and small key/value tables for configuration blocks (``measured.html``,
``candidates.html``, ``config.html``). Tables are capped (MAX_ROWS) so a 10k-point report
stays a sane page.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from pydantic import BaseModel

from app.engine import reports as r
from app.reports.extract import model_labels
from app.reports.fmt import NA, compact_json, fmt_bytes, num, short_provider
from app.reports.templating import render

MAX_ROWS = 200


def measured_tables(report: BaseModel) -> str:
    """Every measured point, whichever of the three measurement shapes the report has."""
    points = None
    if isinstance(report, r.CompareReport) and report.points:
        labels = model_labels(report)
        points = [{"point": p, "mid": mid, "name": name, "res": p.results[mid]}
                  for p in report.points for mid, name in labels.items() if mid in p.results]
    return render("measured.html", report=report, max_rows=MAX_ROWS, points=points,
                  bench=report.results if isinstance(report, r.BenchmarkReport) else [],
                  comparison=report.comparison if isinstance(report, r.QuantizeReport) else [],
                  skipped=getattr(report, "skipped", []))


def candidates_table(report: BaseModel) -> str:
    if not isinstance(report, r.QuantizeAutoReport) or not report.candidates:
        return ""
    return render("candidates.html", candidates=report.candidates, sensitivity=report.sensitivity,
                  search=report.search, pruning=report.pruning, max_rows=MAX_ROWS)


_ENV_LABELS = {"cpu_model": "CPU", "logical_cores": "logical cores", "usable_cores": "usable cores",
               "cgroup_cpu_limit": "cgroup CPU limit", "total_memory_bytes": "memory",
               "cpu_features": "CPU features", "os": "OS", "python": "Python", "onnxruntime": "onnxruntime",
               "onnx": "onnx", "numpy": "numpy", "available_providers": "providers"}


def environment_table(env: r.Environment | None) -> str:
    if env is None:
        return Markup('<p class="muted">No environment recorded (n/a).</p>')
    pairs = []
    for key, label in _ENV_LABELS.items():
        value = getattr(env, key)
        if key == "total_memory_bytes":
            text = fmt_bytes(value)
        elif isinstance(value, list):
            text = ", ".join(short_provider(v) if key == "available_providers" else v for v in value) or NA
        else:
            text = NA if value is None else compact_json(value)
        pairs.append((label, text))
    # Fields the page has no label for (torch's version...): shown rather than hidden.
    pairs += [(k, compact_json(v)) for k, v in env.model_dump(exclude_none=True).items() if k not in _ENV_LABELS]
    return render("config.html", env=pairs)


CONFIG_BLOCKS = ("quantization", "inputs", "memory", "model", "nodes", "runtime_ops", "tolerance")


def _pairs(block: Any) -> list[tuple[str, str]]:
    items = block.model_dump(mode="json", exclude_unset=True) if isinstance(block, BaseModel) else block
    return [(k, fmt_bytes(v) if k.endswith("_bytes") and num(v) is not None else compact_json(v, 200))
            for k, v in list(items.items())[:40]]


def config_tables(report: BaseModel) -> str:
    """Small key/value tables for the configuration blocks a report happens to carry."""
    blocks = [(key.replace("_", " "), pairs) for key in CONFIG_BLOCKS
              if (block := getattr(report, key, None)) is not None and (pairs := _pairs(block))]
    return render("config.html", env=None, blocks=blocks) if blocks else ""
