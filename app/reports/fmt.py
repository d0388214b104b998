"""Formatting helpers shared by the report renderer (the templates' filters).

Every function here is total: a missing value (an optional field of an older report) or a
number that is not finite becomes "n/a" instead of an exception. Escaping is the templates'
autoescape; ``esc`` remains for the SVG charts, which are built as strings.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

NA = "n/a"


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def num(value: Any) -> float | None:
    # bool is an int subclass, and True is not a latency; NaN/inf would poison chart scales.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def fmt_num(value: Any, sig: int = 4) -> str:
    n = num(value)
    if n is None:
        return NA
    if n == int(n) and abs(n) < 1e15:
        return f"{int(n):,}"
    if abs(n) >= 1000:
        return f"{n:,.0f}"
    return f"{n:.{sig}g}"


def fmt_ms(value: Any) -> str:
    n = num(value)
    return NA if n is None else f"{fmt_num(n)} ms"


def fmt_x(value: Any) -> str:
    n = num(value)
    return NA if n is None else f"{n:.2f}×"


def fmt_pct(value: Any, digits: int = 1) -> str:
    n = num(value)
    return NA if n is None else f"{n * 100:.{digits}f}%"


def fmt_bytes(value: Any) -> str:
    n = num(value)
    if n is None:
        return NA
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return NA  # unreachable; keeps type checkers quiet


def fmt_throughput(value: Any) -> str:
    n = num(value)
    return NA if n is None else f"{n:,.0f} items/s"


def short_provider(name: Any) -> str:
    # "CPUExecutionProvider" says nothing more than "CPU" in a crowded legend.
    text = str(name) if name is not None else NA
    return text[: -len("ExecutionProvider")] if text.endswith("ExecutionProvider") and len(text) > 17 else text


def short_id(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 12 else text[:8] + "…"


def clip(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact_json(value: Any, limit: int = 160) -> str:
    """A short, single-line rendering of a param/config value (plain text: templates escape it)."""
    if isinstance(value, str):
        return clip(value, limit)
    try:
        text = json.dumps(value, default=str, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return clip(text, limit)
