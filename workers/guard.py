"""A watchdog thread beside each running job: heartbeat, cancellation, memory and time limits.

The job itself checks for cancellation cooperatively (the engine's progress callback). The
guard covers what cooperation can't: a job stuck inside one long native call. It writes the
heartbeat the reaper relies on; when the job was cancelled and has not stopped within the
grace period, or grew past the memory cap, or ran past the hard time limit, it records the
outcome and ends this process. Celery's pool replaces the process; the message, redelivered
(acks_late), finds the job no longer queued and is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("lathe.worker.guard")


class JobGuard(threading.Thread):
    def __init__(self, job_id: str, *, interval: float, cancel_grace: float, memory_limit: int,
                 soft_time_limit: float, time_limit: float, heartbeat: Callable[[], bool], fail: Callable[[str, str], None],
                 cleanup: Callable[[], None], exit: Callable[[int], None] = os._exit) -> None:
        super().__init__(name=f"guard-{job_id}", daemon=True)
        self.job_id = job_id
        self.interval, self.cancel_grace = interval, cancel_grace
        self.memory_limit, self.soft_time_limit, self.time_limit = memory_limit, soft_time_limit, time_limit
        self._heartbeat, self._fail, self._cleanup, self._exit = heartbeat, fail, cleanup, exit
        # Set to "cancelled" or "timeout": the job's next progress check stops it (cooperative).
        self.stop_reason: str | None = None
        self._done = threading.Event()

    def __enter__(self) -> JobGuard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join(timeout=5)

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        started = time.monotonic()
        cancelled_at: float | None = None
        next_beat = 0.0
        while not self._done.wait(min(0.5, self.interval)):
            now = time.monotonic()
            rss = proc.memory_info().rss
            if rss > self.memory_limit:
                self._kill("memory_limit", f"The job used {rss // 2**20} MiB, over the limit of "
                           f"{self.memory_limit // 2**20} MiB per job; try smaller batch sizes or a smaller model.")
                return
            if now - started > self.time_limit:
                self._kill("timeout", f"The job ran past its hard time limit of {self.time_limit:.0f} s.")
                return
            if now - started > self.soft_time_limit and self.stop_reason is None:
                self.stop_reason = "timeout"
            if now >= next_beat:
                next_beat = now + self.interval
                try:
                    running = self._heartbeat()
                except Exception:  # database briefly away: the reaper's timeout is much longer
                    log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
                    continue
                if not running and cancelled_at is None:
                    cancelled_at = now
                    self.stop_reason = "cancelled"
            if cancelled_at is not None and now - cancelled_at > self.cancel_grace:
                log.warning("job %s ignored cancellation for %.0f s: ending its process", self.job_id, self.cancel_grace)
                self._end()
                return

    def _kill(self, type: str, detail: str) -> None:
        log.error("job %s: %s", self.job_id, detail)
        try:
            self._fail(type, detail)
        finally:
            self._end()

    def _end(self) -> None:
        try:
            self._cleanup()  # no partial artifact left behind
        finally:
            self._exit(1)
