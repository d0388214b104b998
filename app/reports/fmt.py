"""Formatting helpers shared by the report renderer.

Every function here is total: reports come in several schema versions and some fields are
user-controlled, so a missing or oddly typed field becomes "n/a" instead of an exception
(one bad field must not cost the user the whole page), and every string leaves through
`esc` (model names and params are chosen by users and end up inside HTML).
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

NA = "n/a"


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def dig(obj: Any, *path: Any, default: Any = None) -> Any:
    """obj[path[0]][path[1]]..., or default when any step is missing or the wrong type."""
    for key in path:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
        if obj is None:
            return default
    return obj


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
    """A short, single-line rendering of a param/config value (un-escaped: callers esc())."""
    if isinstance(value, str):
        return clip(value, limit)
    try:
        text = json.dumps(value, default=str, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return clip(text, limit)


def table(headers: list[str], rows: list[list[str]], *, max_rows: int, what: str = "rows",
          cls: str = "data") -> str:
    """An HTML table. `headers` are plain text (escaped here); cells are HTML built by callers
    from esc()'d values. Rows beyond max_rows are dropped with a visible note, so a report with
    thousands of points still gives a page of bounded size."""
    if not rows:
        return '<p class="muted">No data.</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[:max_rows])
    note = ""
    if len(rows) > max_rows:
        note = (f'<p class="note">Showing the first {max_rows:,} of {len(rows):,} {esc(what)}; '
                "the raw JSON below has them all.</p>")
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}'


def kv_table(pairs: list[tuple[str, str]]) -> str:
    """Two-column key/value table; both sides are plain text (escaped here)."""
    if not pairs:
        return '<p class="muted">n/a</p>'
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{body}</tbody></table>'
