"""End to end through the HTTP API and a real worker process, on both backends."""

from __future__ import annotations

import time
import uuid

import numpy as np
import onnx
import onnxruntime as ort
import pytest


def upload(api, path, name=None):
    with open(path, "rb") as f:
        return api.post("/v1/models", files={"file": (path.name, f, "application/octet-stream")},
                        data={"name": name} if name else None)


def test_upload_inspect_download(api, mlp_onnx):
    r = upload(api, mlp_onnx, "my-mlp")
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["name"] == "my-mlp" and m["format"] == "onnx"
    assert m["size_bytes"] == mlp_onnx.stat().st_size
    assert m["inputs"] == [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]
    assert m["outputs"][0]["shape"] == ["batch", 10]
    assert m["parameter_count"] == 64 * 128 + 128 + 128 * 10 + 10
    assert m["parent_id"] is None

    assert api.get(f"/v1/models/{m['id']}").json()["sha256"] == m["sha256"]
    d = api.get(f"/v1/models/{m['id']}/file")
    assert d.status_code == 200 and d.content == mlp_onnx.read_bytes()
    assert d.headers["etag"] == f'"{m["sha256"]}"'
    part = api.get(f"/v1/models/{m['id']}/file", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == mlp_onnx.read_bytes()[:10]
    assert api.get(f"/v1/models/{m['id']}/file", headers={"If-None-Match": d.headers["etag"]}).status_code == 304


def test_pagination(api, mlp_onnx):
    ids = [upload(api, mlp_onnx, f"m{i}").json()["id"] for i in range(3)]
    first = api.get("/v1/models", params={"limit": 2}).json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:2]
    second = api.get("/v1/models", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [m["id"] for m in second["items"]] == [ids[0]] and second["next_cursor"] is None


def test_quantize_dynamic_end_to_end(api, mlp_onnx, digits_x, tmp_path):
    model = upload(api, mlp_onnx).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "quantize.dynamic",
                                   "params": {"batch_sizes": [1, 8], "min_runs": 5, "min_seconds": 0.05}})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert api.get(r.headers["location"]).status_code == 200  # committed before the response
    job = api.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["started_at"] and job["finished_at"]

    out = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert out["parent_id"] == model["id"] and out["job_id"] == job["id"]
    assert out["size_bytes"] < model["size_bytes"]
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["technique"] == "quantize.dynamic" and "verdict" in report

    path = tmp_path / "q.onnx"
    path.write_bytes(api.get(f"/v1/models/{out['id']}/file").content)
    x = digits_x[:256]
    ref = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == ref.shape
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.97
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_benchmark_job(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                   "params": {"batch_sizes": [1, 4], "min_runs": 5, "min_seconds": 0.05}})
    job = api.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["output_model_id"] is None
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    points = {p["batch_size"]: p for p in report["results"]}
    assert set(points) == {1, 4}
    for p in points.values():
        assert 0 < p["p50_ms"] <= p["p99_ms"] and p["runs"] >= 5 and p["throughput_items_per_s"] > 0
    assert report["environment"]["onnxruntime"] == ort.__version__


def test_benchmark_with_dataset(api, mlp_onnx, tmp_path):
    model = upload(api, mlp_onnx).json()
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.ones((10, 64), np.float32), labels=np.arange(10))
    ds = api.post("/v1/datasets", files={"file": ("d.npz", npz.read_bytes())}).json()
    assert ds["num_samples"] == 10 and ds["arrays"]["x"] == {"shape": [10, 64], "dtype": "float32"}
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "dataset_id": ds["id"],
                                   "params": {"batch_sizes": [2], "min_runs": 3, "min_seconds": 0.01}})
    job = api.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job
    assert api.get(f"/v1/jobs/{job['id']}/report").json()["inputs"]["source"] == "dataset"


