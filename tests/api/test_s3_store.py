"""The S3 artifact store against a real S3 server (SeaweedFS, signed requests): uploads land in
the bucket by content, downloads stream from it (Range, If-None-Match), a job runs end to end on
it, deletes remove the object, and a wrong credential or bucket is a clear 503, never a 500."""

from __future__ import annotations

import hashlib
import os

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store import S3Store

from tests.api.test_service import upload


def _key(sha256: str) -> str:
    return f"deploy/{sha256[:2]}/{sha256}"


def test_upload_and_download_from_the_bucket(s3_deployment, s3_server, mlp_onnx):
    api = s3_deployment.new_client()
    m = upload(api, mlp_onnx, "s3-mlp").json()
    data = mlp_onnx.read_bytes()
    assert _key(m["sha256"]) in s3_server.keys("deploy/")
    stored = s3_server.client().get_object(Bucket=s3_server.bucket, Key=_key(m["sha256"]))["Body"].read()
    assert stored == data
    # Nothing of it in the local folder: only staging (empty) and the workers' cache.
    assert not list((s3_deployment.settings.artifact_root / m["sha256"][:2]).glob("*"))

    url = f"/v1/models/{m['id']}/file"
    whole = api.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"] == f'"{m["sha256"]}"' and whole.headers["content-length"] == str(len(data))

    part = api.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == data[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(data)}"
    tail = api.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    several = api.get(url, headers={"Range": "bytes=0-3, 200-203"})
    assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")
    assert data[:4] in several.content and data[200:204] in several.content

    assert api.get(url, headers={"If-None-Match": f'"{m["sha256"]}"'}).status_code == 304
    stale = api.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data
    bad = api.get(url, headers={"Range": f"bytes={len(data) + 5}-"})
    assert bad.status_code == 416 and bad.headers["content-type"] == "application/problem+json"
    assert bad.headers["content-range"] == f"bytes */{len(data)}"


def test_job_end_to_end_on_s3(s3_deployment, s3_server, mlp_onnx):
    api = s3_deployment.new_client()
    model = upload(api, mlp_onnx).json()
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "quantize.dynamic",
                                   "params": {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}})
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    out = api.get(f"/v1/models/{job['output_model_id']}").json()
    assert _key(out["sha256"]) in s3_server.keys("deploy/")  # the worker stored its output in the bucket
    body = api.get(f"/v1/models/{out['id']}/file").content
    assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["size_bytes"]
    # The worker read its input through its verified local cache.
    assert (s3_deployment.settings.artifact_root / model["sha256"][:2] / model["sha256"]).is_file()


def test_delete_removes_the_object(s3_deployment, s3_server, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # Content of its own: no other test's model shares this object.
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name=os.urandom(8).hex())], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    api = s3_deployment.new_client()
    m = upload(api, path).json()
    assert _key(m["sha256"]) in s3_server.keys("deploy/")
    assert api.delete(f"/v1/models/{m['id']}").status_code == 204
    assert _key(m["sha256"]) not in s3_server.keys("deploy/")


def _app_with(s3_deployment, monkeypatch, url: str, **aws: str) -> TestClient:
    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    settings = s3_deployment.settings.model_copy(update={"artifacts_url": url})
    return TestClient(create_app(settings))


def test_wrong_credentials_are_a_clear_503(s3_deployment, s3_server, mlp_onnx, monkeypatch):
    wrong = "wrong-" + s3_server.secret_key
    api = s3_deployment.new_client()
    with _app_with(s3_deployment, monkeypatch, f"s3://{s3_server.bucket}/deploy", AWS_SECRET_ACCESS_KEY=wrong) as bad:
        ready = bad.get("/readyz")
        assert ready.status_code == 503 and "access denied" in ready.json()["store"], ready.text
        api._client = bad
        r = upload(api, mlp_onnx, "denied")
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["type"] == "urn:lathe:problem:store_unavailable"
        assert "AWS_SECRET_ACCESS_KEY" in r.json()["detail"]  # names the setting to check...
        for text in (r.text, ready.text, bad.get("/metrics").text):  # ...never its value
            assert wrong not in text and s3_server.secret_key not in text


def test_missing_bucket_and_wrong_endpoint_say_so_in_readyz(s3_deployment, s3_server, monkeypatch):
    with _app_with(s3_deployment, monkeypatch, "s3://no-such-bucket-here") as app:
        ready = app.get("/readyz")
        assert ready.status_code == 503 and "bucket does not exist" in ready.json()["store"], ready.text
    with _app_with(s3_deployment, monkeypatch, f"s3://{s3_server.bucket}",
                   AWS_ENDPOINT_URL="http://127.0.0.1:9") as app:
        ready = app.get("/readyz")
        assert ready.status_code == 503 and "AWS_ENDPOINT_URL" in ready.json()["store"], ready.text
    assert s3_deployment.client.get("/readyz").json()["store"] == "ok"


def test_large_file_goes_multipart_and_round_trips(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    store = S3Store(f"s3://{s3_server.bucket}/multipart", tmp_path / "cache", multipart_threshold=5 * 1024 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 123))
    staged = store.stage_file(big)
    uri = store.put(staged)
    assert uri == store.uri(staged.sha256)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"multipart/{staged.sha256[:2]}/{staged.sha256}")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts: 5 + 5 + 2 MiB
    assert store.put(staged) == uri  # idempotent: HEAD finds it
    local = store.local_path(uri)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == staged.sha256
    assert local.parent.parent == tmp_path / "cache"
    store.delete(uri)
    with pytest.raises(FileNotFoundError):
        store.local_path(uri)
