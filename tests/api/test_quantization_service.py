"""Quantization techniques and evaluate, end to end through the HTTP API and a real worker,
on both backends. Tiny trained models; small measurement budgets."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.engine.quant_models import outlier_mlp

FAST = {"batch_sizes": [1, 4], "warmup": 1, "min_runs": 3, "min_seconds": 0.01,
        "max_seconds": 1.0, "fidelity_samples": 128}


@pytest.fixture(scope="session")
def outlier_onnx(tmp_path_factory):
    return outlier_mlp(tmp_path_factory.mktemp("outlier") / "outlier.onnx")


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits_x):
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=digits_x[:300], labels=load_digits().target[:300])
    return path


def upload(api, path):
    r = api.post("/v1/models", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def upload_dataset(api, path):
    r = api.post("/v1/datasets", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(api, model_id, technique, params, dataset_id=None):
    body = {"model_id": model_id, "technique": technique, "params": params}
    if dataset_id:
        body["dataset_id"] = dataset_id
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return api.wait_job(r.json()["id"])


def run_file(api, model_id, tmp_path, x):
    path = tmp_path / f"{model_id}.onnx"
    path.write_bytes(api.get(f"/v1/models/{model_id}/file").content)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("technique,params", [
    ("quantize.static", {"calibration": "percentile", "samples": 64}),
    ("quantize.fp16", {}),
    ("quantize.int4", {"block_size": 16}),
    ("quantize.dynamic", {"exclude_op_types": ["Gemm"], "op_types": ["MatMul"]}),
])
def test_quantize_techniques(api, mlp_onnx, digits_npz, digits_x, tmp_path, technique, params):
    model = upload(api, mlp_onnx)
    dataset = upload_dataset(api, digits_npz)
    job = submit(api, model["id"], technique, {**FAST, **params}, dataset)
    if technique == "quantize.dynamic":  # every candidate excluded: a clear refusal
        assert job["status"] == "failed" and job["error"]["type"] == "unsupported_model"
        assert "nothing to quantize" in job["error"]["detail"]
        assert "Traceback" not in job["error"]["detail"]
        return
    assert job["status"] == "succeeded", job
    out = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert out["parent_id"] == model["id"] and out["job_id"] == job["id"]
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["technique"] == technique and report["schema_version"] == 1
    assert report["parent"]["size_bytes"] == model["size_bytes"]
    assert report["result"]["size_bytes"] == out["size_bytes"] < model["size_bytes"]
    assert [c["batch_size"] for c in report["comparison"]] == [1, 4]
    assert report["accuracy"]["task"] == "classification"
    v = report["verdict"]
    assert v["within_tolerance"] == (report["accuracy"]["drop"] <= 1.0)
    kinds = [c["speedup_ci"]["verdict"] for c in report["comparison"]]
    assert v["faster"] == (True if set(kinds) == {"faster"} else False if "slower" in kinds else None)
    got = run_file(api, out["id"], tmp_path, digits_x[:128])
    ref = run_file(api, model["id"], tmp_path, digits_x[:128])
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9


def test_evaluate_matches_direct(api, mlp_onnx, digits_npz, digits_x, tmp_path):
    model = upload(api, mlp_onnx)
    dataset = upload_dataset(api, digits_npz)
    job = submit(api, model["id"], "quantize.int4", {**FAST, "block_size": 16})
    child = job["output_model_id"]
    job = submit(api, child, "evaluate", {"batch_size": 300}, dataset)
    assert job["status"] == "succeeded", job
    assert job["output_model_id"] is None
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    labels = np.load(digits_npz)["labels"]
    got = run_file(api, child, tmp_path, digits_x[:300])
    ref = run_file(api, model["id"], tmp_path, digits_x[:300])
    assert report["reference"]["source"] == "parent"
    assert report["accuracy"]["model"]["top1"] == pytest.approx((got.argmax(1) == labels).mean())
    assert report["accuracy"]["reference"]["top1"] == pytest.approx((ref.argmax(1) == labels).mean())
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    fid = report["fidelity"]["outputs"]["logits"]
    assert fid["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert fid["cosine_min"] == pytest.approx(cos.min(), abs=1e-5)
    assert fid["mean_abs_error"] == pytest.approx(np.abs(got - ref).mean(), rel=1e-3)
    # A reference named by id must belong to the tenant.
    r = api.post("/v1/jobs", json={"model_id": child, "technique": "evaluate", "dataset_id": dataset,
                                   "params": {"reference_model_id": "0" * 32}})
    assert r.status_code == 404


def test_auto_respects_tolerance(api, outlier_onnx, digits_npz, digits_x, tmp_path):
    path, sensitive = outlier_onnx
    model = upload(api, path)
    dataset = upload_dataset(api, digits_npz)
    full = submit(api, model["id"], "quantize.dynamic", FAST, dataset)
    x = digits_x[:300]
    ref = run_file(api, model["id"], tmp_path, x)

    def mean_cos(a):
        return ((a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))).mean()

    assert mean_cos(run_file(api, full["output_model_id"], tmp_path, x)) < 0.99
    job = submit(api, model["id"], "quantize.auto",
                 {**FAST, "min_cosine": 0.99, "modes": ["dynamic"]}, dataset)
    assert job["status"] == "succeeded", job
    assert mean_cos(run_file(api, job["output_model_id"], tmp_path, x)) >= 0.99
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["sensitivity"]["layers"][0]["layer"] == sensitive
    assert report["verdict"]["within_tolerance"] is True
    assert sum(c["chosen"] for c in report["candidates"]) == 1
    # Without a dataset the job is refused before it is queued.
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "quantize.auto", "params": {}})
    assert r.status_code == 422
