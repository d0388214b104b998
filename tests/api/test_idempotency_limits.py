"""Idempotency-Key on every POST that creates, and the request limits, on both backends."""

from __future__ import annotations

import io

import numpy as np
import pytest


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((4, 64), np.float32))
    return buf.getvalue()


def test_idempotent_uploads_and_jobs(deployment, mlp_onnx):
    api = deployment.new_client()
    key = {"Idempotency-Key": "upload-1"}
    a = api.post("/v1/models", files={"file": ("m.onnx", mlp_onnx.read_bytes())}, headers=key)
    b = api.post("/v1/models", files={"file": ("m.onnx", mlp_onnx.read_bytes())}, headers=key)
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json() and b.headers["idempotent-replayed"] == "true"
    assert len(api.get("/v1/models").json()["items"]) == 1

    d1 = api.post("/v1/datasets", files={"file": ("d.npz", _npz())}, headers=key)  # same key, other route
    d2 = api.post("/v1/datasets", files={"file": ("d.npz", _npz())}, headers=key)
    assert d1.status_code == 201 and d1.json()["id"] == d2.json()["id"]
    assert len(api.get("/v1/datasets").json()["items"]) == 1

    body = {"model_id": a.json()["id"], "technique": "benchmark", "params": {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}}
    j1 = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "job-1"})
    j2 = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "job-1"})
    assert j1.status_code == j2.status_code == 202
    assert j1.json()["id"] == j2.json()["id"] and j2.headers["location"] == j1.headers["location"]
    j3 = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "job-2"})
    assert j3.json()["id"] != j1.json()["id"]
    assert len(api.get("/v1/jobs").json()["items"]) == 2

    other = deployment.new_client()  # keys are per tenant: the same key elsewhere is a new request
    o = other.post("/v1/models", files={"file": ("m.onnx", mlp_onnx.read_bytes())}, headers=key)
    assert o.status_code == 201 and o.json()["id"] != a.json()["id"]


def test_json_body_limit(api):
    r = api.post("/v1/jobs", content=b'{"model_id": "' + b"x" * (2 * 1024 * 1024) + b'"}',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("params,field", [
    ({"batch_sizes": [10**9]}, "batch_sizes"),
    ({"batch_sizes": [-1]}, "batch_sizes"),
    ({"threads": [0]}, "threads"),
    ({"min_runs": 10**9}, "min_runs"),
    ({"max_seconds": 1e9}, "max_seconds"),
    ({"dims": {"seq": 10**12}}, "dims"),
    ({"surprise": 1}, "surprise"),
])
def test_absurd_params_are_422(api, mlp_onnx, params, field):
    model = api.post("/v1/models", files={"file": ("m.onnx", mlp_onnx.read_bytes())}).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "benchmark", "params": params})
    assert r.status_code == 422 and field in r.json()["detail"]
    assert api.get("/v1/jobs").json()["items"] == []


def test_names_with_path_separators_are_only_names(api, mlp_onnx, deployment):
    r = api.post("/v1/models", files={"file": ("../../etc/evil.onnx", mlp_onnx.read_bytes())}, data={"name": "../x/../../y"})
    # A display name, kept as sent (files are stored by hash); the download's file name has no separator.
    assert r.status_code == 201 and r.json()["name"] == "../x/../../y"
    assert not (deployment.settings.resolved_data_dir.parent / "y").exists()
    disposition = api.get(f"/v1/models/{r.json()['id']}/file").headers["content-disposition"]
    assert "/" not in disposition and ".._x_.._.._y.onnx" in disposition, disposition
