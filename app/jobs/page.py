"""A job's report page (report.html) as the API serves it, for the API's route and for the
worker (export.mlflow attaches the page of the job whose model it exports)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.jobs.schemas import JobOut
from app.models.lineage import lineage
from app.records import JobRecord
from app.reports.render import render_report_html


def report_page(session: Session, job: JobRecord, report: dict) -> str:
    anchor = job.output_model_id or job.model_id
    family = lineage(session, job.tenant_id, anchor) if anchor else None
    return render_report_html(report, job=JobOut.model_validate(job).model_dump(mode="json"), lineage=family)
