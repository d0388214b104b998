"""Chart and lineage sections of the report page. Charts come from extract/tradeoff series and
svg.chart; lineage comes from the API's lineage answer and/or a pipeline's steps.
"""

from __future__ import annotations

from app.reports.extract import latency_series, latency_stat, rows, throughput_series
from app.reports.fmt import NA, as_dict, as_list, dig, esc, fmt_bytes, fmt_ms, fmt_num, num, short_id
from app.reports.svg import RefLine, Series, chart
from app.reports.tradeoff import tradeoff_points

MAX_LINEAGE_NODES = 200  # the API caps families at 500; a page needs far fewer to be useful


def _figure(svg: str, caption: str) -> str:
    return f'<figure class="fig">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def latency_figure(series: list[Series], caption: str) -> str:
    batches = sorted({p.x for s in series for p in s.points if num(p.x) is not None and num(p.y) is not None})
    # Batch sizes are usually powers of two: a log2 axis spaces 1, 8, 32 evenly and labels them exactly.
    x_log = len(batches) > 1 and min(batches) > 0 and max(batches) / min(batches) >= 4
    svg = chart(series, kind="latency", title="p50 latency vs batch size", x_label="batch size",
                y_label="p50 latency (ms)", connect=True, x_log=x_log, x_base=2, x_ticks=batches,
                x_zero=False)
    return _figure(svg, caption)


def charts(report: dict) -> str:
    """The charts for one (non-pipeline) report: latency, throughput with the SLA, Pareto."""
    figs = []
    lat = latency_series(report)
    if lat:
        figs.append(latency_figure(lat, "Lower is better. Each line is one model/configuration; hover a point for its value."))
    tput, stat, derived = throughput_series(report)
    if tput:
        sla = as_dict(dig(report, "recommendation", "sla"))
        refs = []
        if num(sla.get("max_latency_ms")) is not None:
            refs.append(RefLine("x", num(sla["max_latency_ms"]), f"SLA {latency_stat(report)} ≤ {fmt_ms(sla['max_latency_ms'])}"))
        if num(sla.get("min_throughput")) is not None:
            refs.append(RefLine("y", num(sla["min_throughput"]), f"min {fmt_num(sla['min_throughput'])} items/s"))
        svg = chart(tput, kind="throughput", title=f"Throughput vs {stat} latency", x_label=f"{stat} latency (ms)",
                    y_label="throughput (items/s)", connect=True, refs=refs)
        cap = "Up and to the left is better; points along a line are increasing batch sizes."
        if derived:
            cap += " This report records no throughput, so items/s is derived as batch size ÷ p50."
        if refs:
            cap += " Dashed lines are the SLA bounds."
        figs.append(_figure(svg, cap))
    figs.append(pareto_figure(report))
    note = ""
    # The same measurement appears in both charts; count it once.
    n_noisy = max(sum(1 for s in series for p in s.points if p.noisy) for series in (lat, tput))
    if n_noisy:
        note = (f'<p class="note">{n_noisy} noisy measurement(s): their confidence interval is wide, so they are drawn '
                "hollow and flagged in the table. Noisy points are marked, not hidden.</p>")
    return f'<div class="figs">{"".join(f for f in figs if f)}</div>{note}' if any(figs) else ""


def pareto_figure(report: dict) -> str:
    pts, metric = tradeoff_points(report)
    if not pts:
        return ""
    svg = chart([Series("models", pts)], kind="pareto", title=f"{metric} vs p50 latency at the smallest batch",
                x_label="p50 latency at the smallest batch (ms)", y_label=metric, connect=False, front=True,
                label_points=True, x_zero=False, y_zero=False, x_log=False, y_log=False, highlight_label="chosen")
    return _figure(svg, "Up and to the left is better. Points on the dashed staircase are not beaten on both "
                        "latency and quality by any other; faded points are.")


def pipeline_charts(report: dict) -> str:
    lat: list[Series] = []
    for i, step in enumerate(rows(report, "steps"), 1):
        lat += latency_series(as_dict(step.get("report")), prefix=f"{i}. {step.get('technique', '?')}")
    figs = []
    if lat:
        figs.append(latency_figure(lat, "Every model each step measured. Each step's own charts are in its section below."))
    figs.append(pareto_figure(report))
    return f'<div class="figs">{"".join(f for f in figs if f)}</div>' if any(figs) else ""


def _node(name, mid, technique=None, *, current: bool = False, sub: str = "", origin: str = "upload") -> str:
    job = f'<div class="via">via {esc(technique)}</div>' if technique else f'<div class="via">{esc(origin)}</div>'
    extra = f'<div class="sub">{esc(sub)}</div>' if sub else ""
    return (f'<div class="node{" cur" if current else ""}" title="{esc(mid)}"><div class="name">{esc(name or NA)}</div>'
            f'<div class="mono sub">{esc(short_id(mid))}</div>{job}{extra}</div>')


def _chain(nodes: list[str]) -> str:
    return '<div class="chain">' + '<span class="arrow">→</span>'.join(nodes) + "</div>"


def _tree(children: list, budget: list[int], depth: int = 0) -> str:
    """Descendants as nested lists; budget is shared so the whole tree stays under the cap."""
    items = []
    for c in children:
        if not isinstance(c, dict):
            continue
        if budget[0] <= 0 or depth > 20:
            items.append('<li class="muted">… more not shown</li>')
            break
        budget[0] -= 1
        tech = dig(c, "job", "technique")
        sub = _tree(as_list(c.get("children")), budget, depth + 1)
        items.append(f'<li><b>{esc(c.get("name") or NA)}</b> <span class="mono muted">{esc(short_id(c.get("id")))}</span>'
                     f' <span class="muted">via {esc(tech or "upload")}</span>{sub}</li>')
    return f"<ul>{''.join(items)}</ul>" if items else ""


def lineage_section(lineage: dict | None, report: dict) -> str:
    out = []
    if isinstance(lineage, dict):
        model = as_dict(lineage.get("model"))
        # Ancestors come parent-first; the page reads left to right from the upload.
        ancestors = [a for a in as_list(lineage.get("ancestors")) if isinstance(a, dict)][:50][::-1]
        nodes = [_node(a.get("name"), a.get("id"), dig(a, "job", "technique"), sub=fmt_bytes(a.get("size_bytes"))
                       if a.get("size_bytes") is not None else "") for a in ancestors]
        nodes.append(_node(model.get("name"), model.get("id"), dig(model, "job", "technique"), current=True,
                           sub=fmt_bytes(model.get("size_bytes")) if model.get("size_bytes") is not None else ""))
        out.append(_chain(nodes))
        tree = _tree(as_list(lineage.get("descendants")), [MAX_LINEAGE_NODES])
        if tree:
            out.append(f'<div class="tree"><p class="muted">Derived from it:</p>{tree}</div>')
        if lineage.get("truncated"):
            out.append('<p class="note">The family is larger than the lineage answer holds; part of it is not shown.</p>')
    steps = rows(report, "steps")
    if steps:
        nodes = [_node("input", report.get("model_id"), origin="pipeline input")]
        for i, s in enumerate(steps[:50], 1):
            out_id = s.get("output_model_id")
            nodes.append(_node(f"step {i} output" if out_id else f"step {i} (measures only)", out_id or "",
                               s.get("technique"), current=out_id is not None and out_id == report.get("output_model_id")))
        out.append('<p class="muted">Pipeline steps:</p>' + _chain(nodes))
    return "".join(out) or '<p class="muted">No lineage available (n/a).</p>'