def test_job_validation(api, mlp_onnx, tmp_path):
    model = upload(api, mlp_onnx).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "nope"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": {"batch_sizes": [0]}})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"][:3] == ["body", "params", "batch_sizes"]
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "quantize.dynamic",
                                   "params": {"weight_type": "int3"}})
    assert r.status_code == 422 and "weight_type" in r.json()["detail"]
    r = api.post("/v1/jobs", json={"model_id": "0" * 32, "technique": "benchmark"})
    assert r.status_code == 404
    npz = tmp_path / "wrong.npz"
    np.savez(npz, other=np.ones((4, 64), np.float32))
    ds = api.post("/v1/datasets", files={"file": ("w.npz", npz.read_bytes())}).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "dataset_id": ds["id"]})
    assert r.status_code == 422 and "'x'" in r.json()["detail"]
    assert api.get("/v1/jobs").json()["items"] == []  # nothing was queued


def test_cancel_running_job(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    # One long measurement point (~20-30 s): cancellation must reach into it, not wait it out.
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                   "params": {"batch_sizes": [512], "min_seconds": 30, "max_seconds": 30,
                                              "min_runs": 5, "max_runs": 100000}})
    job_id = r.json()["id"]
    api.wait_job(job_id, until=("running",), timeout=60)
    time.sleep(1.5)  # well inside the timed loop
    c = api.post(f"/v1/jobs/{job_id}/cancel")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    cancelled_at = time.monotonic()
    # The worker notices within a second or so and moves on to the next job.
    r2 = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                    "params": {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}})
    assert api.wait_job(r2.json()["id"], timeout=30)["status"] == "succeeded"
    assert time.monotonic() - cancelled_at < 10
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["output_model_id"] is None
    assert api.get(f"/v1/jobs/{job_id}/report").status_code == 409


def test_cross_tenant_is_404(deployment, mlp_onnx, tmp_path):
    alice, bob = deployment.new_client(), deployment.new_client()
    model = upload(alice, mlp_onnx).json()
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.ones((3, 64), np.float32))
    ds = alice.post("/v1/datasets", files={"file": ("d.npz", npz.read_bytes())}).json()
    job = alice.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                       "params": {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}}).json()
    alice.wait_job(job["id"])
    for method, url in [("GET", f"/v1/models/{model['id']}"), ("GET", f"/v1/models/{model['id']}/file"),
                        ("DELETE", f"/v1/models/{model['id']}"), ("GET", f"/v1/datasets/{ds['id']}"),
                        ("GET", f"/v1/datasets/{ds['id']}/file"), ("DELETE", f"/v1/datasets/{ds['id']}"),
                        ("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/report"),
                        ("POST", f"/v1/jobs/{job['id']}/cancel")]:
        r = bob.request(method, url)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
    r = bob.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark"})
    assert r.status_code == 404
    assert bob.get("/v1/models").json()["items"] == [] and bob.get("/v1/jobs").json()["items"] == []
    assert alice.get(f"/v1/models/{model['id']}").status_code == 200


def test_auth_required(deployment):
    r = deployment.client.get("/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"] == "application/problem+json"
    r = deployment.client.get("/v1/models", headers={"Authorization": "Bearer lk_wrong"})
    assert r.status_code == 401


def test_delete_model(api, mlp_onnx, deployment, tmp_path):
    unique = onnx.load(mlp_onnx)
    unique.doc_string = uuid.uuid4().hex  # bytes no other test uploaded: this test owns the blob
    path = tmp_path / "unique.onnx"
    onnx.save(unique, path)
    a = upload(api, path).json()
    b = upload(api, path).json()  # same bytes: one blob, two records
    blob = deployment.settings.artifact_root / a["sha256"][:2] / a["sha256"]
    assert api.delete(f"/v1/models/{a['id']}").status_code == 204
    assert api.get(f"/v1/models/{a['id']}").status_code == 404
    assert blob.exists() and api.get(f"/v1/models/{b['id']}/file").status_code == 200
    assert api.delete(f"/v1/models/{b['id']}").status_code == 204
    assert not blob.exists()


def test_health(deployment):
    assert deployment.client.get("/healthz").json() == {"status": "ok"}
    r = deployment.client.get("/readyz")
    assert r.status_code == 200 and r.json()["database"] == "ok" and r.json()["broker"] == "ok"


def test_techniques_listed(api):
    items = {t["name"]: t for t in api.get("/v1/techniques").json()["items"]}
    assert {"benchmark", "quantize.dynamic"} <= set(items)
    q = items["quantize.dynamic"]
    assert q["produces_model"] and "per_channel" in q["params_schema"]["properties"]
    assert set(q["devices"]) == {"cpu", "gpu"}


