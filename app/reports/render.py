"""A job's JSON report as one self-contained HTML page.

Pure function of (report, job, lineage): no I/O, no framework imports, so the API process can
call it cheaply and tests can call it directly. The page makes no network request (inline CSS
and SVG, system fonts) and says so to the browser with a CSP that forbids scripts and remote
loads, a second line of defence behind the escaping of every user-supplied string.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from app.reports.extract import rows
from app.reports.fmt import NA, as_dict, compact_json, esc
from app.reports.sections import charts, lineage_section, pipeline_charts
from app.reports.style import CSS
from app.reports.summary import summary_card
from app.reports.tables import (candidates_table, config_tables, environment_table, measured_tables,
                                sensitivity_table)

log = logging.getLogger(__name__)

MAX_RAW_JSON = 300_000  # characters of raw JSON embedded; the API serves the full report anyway
MAX_DEPTH = 3  # pipelines of pipelines: deep enough for anything real, bounded for anything not
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
# Sent as an HTTP header too (app/jobs/routes.py): a saved copy keeps the meta tag, and only the
# header can say frame-ancestors (no other site may frame the page).
CSP_HEADER = f"{CSP}; frame-ancestors 'none'"


def _safe(fn: Callable[..., str], *args: Any) -> str:
    """Renders one section; a bug or a report shape nobody anticipated costs that section, not
    the page (the raw JSON at the bottom still has the data)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a report page must never 500 on odd data
        log.exception("report section %s failed", getattr(fn, "__name__", fn))
        return f'<p class="note">This section could not be rendered ({esc(type(exc).__name__)}); see the raw JSON.</p>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>' if body else ""


def _summary(report: dict, status: str | None, depth: int, prefix: str) -> str:
    card = _safe(summary_card, report, status)
    return _section(f"{prefix}summary", "Summary", card) if depth == 0 else card


def _report_body(report: dict, status: str | None, depth: int, prefix: str) -> str:
    """Summary, charts and tables for one report; pipeline steps recurse into this."""
    if rows(report, "steps") and depth < MAX_DEPTH:
        return _pipeline_body(report, status, depth, prefix)
    parts = [_summary(report, status, depth, prefix), _section(f"{prefix}charts", "Charts", _safe(charts, report))]
    cand = _safe(candidates_table, report)
    if cand:
        parts.append(_section(f"{prefix}candidates", "Candidates", cand + _safe(sensitivity_table, report)))
    parts.append(_section(f"{prefix}data", "Measured points", _safe(measured_tables, report)))
    parts.append(_section(f"{prefix}config", "Configuration", _safe(config_tables, report)))
    return "".join(parts)


def _pipeline_body(report: dict, status: str | None, depth: int, prefix: str) -> str:
    steps = rows(report, "steps")
    parts = [_summary(report, status, depth, prefix),
             _section(f"{prefix}charts", "Across the pipeline", _safe(pipeline_charts, report))]
    for i, step in enumerate(steps[:20], 1):
        sub = as_dict(step.get("report"))
        params = compact_json(step.get("params", {}), 300)
        out_id = step.get("output_model_id")
        head = (f'<h2>Step {i} · {esc(step.get("technique") or sub.get("technique") or NA)}</h2>'
                f'<p class="muted">params <code>{esc(params)}</code>'
                + (f' · output model <code>{esc(out_id)}</code>' if out_id else "") + "</p>")
        body = (_report_body(sub, None, depth + 1, f"{prefix}s{i}-") if sub
                else '<p class="muted">No report for this step (n/a).</p>')
        parts.append(f'<section class="step" id="{prefix}step-{i}">{head}{body}</section>')
    if len(steps) > 20:
        parts.append(f'<p class="note">{len(steps) - 20} more steps not shown; see the raw JSON.</p>')
    return "".join(parts)


def _environment(report: dict) -> dict:
    env = as_dict(report.get("environment"))
    for step in rows(report, "steps"):
        env = env or as_dict(as_dict(step.get("report")).get("environment"))
    return env


def _header(report: dict, job: dict) -> str:
    technique = job.get("technique") or report.get("technique") or NA
    model_id = job.get("model_id") or report.get("model_id") or NA
    meta = [f"job <code>{esc(job.get('id') or NA)}</code>", f"model <code>{esc(model_id)}</code>"]
    for key in ("created_at", "started_at", "finished_at"):
        if job.get(key):
            meta.append(f"{esc(key.replace('_at', ''))} {esc(job[key])}")
    meta.append(f"schema v{esc(report.get('schema_version', NA))}")
    params = job.get("params")
    params_html = f'<div class="params muted">params <code>{esc(compact_json(params, 400))}</code></div>' if params else ""
    err = as_dict(job.get("error"))
    alert = (f'<div class="alert"><b>{esc(err.get("type") or "error")}</b>: {esc(err.get("detail") or NA)}</div>'
             if err else "")
    return (f'<header><h1>Lathe report · {esc(technique)}</h1><div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>'
            f"{params_html}{alert}</header>")


def _raw_json(report: dict) -> str:
    try:
        text = json.dumps(report, indent=2, default=str, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(report)
    note = ""
    if len(text) > MAX_RAW_JSON:
        note = f'<p class="note">Raw JSON truncated to {MAX_RAW_JSON:,} of {len(text):,} characters; the API returns it whole.</p>'
        text = text[:MAX_RAW_JSON] + "\n…"
    return f'{note}<details class="raw"><summary>Raw JSON report</summary><pre>{esc(text)}</pre></details>'


def render_report_html(report: dict, *, job: dict, lineage: dict | None) -> str:
    """The HTML page for one job's report. Never raises on odd or partial input."""
    report, job = as_dict(report), as_dict(job)
    status = job.get("status") if isinstance(job.get("status"), str) else None
    toc = [("summary", "Summary"), ("charts", "Charts"), ("environment", "Environment"), ("lineage", "Lineage"),
           ("raw", "Raw data")]
    if rows(report, "steps"):
        toc[2:2] = [(f"step-{i}", f"Step {i}") for i in range(1, min(len(rows(report, "steps")), 20) + 1)]
    body = [_safe(_header, report, job), "",
            _safe(_report_body, report, status, 0, ""),
            _section("environment", "Environment", _safe(lambda: environment_table(_environment(report)))),
            _section("lineage", "Lineage", _safe(lineage_section, lineage, report)),
            _section("raw", "Raw data", _safe(_raw_json, report)),
            '<footer>Generated by Lathe from the job report. Self-contained: no scripts, no network.</footer>']
    # Link only to sections this report actually has (an evaluate report has no charts).
    rendered = "".join(body)
    body[1] = ('<nav class="toc">' + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in toc if f'id="{a}"' in rendered)
               + "</nav>")
    title = f"Lathe report · {job.get('technique') or report.get('technique') or NA} · {job.get('id') or ''}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            + "".join(body) + "</main></body></html>\n")
