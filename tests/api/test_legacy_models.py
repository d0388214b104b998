"""An old model-zoo ONNX file (IR 3, initializers as graph inputs, weights from constant
subgraphs, ``gpu_0/data_0``) through the HTTP API and a real worker: the model record lists
only its real input, a dataset named after it is accepted, and quantize.dynamic and
prune.structured produce models that run with the parent's output shapes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.legacy import IMAGE, VARIANTS, legacy_feed, legacy_model

FAST = {"batch_sizes": [1, 2], "warmup": 1, "min_runs": 3, "min_seconds": 0.0,
        "max_seconds": 0.5}
VARIANT = "constant_weights"


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("legacy-api")
    name = VARIANTS[VARIANT][0]
    rng = np.random.default_rng(0)
    np.savez(d / "legacy.npz", **{name: rng.standard_normal((16, *IMAGE)).astype(np.float32),
                                  "labels": rng.integers(0, 5, 16)})
    return legacy_model(VARIANT, d), d / "legacy.npz"


def _outputs(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_legacy_model_quantizes_and_prunes(api, legacy_files, tmp_path):
    model_path, dataset_path = legacy_files
    r = api.post("/v1/models", files={"file": (model_path.name, model_path.read_bytes())})
    assert r.status_code == 201, r.text
    model = r.json()
    assert [i["name"] for i in model["inputs"]] == ["gpu_0/data_0"]  # no weights to feed
    r = api.post("/v1/datasets", files={"file": ("legacy.npz", dataset_path.read_bytes())})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]

    feed = legacy_feed(VARIANT, batch=3)
    want = [o.shape for o in _outputs(model_path, feed)]
    for technique in ("quantize.dynamic", "prune.structured"):
        r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": technique,
                                       "params": FAST, "dataset_id": dataset_id})
        assert r.status_code == 202, r.text
        job = api.wait_job(r.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job["error"]
        report = api.get(f"/v1/jobs/{job['id']}/report").json()
        assert report["normalization"]["ir_version"] == {"original": 3, "used": 4}
        assert report["normalization"]["folded"] == ["conv1_w_0"]
        out = tmp_path / f"{technique}.onnx"
        out.write_bytes(api.get(f"/v1/models/{job['output_model_id']}/file").content)
        assert [o.shape for o in _outputs(out, feed)] == want
