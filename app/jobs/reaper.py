"""The reaper: no job stays 'running' without a live worker, no 'queued' job is lost by the broker.

Runs in the API process (a background thread started in the lifespan, once at start-up and
then every ``reaper_interval_s``). Several API processes may run it at once: every change is a
conditional transition, and a message too many is harmless (a worker that finds no queued job
on the message's queue drops it).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction, utcnow
from app.jobs import transitions
from app.jobs.errors import JobErrorType
from app.queue import QUEUES, broker_waiting, enqueue_job
from app.records import JobRecord
from app.settings import Settings

log = logging.getLogger("lathe.reaper")


def reap(sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> dict[str, int]:
    now = utcnow()
    counts = {"requeued": 0, "failed": 0, "redispatched": 0}
    to_send: list[tuple[str, str]] = []
    with transaction(sessions) as s:
        stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
        lost = s.scalars(select(JobRecord).where(JobRecord.status == "running", JobRecord.heartbeat_at < stale))
        for job in lost:
            ran = (now - job.started_at).total_seconds() if job.started_at else 0
            if ran > settings.job_time_limit_s:
                ok = transitions.fail(s, job.id, JobErrorType.TIMEOUT,
                                     f"The job ran past its hard time limit of {settings.job_time_limit_s} s and was stopped.")
                counts["failed"] += ok
            elif job.attempts >= settings.max_job_attempts:
                ok = transitions.fail(s, job.id, JobErrorType.WORKER_LOST,
                                     f"The worker running this job was lost (killed, out of memory or its machine went "
                                     f"away) on each of {job.attempts} attempts; not retrying.")
                counts["failed"] += ok
            elif transitions.requeue(s, job.id, f"requeued: worker lost on attempt {job.attempts}"):
                counts["requeued"] += 1
                to_send.append((job.id, job.device))
    with transaction(sessions) as s:
        queued = s.execute(select(JobRecord.id, JobRecord.device, JobRecord.dispatched_at)
                           .where(JobRecord.status == "queued").order_by(JobRecord.created_at)).all()
    if queued:
        # A message is a slot on its queue, not a ticket for one job (workers.runner runs the
        # fairest queued job for whichever message comes): count, don't match ids. Messages for
        # jobs queued within the horizon are theirs; the rest waiting serve the overdue jobs.
        waiting, sending = broker_waiting(settings), {job_id for job_id, _ in to_send}
        horizon = now - timedelta(seconds=settings.redispatch_after_s)
        for queue in QUEUES:
            jobs = [j for j in queued if j.device == queue and j.id not in sending]
            overdue = [j for j in jobs if j.dispatched_at is None or j.dispatched_at < horizon]
            spare = max(0, waiting[queue] - (len(jobs) - len(overdue)))
            for job in overdue[:max(0, len(overdue) - spare)]:
                counts["redispatched"] += 1
                to_send.append((job.id, queue))
    for job_id, device in to_send:
        enqueue_job(celery, job_id, device)
        with transaction(sessions) as s:
            transitions.dispatched(s, job_id)
    if any(counts.values()):
        log.warning("reaper: %s", counts)
    return counts


class Reaper(threading.Thread):
    def __init__(self, sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        super().__init__(name="lathe-reaper", daemon=True)
        self.sessions, self.celery, self.settings = sessions, celery, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                reap(self.sessions, self.celery, self.settings)
            except Exception:  # database or broker down: try again next round
                log.warning("reaper round failed", exc_info=True)
            if self.stopped.wait(self.settings.reaper_interval_s):
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
