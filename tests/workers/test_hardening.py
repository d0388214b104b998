"""Failures done for real to real processes: kill -9 a worker mid-job, Redis restarted empty,
the database cut away under the API, limits hit. PostgreSQL (behind a TCP proxy we can cut)
and a private redis-server of our own, so nothing else on the machine is disturbed."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.cli import run_migrations
from app.db import make_engine, make_sessionmaker, transaction, utcnow
from app.jobs.reaper import reap
from app.main import create_app
from app.queue import make_celery
from app.records import JobRecord
from app.settings import Settings
from tests.support.deploy import scratch_pg_database
from tests.conftest import Deployment
from tests.support.procs import PrivateRedis, TcpProxy, Worker

FAST = {"LATHE_HEARTBEAT_INTERVAL_S": "0.5", "LATHE_HEARTBEAT_TIMEOUT_S": "4", "LATHE_REAPER_INTERVAL_S": "1",
        "LATHE_REDISPATCH_AFTER_S": "2", "LATHE_CANCEL_GRACE_S": "3", "LATHE_MAX_ACTIVE_JOBS_PER_TENANT": "4",
        "LATHE_LOG_LEVEL": "warning"}
SLOW_JOB = {"batch_sizes": [256], "min_seconds": 5, "max_seconds": 5, "min_runs": 5, "max_runs": 100000}
QUICK_JOB = {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hard")
    redis = PrivateRedis(data_dir)
    redis.start()
    proxy = TcpProxy(5432)
    proxy.start()
    with scratch_pg_database() as direct_url:
        url = direct_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
        env.update(FAST, LATHE_DATA_DIR=str(data_dir), LATHE_DATABASE_URL=url, LATHE_BROKER_URL=redis.url)
        settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in env.items() if k.startswith("LATHE_")})
        run_migrations(settings)
        with TestClient(create_app(settings)) as client:
            d = Deployment("hard", settings, env, client)
            d.redis, d.proxy, d.data_dir = redis, proxy, data_dir
            yield d
        proxy.stop()
    redis.kill()


@pytest.fixture
def workers(hard):
    started: list[Worker] = []

    def start(**overrides: str) -> Worker:
        w = Worker({**hard.env, **overrides}, hard.data_dir / "workers.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _wide_relu(folder):
    """Relu over [batch, n], n symbolic: params choose how much memory and time a run takes."""
    path = folder / "wide.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _upload(api, path) -> str:
    r = api.post("/v1/models", files={"file": ("m.onnx", path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job(api, model_id: str, params: dict) -> str:
    r = api.post("/v1/jobs", json={"model_id": model_id, "technique": "benchmark", "params": params})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_worker_killed_mid_job_completes_on_a_new_worker(hard, workers, mlp_onnx):
    api = hard.new_client()
    first = workers()
    job_id = _job(api, _upload(api, mlp_onnx), SLOW_JOB)
    api.wait_job(job_id, until=("running",), timeout=60)
    time.sleep(1)
    first.kill9()
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # nobody knows yet
    workers()
    job = api.wait_job(job_id, timeout=90)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    # Idempotent: one report, no output duplicated (benchmark makes none), the job counted once.
    assert len([j for j in api.get("/v1/jobs").json()["items"] if j["id"] == job_id]) == 1


def test_reaper_fails_a_job_out_of_attempts_and_requeues_the_rest(hard):
    sessions = make_sessionmaker(make_engine(hard.settings.sqlalchemy_url))
    api = hard.new_client()
    model_id = None
    old = utcnow() - timedelta(minutes=5)
    with transaction(sessions) as s:
        from app.records import ApiKeyRecord
        from app.tenants.service import hash_key

        tenant_id = s.query(ApiKeyRecord).filter_by(key_hash=hash_key(api.key)).one().tenant_id
        rows = [JobRecord(tenant_id=tenant_id, model_id=model_id, technique="benchmark", params={}, device="cpu",
                          status="running", attempts=attempts, started_at=old, heartbeat_at=old)
                for attempts in (1, hard.settings.max_job_attempts)]
        s.add_all(rows)
        s.flush()
        requeue_id, exhausted_id = rows[0].id, rows[1].id
    counts = reap(sessions, make_celery(hard.settings), hard.settings)
    assert counts["requeued"] >= 1 and counts["failed"] >= 1
    exhausted = api.get(f"/v1/jobs/{exhausted_id}").json()
    assert exhausted["status"] == "failed" and exhausted["error"]["type"] == "worker_lost"
    requeued = api.get(f"/v1/jobs/{requeue_id}").json()
    assert requeued["status"] in ("queued", "failed")  # failed if a worker already took it (no model)


def test_redis_restarted_empty_loses_no_job(hard, workers, mlp_onnx):
    api = hard.new_client()
    model = _upload(api, mlp_onnx)
    jobs = [_job(api, model, QUICK_JOB) for _ in range(3)]  # no worker yet: all wait in Redis
    hard.redis.kill()
    hard.redis.start()  # nothing on disk: every message is gone
    workers()
    for job_id in jobs:
        assert api.wait_job(job_id, timeout=60)["status"] == "succeeded"


def test_database_outage_is_503_then_recovers(hard, workers, mlp_onnx):
    api = hard.new_client()
    model = _upload(api, mlp_onnx)
    workers()
    job_id = _job(api, model, {**SLOW_JOB, "min_seconds": 3, "max_seconds": 3})
    api.wait_job(job_id, until=("running",), timeout=60)
    hard.proxy.stop()
    try:
        r = api.get("/v1/models")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"] == "5"
        time.sleep(3)  # the job finishes its measurement while the database is away
    finally:
        hard.proxy.start()
    assert api.get("/v1/models").status_code == 200  # recovered without a restart
    job = api.wait_job(job_id, timeout=60)
    assert job["status"] == "succeeded", job  # the worker retried its writes; the result was kept


def test_cancel_a_job_stuck_in_native_code_kills_it(hard, workers, tmp_path):
    """A job that never reaches a progress check is ended by its guard after the grace period."""
    api = hard.new_client()
    # One huge run per timing loop iteration: ~seconds inside onnxruntime between checks.
    path = _wide_relu(tmp_path)
    workers()
    job_id = _job(api, _upload(api, path), {"batch_sizes": [4096], "dims": {"n": 20000}, "warmup": 50,
                                          "min_runs": 1000, "max_runs": 1000, "min_seconds": 60, "max_seconds": 60})
    api.wait_job(job_id, until=("running",), timeout=60)
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    quick = _job(api, _upload(api, path), {"batch_sizes": [1], "dims": {"n": 8}, "min_runs": 1, "min_seconds": 0})
    assert api.wait_job(quick, timeout=60)["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert not (hard.data_dir / "work" / job_id).exists()


def test_time_and_memory_limits(hard, workers, tmp_path):
    api = hard.new_client()
    model = _upload(api, _wide_relu(tmp_path))
    timed = workers(LATHE_JOB_SOFT_TIME_LIMIT_S="3", LATHE_JOB_TIME_LIMIT_S="5")
    slow = _job(api, model, {"batch_sizes": [1024], "dims": {"n": 1024}, "min_seconds": 30, "max_seconds": 30,
                             "min_runs": 5, "max_runs": 100000})
    job = api.wait_job(slow, timeout=60)
    assert job["status"] == "failed" and job["error"]["type"] == "timeout", job
    timed.stop()
    workers(LATHE_JOB_MEMORY_LIMIT_BYTES=str(1500 * 2**20))
    # 4096 x 100000 float32 = 1.6 GB in, as much out: past the 1.5 GiB cap.
    big = _job(api, model, {"batch_sizes": [4096], "dims": {"n": 100000}, "min_runs": 1, "min_seconds": 0})
    job = api.wait_job(big, timeout=60)
    assert job["status"] == "failed" and job["error"]["type"] == "memory_limit", job
    assert "MiB" in job["error"]["detail"]


def test_tenant_job_cap_is_429(hard, mlp_onnx):
    api = hard.new_client()  # no worker running: jobs stay queued
    model = _upload(api, mlp_onnx)
    ids = [_job(api, model, QUICK_JOB) for _ in range(hard.settings.max_active_jobs_per_tenant)]
    r = api.post("/v1/jobs", json={"model_id": model, "technique": "benchmark", "params": QUICK_JOB})
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.headers["content-type"] == "application/problem+json"
    for job_id in ids:
        assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert api.post("/v1/jobs", json={"model_id": model, "technique": "benchmark", "params": QUICK_JOB}).status_code == 202
    api.post(f"/v1/jobs/{api.get('/v1/jobs').json()['items'][0]['id']}/cancel")
