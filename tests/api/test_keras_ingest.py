"""Keras models in: .keras and full-model .h5 uploads are checked against an allow-list in the API
(no Keras there), converted to ONNX by an automatic convert.onnx job in a confined child, and the
ONNX child quantizes like any other. Hostile files are refused at upload, naming what was refused,
and their payloads never run."""

from __future__ import annotations

import pytest

from tests.support.keras_models import BENIGN, hostile_edits, hostile_files

UPLOADS = [f"{m}.{ext}" for m in BENIGN for ext in ("keras", "h5")]
HOSTILE = [*hostile_edits("x"), "Lambda bytecode (.keras)", "Lambda bytecode (.h5)", "extra zip member",
           "duplicate zip member"]


def test_keras_models_convert_and_quantize(api, deployment, keras_files):
    # .keras files on one deployment, .h5 on the other: both backends, each conversion run once.
    ext = "keras" if deployment.name == "embedded" else "h5"
    uploaded = {}
    for name in [u for u in UPLOADS if u.endswith(f".{ext}")]:
        r = api.post("/v1/models", files={"file": (name, keras_files[name].read_bytes())})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["format"] == "keras" and body["parameter_count"] > 0, body
        uploaded[name] = body
    for name, body in uploaded.items():
        d = api.get(f"/v1/models/{body['id']}/file")
        assert d.content == keras_files[name].read_bytes() and f'filename="{name}"' in d.headers["content-disposition"]
        job = api.wait_job(body["meta"]["conversion_job_id"], timeout=300)
        assert job["status"] == "succeeded" and job["technique"] == "convert.onnx", (name, job)
        report = api.get(f"/v1/jobs/{job['id']}/report").json()
        assert report["parent"]["format"] == name.rsplit(".", 1)[1] and report["keras"]
        assert report["verification"]["max_abs_error"] <= 1e-4 and report["symbolic_batch"], report
        assert report["sandbox"]["network_isolated"] and report["sandbox"]["limits"]["cpu_seconds"] > 0
        child = api.get(f"/v1/models/{job['output_model_id']}").json()
        assert child["format"] == "onnx" and child["parent_id"] == body["id"]
        assert child["name"] == f"{name.rsplit('.', 1)[0]}.convert.onnx.onnx"
        q = api.post("/v1/jobs", json={"model_id": child["id"], "technique": "quantize.dynamic",
                                       "params": {"min_seconds": 0.0, "max_seconds": 0.2, "batch_sizes": [1], "threads": [1],
                                                  "fidelity_samples": 8}})
        assert q.status_code == 202, q.text
        uploaded[name] = q.json()["id"]
    for name, job_id in uploaded.items():
        job = api.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded" and job["output_model_id"], (name, job)


@pytest.mark.parametrize("variant", HOSTILE)
def test_hostile_keras_is_refused_at_upload_and_never_runs(api, keras_files, tmp_path, variant):
    marker = tmp_path / "payload-ran"
    data, word = hostile_files(keras_files["cnn.keras"], keras_files, str(marker))[variant]
    r = api.post("/v1/models", files={"file": ("evil.keras", data)})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("invalid_model") and word in r.json()["detail"], r.json()
    assert api.get("/v1/models").json()["items"] == [] and api.get("/v1/jobs").json()["items"] == []
    assert not marker.exists() and not keras_files["marker"].exists()


def test_weights_only_h5_and_savedmodel_are_refused_with_a_reason(api, tmp_path):
    import h5py

    from tests.support.keras_models import zipped

    weights = tmp_path / "weights.h5"
    with h5py.File(weights, "w") as h:
        h.create_dataset("dense/kernel", data=[[1.0, 2.0]])
    r = api.post("/v1/models", files={"file": ("weights.h5", weights.read_bytes())})
    assert r.status_code == 422 and "weights only" in r.json()["detail"], r.text
    saved = zipped([("m/saved_model.pb", b"\x08\x01"), ("m/variables/variables.index", b"")])
    r = api.post("/v1/models", files={"file": ("m.zip", saved)})
    assert r.status_code == 422 and "SavedModel" in r.json()["detail"], r.text
    assert api.get("/v1/models").json()["items"] == []
