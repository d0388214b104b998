"""A watchdog thread beside each running job: heartbeat, cancellation, memory and time limits.

The job checks for cancellation cooperatively (the engine's progress callback), but a job need
not call it: when the job is cancelled or passes its soft time limit, the guard also raises
JobStopped in the job's thread (PyThreadState_SetAsyncExc), which Python delivers at the job's
next bytecode. Native steps run bounded in child processes (app.engine.runtime.isolate) and wait for
them in short slices, so that reaches the job within moments. What that can't reach, a job
stuck inside one long native call in its own process, the guard ends: when the job was
stopped and has not stopped within the grace period, or grew past the memory cap, or ran past
the hard time limit, it records the outcome, kills the job's child processes and ends this
process. Celery's pool replaces the process; the message, redelivered (acks_late), finds the job
no longer queued and is dropped.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable

from app.jobs.errors import JobErrorType

log = logging.getLogger("lathe.worker.guard")


class JobStopped(BaseException):
    """Raised in the job's thread to stop it (cancelled, or past its soft time limit).

    A BaseException, like KeyboardInterrupt: engine code that turns library errors into user
    errors with ``except Exception`` must not swallow it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# PyThreadState_SetAsyncExc takes a class, instantiated without arguments: one per reason.
class TimedOut(JobStopped):
    def __init__(self) -> None:
        super().__init__("timeout")


class Cancelled(JobStopped):
    def __init__(self) -> None:
        super().__init__("cancelled")


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule ``exc`` in the thread (None: withdraw one scheduled and not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


class JobGuard(threading.Thread):
    def __init__(self, job_id: str, *, interval: float, cancel_grace: float, memory_limit: int,
                 soft_time_limit: float, time_limit: float, heartbeat: Callable[[], bool],
                 fail: Callable[[JobErrorType, str], None], cleanup: Callable[[], None],
                 exit: Callable[[int], None] = os._exit) -> None:
        super().__init__(name=f"guard-{job_id}", daemon=True)
        self.job_id = job_id
        self.interval, self.cancel_grace = interval, cancel_grace
        self.memory_limit, self.soft_time_limit, self.time_limit = memory_limit, soft_time_limit, time_limit
        self._heartbeat, self._fail, self._cleanup, self._exit = heartbeat, fail, cleanup, exit
        # Set to "cancelled" or "timeout": the job's next progress check stops it (cooperative).
        self.stop_reason: str | None = None
        self._done = threading.Event()
        # The job's thread while it is inside the guarded block (JobStopped may be raised in
        # it there, never later: not while the job's outputs are being committed).
        self._job_thread: int | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> JobGuard:
        self._job_thread = threading.get_ident()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            with self._lock:
                if self._job_thread is not None:
                    _raise_in(self._job_thread, None)
                self._job_thread = None
        finally:  # a JobStopped delivered just before the lock still stops the guard
            self._done.set()
            self.join(timeout=5)

    def _request_stop(self, reason: str) -> None:
        """Tell the job to stop: at its next progress check, and at once in its thread."""
        self.stop_reason = reason
        with self._lock:
            if self._job_thread is not None:
                _raise_in(self._job_thread, TimedOut if reason == "timeout" else Cancelled)

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        started = time.monotonic()
        stopped_at: float | None = None
        next_beat = 0.0
        while not self._done.wait(min(0.5, self.interval)):
            now = time.monotonic()
            rss = _tree_rss(proc)
            if rss > self.memory_limit:
                self._kill(JobErrorType.MEMORY_LIMIT, f"The job used {rss // 2**20} MiB, over the limit of "
                           f"{self.memory_limit // 2**20} MiB per job; try smaller batch sizes or a smaller model.")
                return
            if now - started > self.time_limit:
                self._kill(JobErrorType.TIMEOUT, f"The job ran past its hard time limit of {self.time_limit:.0f} s.")
                return
            if now - started > self.soft_time_limit and self.stop_reason is None:
                self._request_stop("timeout")
                stopped_at = now
            if now >= next_beat:
                next_beat = now + self.interval
                try:
                    running = self._heartbeat()
                except Exception:  # database briefly away: the reaper's timeout is much longer
                    log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
                    continue
                if not running and self.stop_reason is None:
                    self._request_stop("cancelled")
                    stopped_at = now
            if stopped_at is not None and now - stopped_at > self.cancel_grace:
                if self.stop_reason == "timeout":
                    self._kill(JobErrorType.TIMEOUT, f"The job ran past its time limit of {self.soft_time_limit:.0f} s "
                               f"and did not stop within {self.cancel_grace:.0f} s; its process was ended.")
                    return
                log.warning("job %s ignored cancellation for %.0f s: ending its process", self.job_id, self.cancel_grace)
                self._end()
                return

    def _kill(self, type: JobErrorType, detail: str) -> None:
        log.error("job %s: %s", self.job_id, detail)
        try:
            self._fail(type, detail)
        finally:
            self._end()

    def _end(self) -> None:
        try:
            _kill_children()  # native steps in their own process groups would outlive us
            self._cleanup()  # no partial artifact left behind
        finally:
            self._exit(1)


def _kill_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass


def _tree_rss(proc) -> int:
    """RSS of the job's process and its children: native steps run in child processes
    (app.engine.runtime.isolate), and their memory is the job's too."""
    import psutil

    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total
