"""Chart and lineage sections of the report page. Charts come from extract/tradeoff series and
svg.chart; lineage comes from the API's lineage answer and/or a pipeline's steps.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from pydantic import BaseModel

from app.engine import reports as r
from app.reports.extract import latency_series, latency_stat, throughput_series
from app.reports.fmt import as_dict, as_list, fmt_bytes, fmt_ms, fmt_num, num
from app.reports.svg import RefLine, Series, chart
from app.reports.templating import render
from app.reports.tradeoff import tradeoff_points

MAX_LINEAGE_NODES = 200  # the API caps families at 500; a page needs far fewer to be useful


def latency_figure(series: list[Series], caption: str) -> tuple[Markup, str]:
    batches = sorted({p.x for s in series for p in s.points if num(p.x) is not None and num(p.y) is not None})
    # Batch sizes are usually powers of two: a log2 axis spaces 1, 8, 32 evenly and labels them exactly.
    x_log = len(batches) > 1 and min(batches) > 0 and max(batches) / min(batches) >= 4
    svg = chart(series, kind="latency", title="p50 latency vs batch size", x_label="batch size",
                y_label="p50 latency (ms)", connect=True, x_log=x_log, x_base=2, x_ticks=batches,
                x_zero=False)
    return Markup(svg), caption


def charts(report: BaseModel) -> str:
    """The charts for one (non-pipeline) report: latency, throughput with the SLA, Pareto."""
    figs = []
    lat = latency_series(report)
    if lat:
        figs.append(latency_figure(lat, "Lower is better. Each line is one model/configuration; hover a point for its value."))
    tput, stat, derived = throughput_series(report)
    if tput:
        rec = getattr(report, "recommendation", None)
        refs = []
        if rec and num(rec.sla.max_latency_ms) is not None:
            refs.append(RefLine("x", rec.sla.max_latency_ms, f"SLA {latency_stat(report)} ≤ {fmt_ms(rec.sla.max_latency_ms)}"))
        if rec and num(rec.sla.min_throughput) is not None:
            refs.append(RefLine("y", rec.sla.min_throughput, f"min {fmt_num(rec.sla.min_throughput)} items/s"))
        svg = chart(tput, kind="throughput", title=f"Throughput vs {stat} latency", x_label=f"{stat} latency (ms)",
                    y_label="throughput (items/s)", connect=True, refs=refs)
        cap = "Up and to the left is better; points along a line are increasing batch sizes."
        if derived:
            cap += " This report records no throughput, so items/s is derived as batch size ÷ p50."
        if refs:
            cap += " Dashed lines are the SLA bounds."
        figs.append((Markup(svg), cap))
    figs += pareto_figure(report)
    # The same measurement appears in both charts; count it once.
    noisy = max(sum(1 for s in series for p in s.points if p.noisy) for series in (lat, tput))
    return render("figures.html", figs=figs, noisy=noisy)


def pareto_figure(report: BaseModel) -> list[tuple[Markup, str]]:
    pts, metric = tradeoff_points(report)
    if not pts:
        return []
    svg = chart([Series("models", pts)], kind="pareto", title=f"{metric} vs p50 latency at the smallest batch",
                x_label="p50 latency at the smallest batch (ms)", y_label=metric, connect=False, front=True,
                label_points=True, x_zero=False, y_zero=False, x_log=False, y_log=False, highlight_label="chosen")
    return [(Markup(svg), "Up and to the left is better. Points on the dashed staircase are not beaten on both "
                          "latency and quality by any other; faded points are.")]


def pipeline_charts(report: r.PipelineReport) -> str:
    lat: list[Series] = []
    for i, step in enumerate(report.steps, 1):
        if step.report is not None:
            lat += latency_series(step.report, prefix=f"{i}. {step.technique}")
    figs = []
    if lat:
        figs.append(latency_figure(lat, "Every model each step measured. Each step's own charts are in its section below."))
    return render("figures.html", figs=figs + pareto_figure(report), noisy=0)


# The lineage answer is the API's (app.models.lineage), not a report: it is read defensively.

def _node(item: dict, *, current: bool = False) -> dict[str, Any]:
    size = item.get("size_bytes")
    return {"name": item.get("name"), "id": item.get("id"), "technique": as_dict(item.get("job")).get("technique"),
            "current": current, "sub": fmt_bytes(size) if size is not None else "", "origin": "upload"}


def _tree(children: list, budget: list[int], depth: int = 0) -> list[dict[str, Any]]:
    """Descendants as nested lists; budget is shared so the whole tree stays under the cap."""
    items: list[dict[str, Any]] = []
    for c in children:
        if not isinstance(c, dict):
            continue
        if budget[0] <= 0 or depth > 20:
            items.append({"more": True})
            break
        budget[0] -= 1
        items.append({"more": False, "name": c.get("name"), "id": c.get("id"),
                      "technique": as_dict(c.get("job")).get("technique"),
                      "children": _tree(as_list(c.get("children")), budget, depth + 1)})
    return items


def lineage_section(lineage: dict | None, report: BaseModel | None) -> str:
    family, descendants, truncated = [], [], False
    if isinstance(lineage, dict):
        # Ancestors come parent-first; the page reads left to right from the upload.
        ancestors = [a for a in as_list(lineage.get("ancestors")) if isinstance(a, dict)][:50][::-1]
        family = [_node(a) for a in ancestors] + [_node(as_dict(lineage.get("model")), current=True)]
        descendants = _tree(as_list(lineage.get("descendants")), [MAX_LINEAGE_NODES])
        truncated = bool(lineage.get("truncated"))
    steps = []
    if isinstance(report, r.PipelineReport) and report.steps:
        steps = [{"name": "input", "id": report.model_id, "technique": None, "current": False, "sub": "",
                  "origin": "pipeline input"}]
        for i, s in enumerate(report.steps[:50], 1):
            out_id = s.output_model_id
            steps.append({"name": f"step {i} output" if out_id else f"step {i} (measures only)", "id": out_id or "",
                          "technique": s.technique, "current": out_id is not None and out_id == report.output_model_id,
                          "sub": "", "origin": "upload"})
    return render("lineage.html", family=family, descendants=descendants, truncated=truncated, steps=steps)
