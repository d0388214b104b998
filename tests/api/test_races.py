"""Races between requests, done for real: threads sending parallel requests over HTTP to a real
`lathe api` (two uvicorn processes), on SQLite and on PostgreSQL. No worker runs: jobs stay
queued, which is what the job cap counts."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import helper, numpy_helper, TensorProto

from app.db import make_engine, make_sessionmaker, transaction
from app.settings import Settings
from app.tenants.service import create_key
from tests.support.deploy import deployment

PROBLEM = "application/problem+json"
QUICK_JOB = {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}


class Service:
    def __init__(self, base_url: str, env: dict[str, str]) -> None:
        self.base_url = base_url
        self.settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in env.items() if k.startswith("LATHE_")})

    def tenant(self) -> httpx.Client:
        """A client for a fresh tenant."""
        engine = make_engine(self.settings.sqlalchemy_url)
        with transaction(make_sessionmaker(engine)) as s:
            key = create_key(s, f"race-{uuid.uuid4().hex[:12]}")
        engine.dispose()
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the API processes' log (tests.support.deploy writes it), for failure messages."""
        log = self.settings.resolved_data_dir / "api.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else "(no api.log)"

    def blobs(self) -> list[Path]:
        """Every file in the artifact folder, staging included."""
        return sorted(p for p in self.settings.artifact_root.rglob("*") if p.is_file())


@pytest.fixture(scope="module", params=["embedded", "production"])
def service(request, tmp_path_factory):
    with deployment(request.param, tmp_path_factory.mktemp(f"races-{request.param}"), workers=0,
                    api_processes=2) as (client, env):
        yield Service(str(client.base_url), env)


def parallel(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls at once, one thread each, released together by a barrier."""
    barrier = threading.Barrier(len(calls))
    results: list[httpx.Response | BaseException] = [None] * len(calls)  # type: ignore[list-item]

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def tiny_onnx(seed: int) -> bytes:
    """A valid ONNX model whose bytes depend on the seed: y = x + c."""
    c = numpy_helper.from_array(np.random.default_rng(seed).standard_normal(4).astype(np.float32), "c")
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def upload(client: httpx.Client, data: bytes, key: str | None = None, name: str = "m.onnx") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/models", files={"file": (name, data)}, headers=headers)


def test_delete_racing_an_upload_of_the_same_bytes_loses_nothing(service):
    """Blobs are shared by content: A deleting its copy while B uploads the same bytes must never
    take B's file away."""
    a, b = service.tenant(), service.tenant()
    lost = []
    for round in range(30):  # on the unguarded code about one round in five lost a file
        data = tiny_onnx(round)
        first = upload(a, data)
        assert first.status_code == 201, first.text
        deleted, *uploads = parallel([lambda: a.delete(f"/v1/models/{first.json()['id']}"), *[lambda: upload(b, data)] * 3])
        assert [r.status_code for r in uploads] == [201] * 3, [r.text for r in uploads]
        mine = [m for m in b.get("/v1/models", params={"limit": 200}).json()["items"] if m["sha256"] == first.json()["sha256"]]
        assert len(mine) == 3
        for m in mine:
            r = b.get(f"/v1/models/{m['id']}/file")
            if r.status_code != 200 or r.content != data:
                lost.append((round, r.status_code, r.text[:80]))
        assert deleted.status_code == 204
    assert not lost, f"{len(lost)} uploads lost their file: {lost[:3]}"


def test_job_cap_holds_under_parallel_requests(service):
    c = service.tenant()
    model = upload(c, tiny_onnx(1000)).json()["id"]
    cap = service.settings.max_active_jobs_per_tenant
    job = lambda: c.post("/v1/jobs", json={"model_id": model, "technique": "benchmark", "params": QUICK_JOB})  # noqa: E731
    answers = parallel([job] * (2 * cap))
    codes = Counter(r.status_code for r in answers)
    assert codes == {202: cap, 429: cap}, f"{codes}\n{service.log_tail()}"
    assert all(r.headers["content-type"] == PROBLEM and r.headers["retry-after"] for r in answers if r.status_code == 429)
    assert len(c.get("/v1/jobs", params={"limit": 200}).json()["items"]) == cap


def test_refused_parallel_uploads_with_one_key_leave_nothing(service):
    c = service.tenant()
    before = service.blobs()
    files = [tiny_onnx(2000 + i) for i in range(6)]
    answers = parallel([lambda d=d: upload(c, d, key="same-key") for d in files])
    codes = Counter(r.status_code for r in answers)
    assert codes[201] == 1 and codes[409] + codes[422] == 5, codes
    assert all(r.headers["content-type"] == PROBLEM for r in answers if r.status_code != 201)
    winner = next(r.json() for r in answers if r.status_code == 201)
    assert [m["id"] for m in c.get("/v1/models").json()["items"]] == [winner["id"]]
    added = [p for p in service.blobs() if p not in before]
    assert [p.name for p in added] == [winner["sha256"]], added


def test_idempotency_key_reused_with_another_request_is_422(service):
    c = service.tenant()
    model = upload(c, tiny_onnx(3000), key="upload-1")
    assert model.status_code == 201
    again = upload(c, tiny_onnx(3000), key="upload-1")
    assert again.status_code == 201 and again.json() == model.json() and again.headers["idempotent-replayed"] == "true"
    other = upload(c, tiny_onnx(3001), key="upload-1")
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM, other.text
    renamed = upload(c, tiny_onnx(3000), key="upload-1", name="other-name.onnx")
    assert renamed.status_code == 422, renamed.text
    assert len(c.get("/v1/models").json()["items"]) == 1

    body = {"model_id": model.json()["id"], "technique": "benchmark", "params": QUICK_JOB}
    first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "job-1"})
    assert first.status_code == 202
    same = c.post("/v1/jobs", json=dict(reversed(body.items())), headers={"Idempotency-Key": "job-1"})
    assert same.status_code == 202 and same.json()["id"] == first.json()["id"]
    changed = c.post("/v1/jobs", json={**body, "params": {**QUICK_JOB, "min_runs": 2}}, headers={"Idempotency-Key": "job-1"})
    assert changed.status_code == 422 and changed.headers["content-type"] == PROBLEM, changed.text
    assert len(c.get("/v1/jobs").json()["items"]) == 1


def test_replay_of_a_deleted_upload_does_not_claim_it_exists(service):
    c = service.tenant()
    data = tiny_onnx(4000)
    model = upload(c, data, key="upload-gone").json()
    assert c.delete(f"/v1/models/{model['id']}").status_code == 204
    replay = upload(c, data, key="upload-gone")
    assert replay.status_code == 410 and replay.headers["content-type"] == PROBLEM, replay.text
    assert model["id"] in replay.json()["detail"]
    assert c.get("/v1/models").json()["items"] == []
    assert upload(c, data, key="upload-new").status_code == 201
