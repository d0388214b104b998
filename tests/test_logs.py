"""LATHE_LOG_FORMAT=json, for real: an API process (uvicorn) and a worker process (Celery) write
only JSON lines; a request's lines carry its X-Request-ID (sent back to the client) and the
tenant; a job's lines carry its job_id, technique and tenant."""

from __future__ import annotations

import json

from tests.api.test_service import upload
from tests.support.deploy import deployment


def lines(path):
    text = path.read_text()
    assert text.strip(), f"{path.name} is empty"
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON line in {path.name}: {line[:300]!r}") from None
    return parsed


def test_every_line_is_json_with_its_context(tmp_path, mlp_onnx):
    data = tmp_path / "data"
    with deployment("production", data, LATHE_LOG_FORMAT="json", LATHE_LOG_LEVEL="info") as (client, _):
        model = upload(client, mlp_onnx).json()
        r = client.post("/v1/jobs", headers={"X-Request-ID": "req-from-client-42"}, json={
            "model_id": model["id"], "technique": "benchmark",
            "params": {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}})
        assert r.headers["X-Request-ID"] == "req-from-client-42"
        job = r.json()
        assert client.get("/v1/models").headers["X-Request-ID"]  # one is made when the client sends none
        bogus = client.get("/v1/models", headers={"X-Request-ID": "bad id with spaces & {json}"})
        assert bogus.headers["X-Request-ID"] != "bad id with spaces & {json}"
        while client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()["status"] not in ("succeeded", "failed"):
            pass
    api, worker = lines(data / "api.log"), lines(data / "worker-0.log")
    for line in api + worker:
        assert {"time", "level", "logger", "message"} <= set(line), line
    access = [x for x in api if x.get("request_id") == "req-from-client-42"]
    assert access and all(x["tenant"] == "bench" for x in access), access
    assert any(x["logger"] == "uvicorn.access" and "POST /v1/jobs" in x["message"] for x in access), access
    assert any(x["logger"].startswith("uvicorn") and "request_id" not in x for x in api)  # startup lines too
    ran = [x for x in worker if x.get("job_id") == job["id"]]
    assert ran and {x["technique"] for x in ran} == {"benchmark"} and all(x.get("tenant") for x in ran), ran
    assert any(x["logger"].startswith("celery") for x in worker)  # Celery's own lines are JSON too
