"""Every job status change, in one place. Each is a conditional UPDATE, so concurrent actors
(the API cancelling, a worker finishing, a redelivered task) can't overwrite each other:
whoever loses the race sees rowcount 0 and backs off.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.records import JobRecord


def _move(session: Session, job_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
    result = session.execute(
        update(JobRecord).where(JobRecord.id == job_id, JobRecord.status.in_(allowed)).values(**values)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def start(session: Session, job_id: str) -> bool:
    """queued → running. Only from queued: a duplicate or redelivered message for a job that is
    running (or over) is a no-op. A job whose worker died is put back to queued by the reaper."""
    now = utcnow()
    return _move(session, job_id, ("queued",), status="running", started_at=now, heartbeat_at=now,
                 attempts=JobRecord.attempts + 1, progress=0.0, stage="starting", error=None)


def heartbeat(session: Session, job_id: str) -> bool:
    """Returns False when the job is no longer running (cancelled, or reaped)."""
    return _move(session, job_id, ("running",), heartbeat_at=utcnow())


def requeue(session: Session, job_id: str, why: str) -> bool:
    """running → queued, for a job whose worker was lost (its heartbeat lapsed)."""
    return _move(session, job_id, ("running",), status="queued", stage=why[:200], progress=0.0, heartbeat_at=None)


def dispatched(session: Session, job_id: str) -> bool:
    return _move(session, job_id, ("queued",), dispatched_at=utcnow())


def report_progress(session: Session, job_id: str, progress: float, stage: str) -> bool:
    """Returns False when the job is no longer running (cancelled): the worker must stop."""
    return _move(session, job_id, ("running",), progress=max(0.0, min(1.0, progress)), stage=stage[:200],
                 heartbeat_at=utcnow())


def succeed(session: Session, job_id: str, report: dict[str, Any], output_model_id: str | None) -> bool:
    return _move(session, job_id, ("running",), status="succeeded", progress=1.0, stage="done", report=report,
                 output_model_id=output_model_id, finished_at=utcnow())


def fail(session: Session, job_id: str, type: str, detail: str) -> bool:
    return _move(session, job_id, ("queued", "running"), status="failed", stage="failed",
                 error={"type": type, "detail": detail[:2000]}, finished_at=utcnow())


def cancel(session: Session, job_id: str) -> bool:
    return _move(session, job_id, ("queued", "running"), status="cancelled", stage="cancelled", finished_at=utcnow())
