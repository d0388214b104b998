"""Every job status change, in one place. Each is a conditional UPDATE, so concurrent actors
(the API cancelling, a worker finishing, a redelivered task) can't overwrite each other:
whoever loses the race sees rowcount 0 and backs off.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.errors import JobErrorType
from app.records import JobRecord
from app.webhooks.outbox import record_job_end


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


def _fair_order(device: str):
    """Queued jobs of one device queue, fairest first: the tenant with the fewest jobs running
    on that queue, then the tenant served least recently there (never served first: round-robin
    when every tenant has nothing running, as on a worker of concurrency 1), then the oldest job."""
    waiting = select(JobRecord.tenant_id).where(JobRecord.status == "queued", JobRecord.device == device)
    tenants = (select(JobRecord.tenant_id,
                      func.count(case((JobRecord.status == "running", 1))).label("running"),
                      func.max(JobRecord.started_at).label("served_at"))
               .where(JobRecord.device == device, JobRecord.tenant_id.in_(waiting))
               .group_by(JobRecord.tenant_id).subquery())
    return (select(JobRecord.id).join(tenants, tenants.c.tenant_id == JobRecord.tenant_id)
            .where(JobRecord.status == "queued", JobRecord.device == device)
            .order_by(tenants.c.running, tenants.c.served_at.asc().nulls_first(), JobRecord.created_at, JobRecord.id))


def claim(session: Session, device: str) -> str | None:
    """Start the fairest queued job of a device queue; its id, or None when none is queued.

    A broker message is a slot on its queue, not a ticket for the job it names: whichever
    message comes first runs the job that is fairest now, so one tenant's long backlog can't
    make another's jobs wait behind all of it. PostgreSQL skips rows another worker is claiming
    (FOR UPDATE SKIP LOCKED); SQLite serialises writers, and the conditional UPDATE in start()
    decides between two workers that picked the same job."""
    while True:
        job_id = session.scalar(_fair_order(device).limit(1).with_for_update(skip_locked=True, of=JobRecord))
        if job_id is None or start(session, job_id):
            return job_id


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


def _end(session: Session, job_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
    """A move to a final status; the job's webhook events join the same transaction."""
    if not _move(session, job_id, allowed, finished_at=utcnow(), **values):
        return False
    record_job_end(session, job_id)
    return True


def succeed(session: Session, job_id: str, report: dict[str, Any], output_model_id: str | None) -> bool:
    return _end(session, job_id, ("running",), status="succeeded", progress=1.0, stage="done", report=report,
                output_model_id=output_model_id)


def fail(session: Session, job_id: str, type: JobErrorType, detail: str) -> bool:
    return _end(session, job_id, ("queued", "running"), status="failed", stage="failed",
                error={"type": str(type), "detail": detail[:2000]})


def cancel(session: Session, job_id: str) -> bool:
    return _end(session, job_id, ("queued", "running"), status="cancelled", stage="cancelled")
