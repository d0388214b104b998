"""Torch techniques end to end through the HTTP API and a real worker, on both backends:
.pt2 → convert.onnx → an ONNX child; pruning and distillation on a tiny trained MLP."""

from __future__ import annotations

import uuid

import numpy as np
import onnxruntime as ort
import pytest

FAST = {"batch_sizes": [1, 8], "warmup": 1, "min_runs": 3, "min_seconds": 0.01, "max_seconds": 1.0}


@pytest.fixture(scope="session")
def digits_labelled(tmp_path_factory, digits_x):
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("torchdata") / "digits.npz"
    np.savez(path, x=digits_x[:400], labels=load_digits().target[:400])
    return path


@pytest.fixture(scope="session")
def pt2_file(cnn_pt2):
    import torch

    path, model = cnn_pt2
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    return path, x, model(torch.from_numpy(x)).detach().numpy()


def _upload(api, path, kind="models"):
    r = api.post(f"/v1/{kind}", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def _job(api, body):
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["id"], timeout=180)
    assert job["status"] == "succeeded", job.get("error")
    return job, api.get(f"/v1/jobs/{job['id']}/report").json()


def _run(api, model_id, tmp_path, feed):
    path = tmp_path / f"{model_id}.onnx"
    path.write_bytes(api.get(f"/v1/models/{model_id}/file").content)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0], path


def test_clean_pt2_is_converted_to_a_runnable_onnx_child(api, pt2_file, tmp_path):
    path, x, expected = pt2_file
    model = _upload(api, path)
    job, report = _job(api, {"model_id": model["id"], "technique": "convert.onnx", "params": {}})
    child = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert child["format"] == "onnx" and child["parent_id"] == model["id"]
    assert report["symbolic_batch"] and report["verification"]["output_shapes_match_program"]
    got, _ = _run(api, child["id"], tmp_path, x)
    assert got.shape == expected.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("technique,params", [
    ("prune.unstructured", {"sparsity": 0.6, "scope": "layer"}),
    ("prune.structured", {"ratio": 0.5, "fine_tune": {"epochs": 1, "lr": 0.001}}),
    ("distill", {"student": {"pruned_ratio": 0.5}, "epochs": 2, "lr": "auto", "processes": 2}),
])
def test_technique_end_to_end(api, mlp_onnx, digits_labelled, digits_x, tmp_path, technique, params):
    model = _upload(api, mlp_onnx)
    dataset = _upload(api, digits_labelled, "datasets")["id"]
    job, report = _job(api, {"model_id": model["id"], "technique": technique,
                             "params": {**params, **FAST}, "dataset_id": dataset})
    assert report["technique"] == technique and report["verification"]["output_shapes_match_parent"]
    got, path = _run(api, job["output_model_id"], tmp_path, digits_x[:7])
    assert got.shape == (7, 10)
    assert report["accuracy"]["model"]["top1"] > 0.5
    if technique == "prune.unstructured":
        assert report["verdict"]["faster"] is False
        assert report["result"]["zip_size_bytes"] < report["parent"]["zip_size_bytes"]
    else:
        assert path.stat().st_size < mlp_onnx.stat().st_size  # physically smaller
        assert report["result"]["parameter_count"] < report["parent"]["parameter_count"]
        assert report["training"]["epochs"]
    if technique == "distill":
        assert report["training"]["processes"] == 2 and report["training"]["ranks_identical"]
        assert report["training"]["lr_range_test"]["curve"]


def test_distill_checks_the_student_and_the_dataset(api, mlp_onnx, digits_labelled):
    model = _upload(api, mlp_onnx)
    dataset = _upload(api, digits_labelled, "datasets")["id"]
    foreign = {"model_id": model["id"], "technique": "distill", "dataset_id": dataset,
               "params": {"student": {"model_id": uuid.uuid4().hex}}}
    assert api.post("/v1/jobs", json=foreign).status_code == 404
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "distill", "params": {}})
    assert r.status_code == 422 and "needs a dataset" in r.text
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "prune.structured",
                                   "params": {"fine_tune": {"epochs": 1}}})
    job = api.wait_job(r.json()["id"], timeout=120)
    assert job["status"] == "failed" and "fine_tune needs the job's dataset" in job["error"]["detail"]
