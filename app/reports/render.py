"""A job's JSON report as one self-contained HTML page.

Pure function of (report, job, lineage): no I/O, no framework imports, so the API process can
call it cheaply and tests can call it directly. The stored report is parsed into its typed model
(``app.reports.view``) and laid out by Jinja2 templates (``templates/``) with autoescape on, so
every user-supplied string (model names, params, notes) is escaped wherever it lands. The page
makes no network request (inline CSS and SVG, system fonts) and says so to the browser with a
CSP that forbids scripts and remote loads, a second line of defence behind that escaping.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from markupsafe import Markup
from pydantic import BaseModel

from app.engine import reports as r
from app.reports.fmt import NA, as_dict
from app.reports.sections import charts, lineage_section, pipeline_charts
from app.reports.style import CSS
from app.reports.summary import summary_card
from app.reports.tables import candidates_table, config_tables, environment_table, measured_tables
from app.reports.templating import render
from app.reports.view import environment_of, parse_report

log = logging.getLogger(__name__)

MAX_RAW_JSON = 300_000  # characters of raw JSON embedded; the API serves the full report anyway
MAX_STEPS = 20
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
# Sent as an HTTP header too (app/jobs/routes.py): a saved copy keeps the meta tag, and only the
# header can say frame-ancestors (no other site may frame the page).
CSP_HEADER = f"{CSP}; frame-ancestors 'none'"


def _safe(fn: Callable[..., str], *args: Any) -> Markup:
    """Renders one section; a bug or a report shape nobody anticipated costs that section, not
    the page (the raw JSON at the bottom still has the data)."""
    try:
        return Markup(fn(*args))
    except Exception as exc:  # noqa: BLE001 - a report page must never 500 on odd data
        log.exception("report section %s failed", getattr(fn, "__name__", fn))
        return render("section_failed.html", error=type(exc).__name__)


def _section(anchor: str, title: str, body: str) -> Markup:
    return render("section.html", anchor=anchor, title=title, body=body)


def _summary(report: BaseModel, status: str | None, depth: int, prefix: str) -> Markup:
    card = _safe(summary_card, report, status)
    return _section(f"{prefix}summary", "Summary", card) if depth == 0 else card


def _report_body(report: BaseModel, status: str | None, depth: int, prefix: str) -> Markup:
    """Summary, charts and tables for one report; pipeline steps recurse into this."""
    if isinstance(report, r.PipelineReport):
        return _pipeline_body(report, status, prefix)
    parts = [_summary(report, status, depth, prefix), _section(f"{prefix}charts", "Charts", _safe(charts, report))]
    cand = _safe(candidates_table, report)
    if cand:
        parts.append(_section(f"{prefix}candidates", "Candidates", cand))
    parts.append(_section(f"{prefix}data", "Measured points", _safe(measured_tables, report)))
    parts.append(_section(f"{prefix}config", "Configuration", _safe(config_tables, report)))
    return Markup("").join(parts)


def _pipeline_body(report: r.PipelineReport, status: str | None, prefix: str) -> Markup:
    parts = [_summary(report, status, 0, prefix),
             _section(f"{prefix}charts", "Across the pipeline", _safe(pipeline_charts, report))]
    if report.end_to_end is not None:
        parts.append(_section(f"{prefix}end-to-end", "End to end: the job's input vs the final output",
                              render("end_to_end.html", e2e=report.end_to_end)))
    for i, step in enumerate(report.steps[:MAX_STEPS], 1):
        body = _report_body(step.report, None, 1, f"{prefix}s{i}-") if step.report is not None else ""
        parts.append(render("step.html", prefix=prefix, index=i, step=step, body=body))
    if len(report.steps) > MAX_STEPS:
        parts.append(Markup('<p class="note">{} more steps not shown; see the raw JSON.</p>').format(
            len(report.steps) - MAX_STEPS))
    return Markup("").join(parts)


def _header(raw: dict, job: dict) -> Markup:
    return render("header.html", job=job, error=as_dict(job.get("error")),
                  technique=job.get("technique") or raw.get("technique") or NA,
                  model_id=job.get("model_id") or raw.get("model_id") or NA,
                  schema_version=raw.get("schema_version", NA))


def _raw_json(raw: dict) -> Markup:
    try:
        text = json.dumps(raw, indent=2, default=str, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(raw)
    size = len(text)
    if size > MAX_RAW_JSON:
        text = text[:MAX_RAW_JSON] + "\n…"
    return render("raw.html", text=text, limit=MAX_RAW_JSON, truncated_from=size if size > MAX_RAW_JSON else 0)


def _unparsed() -> Markup:
    return render("section_failed.html", error=None)


def render_report_html(report: dict, *, job: dict, lineage: dict | None) -> str:
    """The HTML page for one job's report. Never raises on odd or partial input."""
    raw, job = as_dict(report), as_dict(job)
    model = parse_report(raw)
    status = job.get("status") if isinstance(job.get("status"), str) else None
    steps = model.steps if isinstance(model, r.PipelineReport) else []
    toc = [("summary", "Summary"), ("charts", "Charts"), ("environment", "Environment"), ("lineage", "Lineage"),
           ("raw", "Raw data")]
    toc[2:2] = [(f"step-{i}", f"Step {i}") for i in range(1, min(len(steps), MAX_STEPS) + 1)]
    body = [_safe(_report_body, model, status, 0, "") if model is not None else _unparsed(),
            _section("environment", "Environment", _safe(lambda: environment_table(environment_of(model)))),
            _section("lineage", "Lineage", _safe(lineage_section, lineage, model)),
            _section("raw", "Raw data", _safe(_raw_json, raw))]
    # Link only to sections this report actually has (an evaluate report has no charts).
    rendered = "".join(body)
    title = f"Lathe report · {job.get('technique') or raw.get('technique') or NA} · {job.get('id') or ''}"
    return render("page.html", csp=Markup(CSP), title=title, css=Markup(CSS), header=_safe(_header, raw, job), body=body,
                  toc=[(a, t) for a, t in toc if f'id="{a}"' in rendered]) + "\n"
