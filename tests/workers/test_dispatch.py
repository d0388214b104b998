"""Which job a worker runs next, and what it does with a job it cannot load.

Every test queues its jobs while no worker runs, then starts a real `lathe worker` (concurrency
1 unless said), so the whole queue is in the broker before dispatch begins. The API's own reaper
is kept out of the way (a long interval): the tests call ``reap`` themselves when it matters.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import update

from app.db import make_engine, make_sessionmaker, transaction
from app.engine import pipeline as plan
from app.jobs.reaper import reap
from app.queue import make_celery
from app.records import JobRecord, ModelRecord
from app.store import open_store
from tests.conftest import deploy
from tests.support.procs import Worker

QUICK = {"batch_sizes": [1], "warmup": 1, "min_runs": 3, "min_seconds": 0.01, "max_seconds": 0.5}
SLOW = {"batch_sizes": [1], "warmup": 1, "min_runs": 3, "min_seconds": 2, "max_seconds": 2, "max_runs": 100000}


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def idle(request, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"dispatch-{request.param}")
    with deploy(request.param, data_dir, LATHE_REAPER_INTERVAL_S="3600", LATHE_HEARTBEAT_INTERVAL_S="0.5") as d:
        d.data_dir = data_dir
        d.sessions = make_sessionmaker(make_engine(d.settings.sqlalchemy_url))
        yield d


@pytest.fixture
def workers(idle):
    started: list[Worker] = []

    def start(queues: str = "cpu,gpu", **env: str) -> Worker:
        w = Worker({**idle.env, **env}, idle.data_dir / "workers.log", queues=queues)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _model(api, folder, seed: int) -> str:
    """A tiny MatMul whose weights (so its bytes, so its blob) are this seed's own."""
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    path = folder / f"m{seed}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = api.post("/v1/models", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job(api, model_id: str, params: dict, device: str = "cpu") -> str:
    r = api.post("/v1/jobs", json={"model_id": model_id, "technique": "benchmark", "params": params, "device": device})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _reap_now(idle) -> dict[str, int]:
    """One reaper round that treats every queued job as overdue for a broker check."""
    return reap(idle.sessions, make_celery(idle.settings), idle.settings.model_copy(update={"redispatch_after_s": 0}))


def _started(job: dict) -> datetime:
    return datetime.fromisoformat(job["started_at"])


def test_a_job_that_cannot_be_loaded_fails_on_first_pickup(idle, workers, tmp_path):
    api = idle.new_client()
    kept, lost = _model(api, tmp_path, 1), _model(api, tmp_path, 2)
    retired_field, retired_technique, bad_pipeline, newer = (_job(api, kept, QUICK) for _ in range(4))
    missing_file = _job(api, lost, QUICK)
    # What an upgrade can leave behind: params a newer version refuses, a technique that is gone;
    # and a downgrade: params stored by a newer release, at a params version this one can't read.
    with transaction(idle.sessions) as s:
        for job_id, values in {retired_field: {"params": {**QUICK, "retired_option": True}},
                               retired_technique: {"technique": "quantize.retired"},
                               bad_pipeline: {"technique": "pipeline", "params": {"steps": "all of them"}},
                               newer: {"params": {**QUICK, plan.VERSION: 99}}}.items():
            s.execute(update(JobRecord).where(JobRecord.id == job_id).values(**values))
        uri = s.get(ModelRecord, lost).uri
    open_store(idle.settings).local_path(uri).unlink()  # the store lost the model's file

    workers()
    expected = {retired_field: "invalid_stored_params", retired_technique: "invalid_stored_params",
                bad_pipeline: "invalid_stored_params", newer: "invalid_stored_params",
                missing_file: "artifact_missing"}
    for job_id, error_type in expected.items():
        job = api.wait_job(job_id, timeout=30)
        assert job["status"] == "failed" and job["error"]["type"] == error_type, job
        assert job["attempts"] == 1, job
        assert str(idle.settings.resolved_data_dir) not in job["error"]["detail"], job
    assert "retired_option" in api.get(f"/v1/jobs/{retired_field}").json()["error"]["detail"]
    assert lost in api.get(f"/v1/jobs/{missing_file}").json()["error"]["detail"]
    assert "version 99" in api.get(f"/v1/jobs/{newer}").json()["error"]["detail"]
    # Over for good: the reaper has nothing to send again, and nothing runs twice.
    assert _reap_now(idle) == {"requeued": 0, "failed": 0, "redispatched": 0}
    assert all(api.get(f"/v1/jobs/{j}").json()["attempts"] == 1 for j in expected)


