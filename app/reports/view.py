"""A stored report as its typed model, for the page to read attributes instead of digging.

Reports are checked against their model when a job runs (``app.engine.reports``), so a stored
report normally parses as is. One that does not (a field an engine of another version wrote, a
hand-edited row) loses only the parts that fail: each failing value, or the object lacking a
required field, is dropped and the rest parsed again. Only a report whose top level cannot be
parsed (no known ``technique``) gives ``None``; the page then shows the raw JSON alone.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ValidationError

from app.engine import reports as r

MAX_PASSES = 12  # each pass drops at least one value; nesting is shallower than this

_DROP = object()


def parse_report(data: Any) -> BaseModel | None:
    if not isinstance(data, dict):
        return None
    try:
        return r.REPORTS.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
    data = copy.deepcopy(data)  # the caller's dict is left as stored (the raw JSON shows it)
    for _ in range(MAX_PASSES):
        if not all(_mark(data, err["loc"]) for err in errors):
            return None
        data = _sweep(data)
        try:
            return r.REPORTS.validate_python(data)
        except ValidationError as exc:
            errors = exc.errors()
    return None


def _mark(data: dict, loc: tuple) -> bool:
    """Mark the deepest existing value along ``loc`` for removal (a missing field's object, or
    the wrong value itself); skip loc parts naming a union member rather than a key. False when
    only the top level could be blamed."""
    parent, key, current = None, None, data
    for part in loc:
        if isinstance(current, dict) and part in current:
            parent, key, current = current, part, current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            parent, key, current = current, part, current[part]
    if parent is None:
        return False
    parent[key] = _DROP
    return True


def _sweep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sweep(v) for k, v in value.items() if v is not _DROP}
    if isinstance(value, list):
        return [_sweep(v) for v in value if v is not _DROP]
    return value


def provider_of(row: Any, report: BaseModel) -> str | None:
    """A point's provider, or the report's when points do not carry one (older reports)."""
    return getattr(row, "provider", None) or getattr(report, "provider", None)


def environment_of(report: BaseModel | None) -> r.Environment | None:
    """The report's environment; a pipeline's is its first step's that has one."""
    if isinstance(report, r.PipelineReport):
        return next((s.report.environment for s in report.steps
                     if s.report is not None and getattr(s.report, "environment", None)), None)
    return getattr(report, "environment", None)
