"""Thin Celery task: everything it does is in workers.runner."""

from __future__ import annotations

from app import logs
from app.queue import RUN_JOB
from workers.celery_app import celery
from workers.runner import run_job


@celery.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> None:
    with logs.scope():  # the job's ids on its log lines, and on none of the next job's
        run_job(job_id)
