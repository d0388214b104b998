"""Refused uploads get a clear 4xx problem+json and leave nothing on disk or in the database."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def nothing_left(api, deployment):
    """Yields; then asserts the store and this tenant's rows are as they were."""
    root = deployment.settings.artifact_root
    before = _files(root)
    yield
    assert _files(root) == before
    assert api.get("/v1/models").json()["items"] == []
    assert api.get("/v1/datasets").json()["items"] == []


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lathe-pwned",))


def _onnx_external(tmp_path) -> bytes:
    # A weight whose bytes "live" in another file, at a path that escapes the model's folder.
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": "../../etc/passwd", "offset": "0", "length": "64"}.items():
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph).SerializeToString()


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": [1.0]}))
    return buf.getvalue()


CASES = {
    "pickle": (lambda tmp: pickle.dumps(Payload()), 415, "pickle"),
    "torch-zip": (lambda tmp: _torch_zip(), 415, "pickle"),
    "random": (lambda tmp: np.random.default_rng(0).bytes(4096)[1:], 415, "Accepted formats"),
    "empty": (lambda tmp: b"", 415, "empty"),
    "fake-onnx": (lambda tmp: b"\x08\x07" + b"\xff" * 100, 422, "ONNX"),
    "external-data": (_onnx_external, 422, "external"),
    "truncated-onnx": (lambda tmp: _truncated_onnx(), 422, "ONNX"),
}


def _truncated_onnx() -> bytes:
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    whole = helper.make_model(graph).SerializeToString()
    return whole[: len(whole) // 2]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_upload(api, nothing_left, tmp_path, case):
    make, status, words = CASES[case]
    r = api.post("/v1/models", files={"file": ("m.onnx", make(tmp_path))})
    assert r.status_code == status, r.text
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert body["status"] == status and words.lower() in body["detail"].lower()
    assert not os.path.exists("/tmp/lathe-pwned")


def test_model_over_size_limit(api, nothing_left, deployment):
    too_big = b"\x08" + b"\0" * (deployment.settings.max_model_bytes + 1)
    r = api.post("/v1/models", files={"file": ("big.onnx", too_big)})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


def test_missing_file_field(api, nothing_left):
    r = api.post("/v1/models", data={"name": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "file"


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


BAD_DATASETS = {
    "object-array": (lambda: _npz(x=np.array([{"a": 1}, None], dtype=object)), 422),
    "strings": (lambda: _npz(x=np.array(["a", "b"])), 422),
    "mismatched": (lambda: _npz(x=np.ones((3, 2)), labels=np.ones(4)), 422),
    "no-samples": (lambda: _npz(x=np.ones((0, 2))), 422),
    "scalar": (lambda: _npz(x=np.float32(1)), 422),
    "not-npz": (lambda: b"hello", 415),
    "pickle": (lambda: pickle.dumps(Payload()), 415),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_upload(api, nothing_left, case):
    make, status = BAD_DATASETS[case]
    r = api.post("/v1/datasets", files={"file": ("d.npz", make())})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert not os.path.exists("/tmp/lathe-pwned")


def test_dataset_zip_bomb(api, nothing_left, deployment):
    """A header declaring a huge array is refused from the header alone."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1024)})
        z.writestr("x.npy", header.getvalue() + b"\0" * 1000)
    r = api.post("/v1/datasets", files={"file": ("bomb.npz", buf.getvalue())})
    assert r.status_code == 422 and "unpack" in r.json()["detail"]
