"""The embedded default's worker, looked after by `lathe serve`.

`lathe serve` runs the API and one `lathe worker` child. A supervisor thread beside uvicorn
waits on that child (so a dead worker is reaped at once, never left a zombie), restarts it with
backoff, and answers /readyz's question about it. Production (`lathe api`) has no supervisor, and
its /readyz says nothing about workers it doesn't own.

The worker runs in a session of its own: its process group (id = its pid) holds it and Celery's
pool children, so stopping serve can reach all of them at once, and a Ctrl-C in the terminal reaches
only serve, which decides. On Linux the kernel also sends the worker SIGKILL if serve dies without
cleaning up (kill -9, the OOM killer); Celery's pool children already ask the same of the worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

log = logging.getLogger("lathe.serve")

BACKOFF_FIRST_S = 1.0  # the first restart; each quick death doubles it ...
BACKOFF_MAX_S = 30.0  # ... up to this
STABLE_AFTER_S = 60.0  # a worker that stayed up this long starts the backoff over
STOP_GRACE_S = 30.0  # on stop, Celery's warm shutdown may finish the current job for this long


def _die_with_parent():
    """A preexec_fn: the child gets SIGKILL when the thread that started it ends (prctl(2)).
    None where the kernel has no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # serve died between fork and prctl: nobody will signal us
            os._exit(1)

    return preexec


class WorkerSupervisor(threading.Thread):
    """Starts `command --ready-file ready_file`, restarts it whenever it exits until stop()."""

    def __init__(self, command: list[str], env: dict[str, str], ready_file: Path) -> None:
        super().__init__(name="lathe-worker-supervisor", daemon=True)
        self.command, self.env, self.ready_file = command, env, ready_file
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._now = False  # kill(): a plain flag, since a signal handler may set it while we hold a lock
        self._proc: subprocess.Popen | None = None
        self._state, self._restarts, self._last_exit, self._retry_at = "starting", 0, "", 0.0

    def check(self) -> str:
        """'ok' once the worker consumes jobs (it touches ready_file), else why not, for /readyz."""
        with self._lock:
            if self._state == "starting" and self.ready_file.exists():
                self._state = "ok"
            if self._state == "restarting":
                wait = max(0.0, self._retry_at - time.monotonic())
                return f"restarting in {wait:.0f} s ({self._last_exit}; restart {self._restarts})"
            if self._state == "starting" and self._proc is not None:
                return f"starting (pid {self._proc.pid})"
            return self._state

    def run(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            with self._lock:  # stop() sets _stopping under the lock: no worker starts after it
                if self._stopping.is_set() or self._now:
                    break
                self.ready_file.unlink(missing_ok=True)
                self._state, started = "starting", time.monotonic()
                try:
                    self._proc = subprocess.Popen(self.command + ["--ready-file", str(self.ready_file)], env=self.env,
                                                  start_new_session=True, preexec_fn=_die_with_parent())
                except OSError as exc:
                    self._proc, why = None, f"could not start: {exc}"
            if self._proc is not None:
                rc = self._proc.wait()  # reaps it: a dead worker is never left a zombie
                _kill_group(self._proc.pid)  # a worker that died hard may leave pool children
                why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            if self._stopping.is_set() or self._now:
                break
            if time.monotonic() - started >= STABLE_AFTER_S:
                delay = BACKOFF_FIRST_S
            with self._lock:
                self._state, self._last_exit, self._retry_at = "restarting", why, time.monotonic() + delay
                self._restarts += 1
            log.warning("lathe worker %s; restarting it in %g s", why, delay)
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        with self._lock:
            self._state = "stopped"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Warm shutdown for grace_s (the leader's SIGTERM: Celery stops taking jobs and may finish
        the current one), then SIGKILL to the worker's group and every process it started."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            tree = _descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline and not self._now:
                time.sleep(0.1)
            _kill_group(proc.pid, tree)
            _wait_gone(tree, timeout_s=10)
        self.join(timeout=10)

    def kill(self) -> None:
        """Now, without grace (a second Ctrl-C). Called from a signal handler: it takes no lock."""
        self._now = True
        if (proc := self._proc) is not None:
            _kill_group(proc.pid, _descendants(proc.pid))


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_gone(tree: Iterable[psutil.Process], timeout_s: float) -> None:
    """SIGKILL is delivered asynchronously: stop() returns once every process it killed has died
    (exited, or a zombie waiting for a parent that may not be ours to reap)."""
    deadline = time.monotonic() + timeout_s
    for p in tree:
        while time.monotonic() < deadline:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)


def _kill_group(pgid: int, tree: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL to the worker's process group, and to any of its descendants that left the group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in tree:
        try:
            p.kill()  # psutil checks the pid was not reused
        except psutil.NoSuchProcess:
            pass
