"""The summary card: verdict with badges, and headline tiles (speedup, size, accuracy change,
best latency/throughput, the SLA recommendation). It reads whichever of `verdict`,
`comparison`, `ratios`, `accuracy`, `fidelity`, `tolerance` are present, because techniques
and schema versions differ in which of those they carry.
"""

from __future__ import annotations

from app.reports.extract import model_labels, rows
from app.reports.fmt import (NA, as_dict, as_list, dig, esc, fmt_bytes, fmt_ms, fmt_num, fmt_throughput, fmt_x, num,
                             short_provider, table)


def _range(values: list[float | None], fmt=fmt_x) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return NA
    lo, hi = min(vals), max(vals)
    return fmt(lo) if abs(hi - lo) < 1e-9 else f"{fmt(lo)} – {fmt(hi)}"


def _badge(flag, yes: str, no: str) -> str:
    if flag is True:
        return f'<span class="badge good">✓ {esc(yes)}</span>'
    if flag is False:
        return f'<span class="badge bad">✗ {esc(no)}</span>'
    return f'<span class="badge">{esc(yes)}: n/a</span>'


def _tile(label: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="sub">{esc(sub)}</div>' if sub else ""
    return f'<div class="tile"><div class="lbl">{esc(label)}</div><div class="val">{esc(value)}</div>{sub_html}</div>'


def speedup_text(report: dict) -> str:
    v = as_dict(report.get("verdict"))
    if num(v.get("min_speedup")) is not None or num(v.get("max_speedup")) is not None:
        return _range([num(v.get("min_speedup")), num(v.get("max_speedup"))])
    return _range([num(r.get("speedup")) for r in rows(report, "comparison")])


def size_text(report: dict) -> str:
    ratio = num(report.get("size_ratio"))
    if ratio is None:
        p, r = num(dig(report, "parent", "size_bytes")), num(dig(report, "result", "size_bytes"))
        ratio = r / p if p and r is not None else None
    if ratio is None:
        return NA
    return f"{fmt_x(ratio)} ({fmt_bytes(dig(report, 'parent', 'size_bytes'))} → {fmt_bytes(dig(report, 'result', 'size_bytes'))})"


def accuracy_text(report: dict) -> tuple[str, str]:
    """(headline, detail) for the accuracy change, from whichever fields exist."""
    acc = as_dict(report.get("accuracy"))
    model_top1, ref_top1 = num(dig(acc, "model", "top1")), num(dig(acc, "reference", "top1"))
    cosines = [num(o.get("cosine_min")) for o in as_dict(dig(report, "fidelity", "outputs")).values() if isinstance(o, dict)]
    cos_min = min((c for c in cosines if c is not None), default=None)
    detail = f"lowest cosine to parent {fmt_num(cos_min, 6)}" if cos_min is not None else ""
    mean_cos = num(dig(report, "tolerance", "mean_cosine"))
    if mean_cos is not None:
        detail = ", ".join(p for p in (f"mean cosine {fmt_num(mean_cos, 6)}", detail) if p)
    if model_top1 is not None and ref_top1 is not None:
        drop = num(acc.get("drop"))
        drop_txt = f"drop {fmt_num(drop)}; " if drop is not None else ""
        return f"top-1 {fmt_num(ref_top1)} → {fmt_num(model_top1)}", drop_txt + detail
    if model_top1 is not None:
        return f"top-1 {fmt_num(model_top1)}", detail or "no reference to compare with"
    if cos_min is not None or mean_cos is not None:
        return "fidelity only", detail
    return NA, ""


def _recommendation(report: dict) -> str:
    rec = report.get("recommendation")
    if not isinstance(rec, dict):
        return ""
    sla = as_dict(rec.get("sla"))
    stat = sla.get("latency_stat") or "p99"
    bounds = [f"{stat} ≤ {fmt_ms(sla.get('max_latency_ms'))}" if num(sla.get("max_latency_ms")) is not None else "",
              f"≥ {fmt_throughput(sla.get('min_throughput'))}" if num(sla.get("min_throughput")) is not None else ""]
    sla_txt = ", ".join(b for b in bounds if b) or "no SLA given (best throughput)"
    best = rec.get("best")
    if isinstance(best, dict):
        what = (f"batch {fmt_num(best.get('batch_size'))}, {fmt_num(best.get('threads'))} threads, "
                f"{short_provider(best.get('provider') or report.get('provider'))}: p99 {fmt_ms(best.get('p99_ms'))}, "
                f"{fmt_throughput(best.get('throughput_items_per_s'))}")
        head = f'<div class="rec ok"><b>Recommended</b> <span class="mono">{esc(what)}</span>'
    else:
        head = '<div class="rec none"><b>No configuration meets the SLA</b>'
    reason = f'<div class="muted">{esc(rec.get("reason"))}</div>' if rec.get("reason") else ""
    return f'{head}<div class="muted">SLA: {esc(sla_txt)}</div>{reason}</div>'


def _compare_tiles(report: dict) -> list[str]:
    labels = model_labels(report)
    if not labels:
        return []
    pts = rows(report, "points")
    # The baseline is the model every ratio is relative to (ratio 1.0 everywhere), else the first.
    base = next((m for m in labels if pts and all(num(dig(p, "ratios", m)) == 1.0 for p in pts)), next(iter(labels)))
    sizes = {str(m.get("id")): num(m.get("size_bytes")) for m in rows(report, "models")}
    base_acc = num(dig(report, "accuracy", base, "top1"))
    tiles = []
    for mid, name in list(labels.items())[:6]:
        if mid == base:
            continue
        speed = [1.0 / r for r in (num(dig(p, "ratios", mid)) for p in pts) if r]
        size = sizes.get(mid) / sizes[base] if sizes.get(mid) is not None and sizes.get(base) else None
        acc = num(dig(report, "accuracy", mid, "top1"))
        sub = f"size {fmt_x(size)}"
        if acc is not None and base_acc is not None:
            sub += f", top-1 {fmt_num(base_acc)} → {fmt_num(acc)}"
        tiles.append(_tile(f"{name} vs {labels[base]}", f"{_range(speed)} faster", sub))
    return tiles


def _benchmark_tiles(report: dict) -> list[str]:
    res = [r for r in rows(report, "results") if num(r.get("p50_ms")) is not None]
    if not res:
        return []
    small = min(num(r.get("batch_size")) or 0 for r in res)
    fastest = min((r for r in res if (num(r.get("batch_size")) or 0) == small), key=lambda r: num(r.get("p50_ms")))
    tiles = [_tile(f"best p50 at batch {fmt_num(small)}", fmt_ms(fastest.get("p50_ms")), f"threads={fastest.get('threads', NA)}")]
    tput = [r for r in res if num(r.get("throughput_items_per_s")) is not None]
    if tput:
        top = max(tput, key=lambda r: num(r.get("throughput_items_per_s")))
        tiles.append(_tile("peak throughput", fmt_throughput(top.get("throughput_items_per_s")),
                           f"batch {fmt_num(top.get('batch_size'))}, threads={top.get('threads', NA)}"))
    noisy = sum(1 for r in res if r.get("noisy"))
    if noisy:
        tiles.append(_tile("noisy points", f"{noisy} of {len(res)}", "marked hollow in charts, flagged in tables"))
    return tiles


def _pipeline_tiles(report: dict) -> list[str]:
    steps = [as_dict(s.get("report")) for s in rows(report, "steps")]
    if not steps:
        return []
    sized = [s for s in steps if dig(s, "result", "size_bytes") is not None]
    tiles = [_tile("steps", str(len(steps)), " → ".join(str(s.get("technique") or NA) for s in rows(report, "steps"))[:120])]
    if sized:
        first, last = num(dig(sized[0], "parent", "size_bytes")), num(dig(sized[-1], "result", "size_bytes"))
        ratio = last / first if first and last is not None else None
        tiles.append(_tile("overall size", fmt_x(ratio), f"{fmt_bytes(first)} → {fmt_bytes(last)}"))
    scored = [s for s in steps if num(dig(s, "accuracy", "model", "top1")) is not None]
    if scored:
        ref = num(dig(scored[0], "accuracy", "reference", "top1"))
        final = num(dig(scored[-1], "accuracy", "model", "top1"))
        tiles.append(_tile("overall accuracy", f"top-1 {fmt_num(ref)} → {fmt_num(final)}", "input vs last scored step"))
    return tiles


def _steps_table(report: dict) -> str:
    steps = rows(report, "steps")
    if not steps:
        return ""
    body = []
    for i, step in enumerate(steps[:50], 1):
        sub = as_dict(step.get("report"))
        v = as_dict(sub.get("verdict"))
        badges = "".join(_badge(v.get(k), yes, no) for k, yes, no in (
            ("faster", "faster", "not faster"), ("smaller", "smaller", "not smaller"),
            ("within_tolerance", "within tolerance", "outside tolerance")) if k in v)
        head, _ = accuracy_text(sub)
        body.append([esc(i), f'<a href="#step-{i}">{esc(step.get("technique") or NA)}</a>',
                     badges or '<span class="muted">–</span>',
                     esc(speedup_text(sub)), esc(fmt_x(sub.get("size_ratio"))), esc(head)])
    return table(["#", "step", "verdict", "speedup", "size ratio", "accuracy"], body, max_rows=50, what="steps")


def summary_card(report: dict, status: str | None = None) -> str:
    v = as_dict(report.get("verdict"))
    badges = ""
    if v:
        badges = (_badge(v.get("faster"), "faster", "not faster") + _badge(v.get("smaller"), "smaller", "not smaller")
                  + _badge(v.get("within_tolerance"), "within tolerance", "outside tolerance"))
    summary = f'<p class="verdict">{esc(v["summary"])}</p>' if v.get("summary") else ""
    tiles = []
    if rows(report, "comparison") or v:
        tiles.append(_tile("speedup (min – max)", speedup_text(report)))
    if report.get("size_ratio") is not None or dig(report, "result", "size_bytes") is not None:
        tiles.append(_tile("size ratio", size_text(report)))
    head, detail = accuracy_text(report)
    if head != NA or v:
        tiles.append(_tile("accuracy change" if "→" in head else "accuracy", head, detail))
    tiles += _compare_tiles(report) + _benchmark_tiles(report) + _pipeline_tiles(report)
    # The engine's summary already spells out the reasons; list them only when it is missing.
    reasons = [] if v.get("summary") else [str(r) for r in as_list(v.get("reasons"))]
    notes = reasons + [str(n) for n in as_list(report.get("notes"))]
    notes_html = "".join(f"<li>{esc(n)}</li>" for n in notes[:30])
    status_html = f' <span class="pill st-{esc(status)}">{esc(status)}</span>' if status else ""
    steps = _steps_table(report)
    return (f'<div class="card"><div class="badges"><span class="tech">{esc(report.get("technique") or NA)}</span>'
            f'{status_html}{badges}</div>{summary}<div class="tiles">{"".join(tiles)}</div>{_recommendation(report)}'
            + (f'<ul class="notes">{notes_html}</ul>' if notes_html else "") + steps + "</div>")