@pytest.mark.parametrize("route", ["/v1/nothing", "/v1/models/x/y/z"])
def test_unknown_route_is_problem_json(deployment, route):
    r = deployment.client.get(route)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_pipeline_keeps_every_step(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    quick = {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}
    r = api.post("/v1/jobs", json={"model_id": model["id"], "steps": [
        {"technique": "quantize.dynamic", "params": {**quick, "per_channel": True}},
        {"technique": "benchmark", "params": quick}]})
    assert r.status_code == 202, r.text
    assert r.json()["technique"] == "pipeline" and len(r.json()["params"]["steps"]) == 2
    job = api.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert [s["technique"] for s in report["steps"]] == ["quantize.dynamic", "benchmark"]
    quantized = report["steps"][0]["output_model_id"]
    assert quantized == job["output_model_id"] and report["steps"][1]["output_model_id"] is None
    assert report["steps"][0]["report"]["technique"] == "quantize.dynamic"
    child = api.get(f"/v1/models/{quantized}").json()
    assert child["parent_id"] == model["id"] and child["job_id"] == job["id"]
    # The benchmark step measured the quantized model, not the original.
    assert report["steps"][1]["report"]["model"]["size_bytes"] == child["size_bytes"]


def test_pipeline_validation(api, mlp_onnx):
    model = upload(api, mlp_onnx).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "steps": [
        {"technique": "benchmark"}, {"technique": "quantize.dynamic"}]})
    assert r.status_code == 422 and "steps.0" in r.json()["detail"]
    r = api.post("/v1/jobs", json={"model_id": model["id"], "steps": [
        {"technique": "quantize.dynamic", "params": {"per_channel": "maybe"}}]})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][:4] == ["body", "steps", 0, "params"]
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark",
                                   "steps": [{"technique": "benchmark"}]})
    assert r.status_code == 422
    r = api.post("/v1/jobs", json={"model_id": model["id"]})
    assert r.status_code == 422


def test_lineage(deployment, mlp_onnx):
    api = deployment.new_client()
    model = upload(api, mlp_onnx).json()
    quick = {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}
    job = api.wait_job(api.post("/v1/jobs", json={"model_id": model["id"], "steps": [
        {"technique": "quantize.dynamic", "params": quick}, {"technique": "quantize.fp16", "params": quick}]}).json()["id"])
    assert job["status"] == "succeeded", job
    grandchild = job["output_model_id"]
    down = api.get(f"/v1/models/{model['id']}/lineage").json()
    assert down["ancestors"] == [] and len(down["descendants"]) == 1
    child = down["descendants"][0]
    assert child["job"]["technique"] == "pipeline" and child["children"][0]["id"] == grandchild
    up = api.get(f"/v1/models/{grandchild}/lineage").json()
    assert [a["id"] for a in up["ancestors"]] == [child["id"], model["id"]] and up["ancestors"][-1]["job"] is None
    assert deployment.new_client().get(f"/v1/models/{grandchild}/lineage").status_code == 404


def test_compare_through_the_api(deployment, mlp_onnx):
    api = deployment.new_client()
    a = upload(api, mlp_onnx).json()
    quick = {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}
    q = api.wait_job(api.post("/v1/jobs", json={"model_id": a["id"], "technique": "quantize.dynamic", "params": quick}).json()["id"])
    r = api.post("/v1/jobs", json={"model_id": a["id"], "technique": "compare",
                                   "params": {"model_ids": [q["output_model_id"]], "batch_sizes": [1, 8], "min_runs": 10,
                                              "min_seconds": 0.01, "max_seconds": 1}})
    job = api.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert [m["id"] for m in report["models"]] == [a["id"], q["output_model_id"]]
    assert all(p["ratios"][a["id"]] == 1.0 for p in report["points"])
    assert all(p["ratios"][q["output_model_id"]] > 0 for p in report["points"])
    # Another tenant's model can't be named in the params: 404 before anything is queued.
    other = deployment.new_client()
    mine = upload(other, mlp_onnx).json()
    r = other.post("/v1/jobs", json={"model_id": mine["id"], "technique": "compare", "params": {"model_ids": [a["id"]]}})
    assert r.status_code == 404 and other.get("/v1/jobs").json()["items"] == []
