"""torch.export archives: checked statically in the API (no torch there), never unpickled."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def clean_pt2(cnn_pt2):
    return cnn_pt2[0]


def _with_member(clean: bytes, name: str, data: bytes) -> bytes:
    """The clean archive plus one more member: what an attacker would ship."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(clean)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(name, data)
    return buf.getvalue()


def test_clean_pt2_is_accepted(api, clean_pt2):
    r = api.post("/v1/models", files={"file": ("cnn.pt2", clean_pt2.read_bytes())})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "pt2" and body["parameter_count"] == 4 * 9 + 4 + 144 * 10 + 10
    assert body["meta"]["pickles_checked"] >= 1
    d = api.get(f"/v1/models/{body['id']}/file")
    assert d.content == clean_pt2.read_bytes() and 'filename="cnn.pt2"' in d.headers["content-disposition"]
    # An ONNX child is queued on upload, so every ONNX technique applies to the program.
    job = api.wait_job(body["meta"]["conversion_job_id"], timeout=180)
    assert job["status"] == "succeeded" and job["technique"] == "convert.onnx", job
    child = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert child["format"] == "onnx" and child["parent_id"] == body["id"]
    assert child["inputs"][0]["shape"][1:] == [1, 8, 8] and child["outputs"][0]["shape"][-1] == 10


@pytest.mark.parametrize("where", ["cnn/data/sample_inputs/evil.pkl", "cnn/data/weights/weight_99"])
def test_pt2_with_payload_is_refused_and_never_runs(api, clean_pt2, tmp_path, where):
    marker = tmp_path / "payload-ran"
    evil = _with_member(clean_pt2.read_bytes(), where, pickle.dumps(Payload(str(marker))))
    r = api.post("/v1/models", files={"file": ("evil.pt2", evil)})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "system" in r.json()["detail"]  # names the offending global
    assert not marker.exists()
    assert api.get("/v1/models").json()["items"] == []


def test_payload_hidden_in_a_nested_archive(api, clean_pt2, tmp_path):
    marker = tmp_path / "payload-ran"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Payload(str(marker)), protocol=4))
    evil = _with_member(clean_pt2.read_bytes(), "cnn/data/sample_inputs/model2.pt", inner.getvalue())
    r = api.post("/v1/models", files={"file": ("evil.pt2", evil)})
    assert r.status_code == 422 and "model2.pt/archive/data.pkl" in r.json()["detail"]
    assert not marker.exists()


def test_pt2_zip_bomb_is_refused(api, clean_pt2):
    bomb = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(clean_pt2.read_bytes())) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("cnn/data/weights/huge", b"\0" * (200 << 20))
    r = api.post("/v1/models", files={"file": ("bomb.pt2", bomb.getvalue())})
    assert r.status_code == 422 and "zip bomb" in r.json()["detail"]


def test_tensor_bytes_that_look_like_a_pickle_are_not_mistaken_for_one(tmp_path):
    """torch.save's raw storages (archive/data/<n>) are never unpickled by torch; their bytes
    are arbitrary and may start with the pickle magic."""
    from app.engine.pickle_scan import scan_archive

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1.0}, protocol=2))
        z.writestr("archive/data/0", b"\x80\xae" + bytes(62))  # a float tensor starting with -0.0-ish bytes
    path = tmp_path / "a.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/data/sample_inputs/model.pt", inner.getvalue())
    result = scan_archive(path)
    assert result.pickles == ["m/data/sample_inputs/model.pt/archive/data.pkl"]
