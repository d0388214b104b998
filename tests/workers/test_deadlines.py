"""One job must not hold a worker for an hour (issue 9, section 2).

A few KB of nested ``If`` subgraphs sent onnxruntime's symbolic shape inference into a C call
that never returned: the job sat in stage "loading", the soft time limit (checked only at
progress callbacks) never fired, and the next tenant's job waited behind it. Each test here
runs its own ``lathe worker`` with small limits in its environment.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from app.cli import run_migrations
from app.main import create_app
from app.settings import Settings
from tests.conftest import Deployment, _start_worker, _stop
from tests.support.hostile_graphs import save_nested_if


@contextlib.contextmanager
def deployment(tmp_path: Path, *, worker: bool = True, **limits: str) -> Iterator[Deployment]:
    """Embedded Lathe (SQLite + filesystem broker) with extra LATHE_* settings."""
    data_dir = tmp_path / f"lathe-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update({"LATHE_DATA_DIR": str(data_dir), "LATHE_LOG_LEVEL": "warning"})
    env.update({f"LATHE_{k.upper()}": str(v) for k, v in limits.items()})
    settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in env.items() if k.startswith("LATHE_")})
    run_migrations(settings)
    proc = _start_worker(env, data_dir / "worker.log") if worker else None
    try:
        with TestClient(create_app(settings)) as client:
            yield Deployment("embedded", settings, env, client)
    finally:
        if proc is not None:
            _stop(proc)
            print((data_dir / "worker.log").read_text()[-3000:])


def _upload(api, path: Path) -> str:
    r = api.post("/v1/models", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _submit(api, model_id: str, technique: str = "quantize.fp16") -> str:
    r = api.post("/v1/jobs", json={"model_id": model_id, "technique": technique,
                                   "params": {"batch_sizes": [1], "max_seconds": 0.5}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _stopped_hostile_job(d: Deployment, tmp_path: Path, mlp_onnx: Path) -> dict:
    """The nested-If model to quantize.fp16 by one tenant, then another tenant's ordinary job
    queued behind it on the single worker: the hostile job must end within a minute (it is
    returned) and the waiting one then succeed."""
    attacker, victim = d.new_client(), d.new_client()
    hostile = _submit(attacker, _upload(attacker, save_nested_if(30, tmp_path / "nested.onnx")))
    waiting = _submit(victim, _upload(victim, mlp_onnx))
    started = time.monotonic()
    job = attacker.wait_job(hostile, timeout=90)
    assert job["status"] == "failed", job
    assert time.monotonic() - started < 60
    assert victim.wait_job(waiting, timeout=120)["status"] == "succeeded"
    return job


def test_a_native_step_past_its_deadline_fails_the_job_and_frees_the_worker(tmp_path, mlp_onnx):
    with deployment(tmp_path, native_step_timeout_s=10, job_soft_time_limit_s=60,
                    max_subgraph_depth=64) as d:
        error = _stopped_hostile_job(d, tmp_path, mlp_onnx)["error"]
    assert error["type"] == "step_timeout", error
    assert "shape inference" in error["detail"] and "10 s" in error["detail"]


def test_the_soft_time_limit_stops_a_job_that_never_reports_progress(tmp_path, mlp_onnx):
    """The native step may run longer than the job's soft limit: the limit must still act."""
    with deployment(tmp_path, native_step_timeout_s=600, job_soft_time_limit_s=5,
                    job_time_limit_s=600, cancel_grace_s=20, max_subgraph_depth=64) as d:
        error = _stopped_hostile_job(d, tmp_path, mlp_onnx)["error"]
    assert error["type"] == "timeout", error
    assert "was stopped" in error["detail"]  # by JobStopped in its thread, not by ending the process


def test_absurdly_nested_graphs_are_refused_at_upload(tmp_path):
    with deployment(tmp_path, worker=False) as d:  # default limits
        api = d.new_client()
        r = api.post("/v1/models", files={"file": ("nested.onnx",
                                                   save_nested_if(30, tmp_path / "n.onnx").read_bytes())})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "nested more than 8 deep" in r.json()["detail"]
        assert api.get("/v1/models").json()["items"] == []
        # An ordinary nesting depth is still fine.
        r = api.post("/v1/models", files={"file": ("n2.onnx", save_nested_if(2, tmp_path / "n2.onnx").read_bytes())})
        assert r.status_code == 201, r.text


def test_session_creation_runs_under_the_native_step_deadline(tmp_path, mlp_onnx):
    """Graph optimisation at session creation is native too: the job model's first session is
    created in a bounded child (a deadline no session creation can meet makes that visible)."""
    with deployment(tmp_path, native_step_timeout_s=0.001) as d:
        api = d.new_client()
        r = api.post("/v1/jobs", json={"model_id": _upload(api, mlp_onnx), "technique": "benchmark",
                                       "params": {"batch_sizes": [1]}})
        assert r.status_code == 202, r.text
        job = api.wait_job(r.json()["id"], timeout=60)
    assert job["status"] == "failed" and job["error"]["type"] == "step_timeout", job
    assert "onnxruntime session creation" in job["error"]["detail"]
