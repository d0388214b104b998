"""The summary card: verdict with badges, and headline tiles (speedup, size, accuracy change,
best latency/throughput, the SLA recommendation), from the typed report; ``summary.html``
lays it out.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.engine import reports as r
from app.reports.extract import model_labels
from app.reports.fmt import NA, fmt_bytes, fmt_ms, fmt_num, fmt_throughput, fmt_x, num
from app.reports.templating import render


def _range(values: list[float | None], fmt=fmt_x) -> str:
    vals = [v for v in (num(x) for x in values) if v is not None]
    if not vals:
        return NA
    lo, hi = min(vals), max(vals)
    return fmt(lo) if abs(hi - lo) < 1e-9 else f"{fmt(lo)} – {fmt(hi)}"


def _comparison(report: BaseModel) -> list[r.ComparePoint]:
    return report.comparison if isinstance(report, r.QuantizeReport) else []


def speedup_text(report: BaseModel) -> str:
    v = getattr(report, "verdict", None)
    if v is not None and (v.min_speedup is not None or v.max_speedup is not None):
        return _range([v.min_speedup, v.max_speedup])
    return _range([x.speedup for x in _comparison(report)])


def _sizes(report: BaseModel) -> tuple[int | None, int | None]:
    parent, result = getattr(report, "parent", None), getattr(report, "result", None)
    return getattr(parent, "size_bytes", None), getattr(result, "size_bytes", None)


def size_text(report: BaseModel) -> str:
    ratio = num(getattr(report, "size_ratio", None))
    parent, result = _sizes(report)
    if ratio is None and parent and result is not None:
        ratio = result / parent
    if ratio is None:
        return NA
    return f"{fmt_x(ratio)} ({fmt_bytes(parent)} → {fmt_bytes(result)})"


def accuracy_text(report: BaseModel) -> tuple[str, str]:
    """(headline, detail) for the accuracy change, from whichever fields exist."""
    acc = getattr(report, "accuracy", None)
    acc = acc if isinstance(acc, r.Accuracy) else None
    model_top1 = acc.model.top1 if acc and acc.model else None
    ref_top1 = acc.reference.top1 if acc and acc.reference else None
    fidelity = getattr(report, "fidelity", None)
    cosines = [o.cosine_min for o in fidelity.outputs.values()] if fidelity else []
    cos_min = min((c for c in cosines if num(c) is not None), default=None)
    detail = f"lowest cosine to parent {fmt_num(cos_min, 6)}" if cos_min is not None else ""
    tolerance = getattr(report, "tolerance", None)
    mean_cos = num(tolerance.mean_cosine) if tolerance else None
    if mean_cos is not None:
        detail = ", ".join(p for p in (f"mean cosine {fmt_num(mean_cos, 6)}", detail) if p)
    if model_top1 is not None and ref_top1 is not None:
        drop_txt = f"drop {fmt_num(acc.drop)}; " if num(acc.drop) is not None else ""
        return f"top-1 {fmt_num(ref_top1)} → {fmt_num(model_top1)}", drop_txt + detail
    if model_top1 is not None:
        return f"top-1 {fmt_num(model_top1)}", detail or "no reference to compare with"
    if cos_min is not None or mean_cos is not None:
        return "fidelity only", detail
    return NA, ""


def agreement_text(report: BaseModel) -> str:
    """Top-1 agreement with the parent (the lowest over outputs), shown beside the tolerance
    badge: a result "within tolerance" by mean cosine can still change 1 answer in 8."""
    fidelity = getattr(report, "fidelity", None)
    outputs = fidelity.outputs.values() if isinstance(fidelity, r.Fidelity) else []
    agree = [o.top1_agreement for o in outputs if num(o.top1_agreement) is not None]
    if not agree:
        return ""
    text = f"top-1 agreement {fmt_num(min(agree))}"
    samples = fidelity.samples if num(fidelity.samples) is not None else None
    return text + (f" on {samples:,} samples" if samples is not None else "")


def measurement_flags(report: BaseModel) -> list[str]:
    """What may make the numbers wrong: a busy host, tail outliers, fewer samples than asked."""
    flags = []
    load = getattr(report, "host_load", None)
    if isinstance(load, r.HostLoad) and load.busy and load.summary:
        flags.append(load.summary)
    for point in _comparison(report) + list(getattr(report, "latency", None) or []):
        flags += [f"batch {point.batch_size}: {t}" for t in point.tail_outliers]
    rec = getattr(report, "recommendation", None)
    flags += list(rec.flags) if isinstance(rec, r.Recommendation) else []
    fidelity = getattr(report, "fidelity", None)
    if isinstance(fidelity, r.Fidelity) and fidelity.samples_note:
        flags.append(fidelity.samples_note)
    return flags


def _sla_text(rec: r.Recommendation) -> str:
    sla = rec.sla
    bounds = [f"{sla.latency_stat} ≤ {fmt_ms(sla.max_latency_ms)}" if num(sla.max_latency_ms) is not None else "",
              f"≥ {fmt_throughput(sla.min_throughput)}" if num(sla.min_throughput) is not None else ""]
    return ", ".join(b for b in bounds if b) or "no SLA given (best throughput)"


def _compare_tiles(report: BaseModel) -> list[tuple[str, ...]]:
    labels = model_labels(report)
    if not labels:
        return []
    pts = report.points
    # The baseline is the model every ratio is relative to (ratio 1.0 everywhere), else the first.
    base = next((m for m in labels if pts and all(p.ratios.get(m) == 1.0 for p in pts)), next(iter(labels)))
    sizes = {m.id: m.size_bytes for m in report.models}
    acc = report.accuracy or {}
    base_acc = acc[base].top1 if base in acc else None
    tiles = []
    for mid, name in list(labels.items())[:6]:
        if mid == base:
            continue
        speed = [1.0 / x for x in (num(p.ratios.get(mid)) for p in pts) if x]
        size = sizes[mid] / sizes[base] if sizes.get(mid) is not None and sizes.get(base) else None
        top1 = acc[mid].top1 if mid in acc else None
        sub = f"size {fmt_x(size)}"
        if top1 is not None and base_acc is not None:
            sub += f", top-1 {fmt_num(base_acc)} → {fmt_num(top1)}"
        tiles.append((f"{name} vs {labels[base]}", f"{_range(speed)} faster", sub))
    return tiles


def _benchmark_tiles(report: BaseModel) -> list[tuple[str, ...]]:
    res = [x for x in report.results if num(x.p50_ms) is not None] if isinstance(report, r.BenchmarkReport) else []
    if not res:
        return []
    small = min(x.batch_size or 0 for x in res)
    fastest = min((x for x in res if (x.batch_size or 0) == small), key=lambda x: x.p50_ms)
    tiles = [(f"best p50 at batch {fmt_num(small)}", fmt_ms(fastest.p50_ms), f"threads={fastest.threads}")]
    tput = [x for x in res if num(x.throughput_items_per_s) is not None]
    if tput:
        top = max(tput, key=lambda x: x.throughput_items_per_s)
        tiles.append(("peak throughput", fmt_throughput(top.throughput_items_per_s),
                      f"batch {fmt_num(top.batch_size)}, threads={top.threads}"))
    noisy = sum(1 for x in res if x.noisy)
    if noisy:
        tiles.append(("noisy points", f"{noisy} of {len(res)}", "marked hollow in charts, flagged in tables"))
    return tiles


def _scores(report: BaseModel | None, who: str) -> float | None:
    acc = getattr(report, "accuracy", None)
    scores = getattr(acc, who, None) if isinstance(acc, r.Accuracy) else None
    return num(scores.top1) if scores else None


def _pipeline_tiles(report: BaseModel) -> list[tuple[str, ...]]:
    if not isinstance(report, r.PipelineReport) or not report.steps:
        return []
    steps = [s.report for s in report.steps]
    tiles = [("steps", str(len(steps)), " → ".join(s.technique for s in report.steps)[:120])]
    sized = [s for s in steps if _sizes(s)[1] is not None]
    if sized:
        first, last = _sizes(sized[0])[0], _sizes(sized[-1])[1]
        ratio = last / first if first and last is not None else None
        tiles.append(("overall size", fmt_x(ratio), f"{fmt_bytes(first)} → {fmt_bytes(last)}"))
    scored = [s for s in steps if _scores(s, "model") is not None]
    if scored:
        tiles.append(("overall accuracy", f"top-1 {fmt_num(_scores(scored[0], 'reference'))} → "
                      f"{fmt_num(_scores(scored[-1], 'model'))}", "input vs last scored step"))
    return tiles


_BADGES = (("faster", "faster", "not faster"), ("smaller", "smaller", "not smaller"),
           ("within_tolerance", "within tolerance", "outside tolerance"))


def _steps(report: BaseModel) -> list[dict[str, Any]]:
    if not isinstance(report, r.PipelineReport):
        return []
    out = []
    for i, step in enumerate(report.steps, 1):
        sub = step.report
        v = getattr(sub, "verdict", None)
        badges = [(getattr(v, k), yes, no) for k, yes, no in _BADGES if k in v.model_fields_set] if v else []
        out.append({"index": i, "technique": step.technique, "badges": badges,
                    "speedup": speedup_text(sub) if sub else NA,
                    "size_ratio": getattr(sub, "size_ratio", None),
                    "accuracy": accuracy_text(sub)[0] if sub else NA})
    return out


def summary_card(report: BaseModel, status: str | None = None) -> str:
    v = getattr(report, "verdict", None)
    tiles: list[tuple[str, ...]] = []
    if _comparison(report) or v:
        tiles.append(("speedup (min – max)", speedup_text(report)))
    if getattr(report, "size_ratio", None) is not None or _sizes(report)[1] is not None:
        tiles.append(("size ratio", size_text(report)))
    head, detail = accuracy_text(report)
    if head != NA or v:
        tiles.append(("accuracy change" if "→" in head else "accuracy", head, detail))
    tiles += _compare_tiles(report) + _benchmark_tiles(report) + _pipeline_tiles(report)
    # The engine's summary already spells out the reasons; list them only when it is missing.
    reasons = v.reasons if v and not v.summary else []
    rec = getattr(report, "recommendation", None)
    return render("summary.html", report=report, status=status, verdict=v, tiles=tiles, rec=rec,
                  agreement=agreement_text(report), flags=measurement_flags(report),
                  sla_text=_sla_text(rec) if rec else "", notes=[*reasons, *getattr(report, "notes", [])],
                  steps=_steps(report))
