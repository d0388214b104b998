"""The report's tables: every measured point, quantize.auto candidates and sensitivity, the
environment, and small key/value tables for configuration blocks. Cells are built from
esc()'d values only; tables are capped (MAX_ROWS) so a 10k-point report stays a sane page.
"""

from __future__ import annotations

from app.reports.extract import model_labels, rows
from app.reports.fmt import (NA, as_dict, as_list, compact_json, esc, fmt_bytes, fmt_num, fmt_pct, fmt_x,
                             kv_table, num, short_provider, table)

MAX_ROWS = 200


def _noisy(row: dict) -> str:
    ci = num(row.get("ci_rel_half_width"))
    ci_txt = esc(f"±{fmt_pct(ci)}") if ci is not None else NA
    return ci_txt + (' <span class="badge warn">noisy</span>' if row.get("noisy") else "")


def _n(value, sig: int = 4) -> str:
    return esc(fmt_num(value, sig))


def measured_tables(report: dict) -> str:
    """Every measured point, whichever of the three measurement shapes the report uses."""
    out = []
    bench = rows(report, "results")
    if bench:
        heads = ["batch", "threads", "provider", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms",
                 "items/s", "runs", "CI ±", "budget hit"]
        body = [[_n(r.get("batch_size")), _n(r.get("threads")), esc(short_provider(r.get("provider") or report.get("provider"))),
                 _n(r.get("p50_ms")), _n(r.get("p90_ms")), _n(r.get("p99_ms")), _n(r.get("mean_ms")), _n(r.get("std_ms")),
                 _n(r.get("throughput_items_per_s")), _n(r.get("runs")), _noisy(r),
                 "yes" if r.get("budget_exhausted") else "no"] for r in bench]
        out.append(table(heads, body, max_rows=MAX_ROWS, what="measured points"))
    cmp = rows(report, "comparison")
    if cmp:
        heads = ["batch", "threads", "parent p50 ms", "result p50 ms", "speedup", "parent p90 ms", "result p90 ms",
                 "runs (parent / result)"]
        body = [[_n(r.get("batch_size")), _n(r.get("threads")), _n(r.get("parent_p50_ms")), _n(r.get("result_p50_ms")),
                 _speedup(r.get("speedup")), _n(r.get("parent_p90_ms")), _n(r.get("result_p90_ms")),
                 f"{_n(r.get('parent_runs'))} / {_n(r.get('result_runs'))}"] for r in cmp]
        out.append(table(heads, body, max_rows=MAX_ROWS, what="measured points"))
    pts = rows(report, "points")
    if pts:
        labels = model_labels(report)
        heads = ["batch", "threads", "provider", "model", "p50 ms", "p90 ms", "p99 ms", "items/s", "runs",
                 "latency vs baseline", "CI ±"]
        body = []
        for r in pts:
            for mid, name in labels.items():
                res = as_dict(as_dict(r.get("results")).get(mid))
                if not res:
                    continue
                body.append([_n(r.get("batch_size")), _n(r.get("threads")), esc(short_provider(r.get("provider"))),
                             esc(name), _n(res.get("p50_ms")), _n(res.get("p90_ms")), _n(res.get("p99_ms")),
                             _n(res.get("throughput_items_per_s")), _n(res.get("runs")),
                             esc(fmt_x(as_dict(r.get("ratios")).get(mid))), _noisy(res)])
        out.append(table(heads, body, max_rows=MAX_ROWS, what="measured points"))
    skipped = as_list(report.get("skipped"))
    if skipped:
        items = "".join(f"<li><code>{esc(compact_json(s, 300))}</code></li>" for s in skipped[:50])
        more = f"<li>… and {len(skipped) - 50:,} more</li>" if len(skipped) > 50 else ""
        out.append(f'<p class="muted">Skipped configurations:</p><ul class="skipped">{items}{more}</ul>')
    return "".join(out)