def test_tenants_take_turns(idle, workers, tmp_path):
    """One worker, one job at a time: A queues 5 (cancels one), then B queues 1. B's job runs
    second, not after all of A's; the cancelled job never runs and costs nobody a turn."""
    a, b = idle.new_client(), idle.new_client()
    model_a, model_b = _model(a, tmp_path, 3), _model(b, tmp_path, 4)
    a_jobs = [_job(a, model_a, QUICK) for _ in range(5)]
    assert a.post(f"/v1/jobs/{a_jobs.pop(1)}/cancel").json()["status"] == "cancelled"
    b_job = _job(b, model_b, QUICK)

    workers()
    done = {j: a.wait_job(j, timeout=60) for j in a_jobs} | {b_job: b.wait_job(b_job, timeout=60)}
    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in done.values()), done
    order = sorted(done, key=lambda j: _started(done[j]))
    assert order == [a_jobs[0], b_job, *a_jobs[1:]], [done[j]["started_at"] for j in order]


def test_a_message_is_a_slot_on_its_own_queue(idle, workers, tmp_path):
    """The message a job was sent with may run another job of the same queue (the fairer one),
    never one of another queue; the reaper counts messages, so a queued job whose own message
    ran someone else's job is not re-sent while another message waits for it."""
    c, a, b = idle.new_client(), idle.new_client(), idle.new_client()
    gpu_job = _job(c, _model(c, tmp_path, 5), QUICK, device="gpu")  # oldest, fairest, but not on cpu
    model_a = _model(a, tmp_path, 6)
    a1, a2 = _job(a, model_a, SLOW), _job(a, model_a, SLOW)
    b1 = _job(b, _model(b, tmp_path, 7), SLOW)

    workers(queues="cpu")
    b.wait_job(b1, timeout=60, until=("running", "succeeded", "failed"))
    assert a.get(f"/v1/jobs/{a1}").json()["status"] == "succeeded"
    assert a.get(f"/v1/jobs/{a2}").json()["status"] == "queued"  # its message is running b1
    assert _reap_now(idle)["redispatched"] == 0  # b1's message still waits, and will run a2
    for api, job_id in ((a, a2), (b, b1)):
        job = api.wait_job(job_id, timeout=60)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    gpu = c.get(f"/v1/jobs/{gpu_job}").json()
    assert gpu["status"] == "queued" and gpu["started_at"] is None, gpu
    assert c.post(f"/v1/jobs/{gpu_job}/cancel").json()["status"] == "cancelled"


def test_parallel_claims_run_each_job_once(idle, workers, tmp_path):
    """Two workers of two slots each claim concurrently: every job runs once, none is lost."""
    a, b = idle.new_client(), idle.new_client()
    model_a, model_b = _model(a, tmp_path, 8), _model(b, tmp_path, 9)
    jobs = [(a, _job(a, model_a, QUICK)) for _ in range(6)] + [(b, _job(b, model_b, QUICK)) for _ in range(3)]
    workers(LATHE_WORKER_CONCURRENCY="2")
    workers(LATHE_WORKER_CONCURRENCY="2")
    for api, job_id in jobs:
        job = api.wait_job(job_id, timeout=90)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert _reap_now(idle) == {"requeued": 0, "failed": 0, "redispatched": 0}
