"""`lathe serve` looks after its worker: a real serve process, its worker killed for real.

kill -9 of the worker: it is reaped (no zombie), /readyz says not ready until a new worker is up,
and a job submitted meanwhile runs on the restarted worker. A stop signal to serve (or kill -9 of
serve itself) leaves no process of its tree alive: not the worker, not Celery's pool child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.procs import ROOT, free_port


class Serve:
    """`python -m app.cli serve` on a free port, its output in a log file (a pipe nobody reads
    would block it)."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        self.data_dir, self.port = tmp_path / "d", free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
        env.update({f"LATHE_{k.upper()}": v for k, v in settings.items()})
        self.log_path = tmp_path / "serve.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.seen: set[psutil.Process] = set()  # every descendant ever seen: all are killed at the end

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def tree(self) -> list[psutil.Process]:
        kids = self.ps.children(recursive=True)
        self.seen.update(kids)
        return kids

    def worker(self) -> psutil.Process | None:
        """serve's live `lathe worker` child, if any (a zombie is not a worker)."""
        for child in self.ps.children():
            self.seen.add(child)
            try:
                if "worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    return child
            except psutil.NoSuchProcess:
                pass
        return None

    def readyz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.base}/readyz", timeout=5)
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 90) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while (r := self.readyz()) is None or r.status_code != 200:
            assert self.proc.poll() is None, "serve exited early:\n" + self.output()
            assert time.monotonic() < deadline, f"serve never became ready: {r and r.text}\n{self.output()}"
            time.sleep(0.1)
        return r

    def key(self) -> str:
        return (self.data_dir / "local-api-key").read_text().strip()

    def wait_pool(self, worker: psutil.Process, timeout: float = 90) -> list[psutil.Process]:
        """The worker and its prefork pool child, once the pool has started."""
        deadline = time.monotonic() + timeout
        while not worker.children():
            assert time.monotonic() < deadline, "the worker never started its pool child\n" + self.output()
            time.sleep(0.1)
        return self.tree()

    def close(self) -> None:
        """Whatever the test did, nothing it started outlives it."""
        if self.proc.poll() is None:
            self.tree()
        for p in [self.ps, *self.seen]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        self.log.close()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def serve(tmp_path) -> Iterator[Serve]:
    # A worker lost mid-job is noticed in seconds, not the default minute.
    s = Serve(tmp_path, heartbeat_interval_s="1", heartbeat_timeout_s="6", reaper_interval_s="1")
    try:
        yield s
    finally:
        s.close()


def test_killed_worker_is_reaped_restarted_and_reported(serve, mlp_onnx):
    serve.wait_ready()
    old = serve.worker()
    assert old is not None, "no worker under serve:\n" + serve.output()
    h = {"Authorization": f"Bearer {serve.key()}"}
    m = httpx.post(f"{serve.base}/v1/models", headers=h, files={"file": ("m.onnx", mlp_onnx.read_bytes())}).json()

    def submit(min_seconds: float) -> str:
        return httpx.post(f"{serve.base}/v1/jobs", headers=h, json={
            "model_id": m["id"], "technique": "benchmark",
            "params": {"batch_sizes": [1], "min_runs": 3, "min_seconds": min_seconds}}).json()["id"]

    def wait_job(job_id: str, until: tuple[str, ...], timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while (status := httpx.get(f"{serve.base}/v1/jobs/{job_id}", headers=h).json()["status"]) not in until:
            assert time.monotonic() < deadline, f"job still {status}\n{serve.output()}"
            time.sleep(0.1)
        return status

    lost = submit(3)  # running when its worker dies: the reaper re-queues it for the next worker
    assert wait_job(lost, ("running", "succeeded")) == "running"
    old.send_signal(signal.SIGKILL)
    deadline, not_ready, reaped = time.monotonic() + 15, None, False
    while time.monotonic() < deadline and not (not_ready and reaped):
        r = serve.readyz()
        if r is not None and r.status_code == 503:
            not_ready = r
        reaped = old.pid not in {c.pid for c in serve.ps.children()}
        time.sleep(0.05)
    assert reaped, f"the killed worker {old.pid} is still serve's child: {old.status()}"
    assert not_ready is not None, f"/readyz still says ready with the worker dead: {serve.readyz().text}"
    assert not_ready.headers["content-type"] == "application/problem+json"
    assert not_ready.json()["worker"] != "ok" and not_ready.json()["database"] == "ok"
    assert httpx.get(f"{serve.base}/healthz").status_code == 200  # liveness is the API's alone

    waiting = submit(0.01)  # submitted while the new worker boots (or not even started): it waits
    assert serve.wait_ready().json()["worker"] == "ok"
    new = serve.worker()
    assert new is not None and new.pid != old.pid
    done = ("succeeded", "failed", "cancelled")
    assert wait_job(waiting, done) == "succeeded"
    assert wait_job(lost, done) == "succeeded"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_stopping_serve_takes_every_child_down(serve, sig):
    serve.wait_ready()
    worker = serve.worker()
    assert worker is not None, "no worker under serve:\n" + serve.output()
    tree = [serve.ps, *serve.wait_pool(worker)]
    assert len(tree) >= 3  # serve, the worker, its pool child

    os.kill(serve.proc.pid, sig)
    rc = serve.proc.wait(timeout=60)
    deadline = time.monotonic() + 15  # kill -9 of serve: the kernel's parent-death signal acts at once
    while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{signal.Signals(sig).name} to serve left alive: {[(p.pid, p.cmdline()) for p in left]}"
    if sig != signal.SIGKILL:
        assert rc == 0, serve.output()


def test_api_readyz_claims_nothing_about_workers(tmp_path):
    """`lathe api` owns no worker: its /readyz must not say one is up (or down)."""
    from fastapi.testclient import TestClient

    from app.cli import run_migrations
    from app.main import create_app
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path / "d", reaper_interval_s=0)
    settings.ensure_dirs()
    run_migrations(settings)
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 200 and "worker" not in r.json()


def test_backoff_doubles_while_the_worker_keeps_dying(tmp_path, caplog):
    from app.supervisor import WorkerSupervisor

    sup = WorkerSupervisor([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path / "ready")
    with caplog.at_level("WARNING", logger="lathe.serve"):
        sup.start()
        deadline = time.monotonic() + 30
        while len(caplog.records) < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert sup.check().startswith("restarting in")
        sup.stop()
    assert [r.getMessage() for r in caplog.records[:3]] == [
        f"lathe worker exit status 3; restarting it in {d} s" for d in (1, 2, 4)]
    assert not sup.is_alive() and sup.check() == "stopped"


def test_stop_kills_a_worker_that_ignores_sigterm(tmp_path):
    """The warm shutdown is bounded: after the grace, SIGKILL for the worker's whole group."""
    from app.supervisor import WorkerSupervisor

    stubborn = ("import os, signal, sys, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "os.fork() or time.sleep(600); pathlib.Path(sys.argv[-1]).touch(); time.sleep(600)")
    sup = WorkerSupervisor([sys.executable, "-c", stubborn], dict(os.environ), tmp_path / "ready")
    sup.start()
    deadline = time.monotonic() + 30
    while sup.check() != "ok":
        assert time.monotonic() < deadline, sup.check()
        time.sleep(0.05)
    tree = [psutil.Process(sup._proc.pid), *psutil.Process(sup._proc.pid).children(recursive=True)]
    assert len(tree) == 2
    sup.stop(grace_s=1)
    assert not [p for p in tree if alive(p)]
    assert not sup.is_alive() and sup.check() == "stopped"