def _speedup(value) -> str:
    n = num(value)
    cls = "good" if n is not None and n > 1.0 else "bad" if n is not None and n < 1.0 else ""
    return f'<span class="{cls}">{esc(fmt_x(n))}</span>'


def candidates_table(report: dict) -> str:
    cands = rows(report, "candidates")
    if not cands:
        return ""
    heads = ["candidate", "mode", "per channel", "float layers", "mean cosine", "accuracy drop", "meets tolerance",
             "size", "geomean speedup", "p50 ms (batch: ms)"]
    body = [[esc(c.get("name", NA)) + (' <span class="badge good">chosen</span>' if c.get("chosen") else ""),
             esc(c.get("mode", NA)), esc(c.get("per_channel", NA)), _n(c.get("float_layers")), _n(c.get("mean_cosine"), 6),
             _n(c.get("accuracy_drop")), _yes_no(c.get("meets_tolerance")), esc(fmt_bytes(c.get("size_bytes"))),
             _speedup(c.get("geomean_speedup")),
             esc(" · ".join(f"{k}: {fmt_num(v)}" for k, v in as_dict(c.get("p50_ms")).items()) or NA)] for c in cands]
    return table(heads, body, max_rows=MAX_ROWS, what="candidates")


def _yes_no(value) -> str:
    if value is None:
        return NA
    return '<span class="good">yes</span>' if value else '<span class="bad">no</span>'


def sensitivity_table(report: dict) -> str:
    sens = as_dict(report.get("sensitivity"))
    layers = rows(sens, "layers")
    if not layers:
        return ""
    heads = ["layer", "op", "error", "mean cosine", "accuracy drop"]
    body = [[f"<code>{esc(r.get('layer', NA))}</code>", esc(r.get("op_type", NA)), _n(r.get("error")),
             _n(r.get("mean_cosine"), 6), _n(r.get("accuracy_drop"))] for r in layers]
    note = f'<p class="muted">{esc(sens.get("metric", ""))}</p>' if sens.get("metric") else ""
    return note + table(heads, body, max_rows=MAX_ROWS, what="layers")


_ENV_KEYS = [("cpu_model", "CPU"), ("logical_cores", "logical cores"), ("usable_cores", "usable cores"),
             ("cgroup_cpu_limit", "cgroup CPU limit"), ("total_memory_bytes", "memory"), ("cpu_features", "CPU features"),
             ("os", "OS"), ("python", "Python"), ("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("numpy", "numpy"),
             ("available_providers", "providers")]


def environment_table(env: dict) -> str:
    env = as_dict(env)
    if not env:
        return '<p class="muted">No environment recorded (n/a).</p>'
    pairs = []
    for key, label in _ENV_KEYS:
        value = env.get(key)
        if key == "total_memory_bytes":
            text = fmt_bytes(value)
        elif isinstance(value, list):
            text = ", ".join(short_provider(v) if key == "available_providers" else str(v) for v in value) or NA
        else:
            text = NA if value is None else compact_json(value)
        pairs.append((label, text))
    # Newer engines may record more; show it rather than hide it.
    pairs += [(k, compact_json(v)) for k, v in env.items() if k not in dict(_ENV_KEYS)]
    return f'<div class="cfg env">{kv_table(pairs)}</div>'


def config_tables(report: dict, keys: tuple[str, ...] = ("quantization", "inputs", "memory", "model", "nodes",
                                                          "runtime_ops", "tolerance")) -> str:
    """Small key/value tables for the configuration blocks a report happens to carry."""
    out = []
    for key in keys:
        block = report.get(key)
        if isinstance(block, dict) and block:
            pairs = [(k, fmt_bytes(v) if k.endswith("_bytes") and num(v) is not None else compact_json(v, 200))
                     for k, v in list(block.items())[:40]]
            out.append(f'<div class="cfg"><h4>{esc(key.replace("_", " "))}</h4>{kv_table(pairs)}</div>')
    return f'<div class="cfgs">{"".join(out)}</div>' if out else ""
