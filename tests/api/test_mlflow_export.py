"""export.mlflow end to end: a real Lathe (API + `lathe worker`, PostgreSQL + Redis) logs to a
real `mlflow server` (tests.support.mlflow_server), and what MLflow holds is read back through
MLflow's own REST API.

The worker runs with an MLFLOW_TRACKING_TOKEN in its environment (the server, without auth,
ignores it): it must never show in a report, a job's error or the worker's log.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.engine.base import Context, Source
from app.engine.catalog import get
from app.engine.errors import AddressRefused
from app.engine.reports import ExportMlflowReport, parse
from tests.conftest import _start_worker, _stop, deploy
from tests.support.mlflow_server import MlflowServer
from tests.support.procs import free_port

TOKEN = f"lathe-test-token-{uuid.uuid4().hex}"
QUICK = {"batch_sizes": [1, 4], "min_runs": 1, "min_seconds": 0}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lathe(tmp_path_factory):
    """Lathe whose worker may reach the test server on 127.0.0.1 and holds a token."""
    data_dir = tmp_path_factory.mktemp("lathe-mlflow")
    with deploy("postgres", data_dir, LATHE_EXPORT_ALLOW_PRIVATE="true", MLFLOW_TRACKING_TOKEN=TOKEN,
                LATHE_LOG_LEVEL="debug") as d:
        worker = _start_worker(d.env, data_dir / "worker.log")
        try:
            yield d, data_dir / "worker.log"
        finally:
            _stop(worker)


@pytest.fixture
def api(lathe):
    return lathe[0].new_client()


def upload(api, path):
    r = api.post("/v1/models", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def submit(api, body):
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["id"], timeout=300)
    return job


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


def test_a_quantized_model_is_logged_and_registered(api, mlflow, lathe, mlp_onnx):
    model = upload(api, mlp_onnx)
    quantized = submit(api, {"model_id": model["id"], "technique": "quantize.dynamic", "params": QUICK})
    assert quantized["status"] == "succeeded", quantized
    name = f"mlp-int8-{uuid.uuid4().hex[:8]}"
    job = submit(api, {"model_id": quantized["output_model_id"], "technique": "export.mlflow", "params": {
        "tracking_uri": mlflow.url, "experiment": "lathe-tests", "registered_model_name": name,
        "run_name": "int8", "tags": {"team": "vision"}}})
    assert job["status"] == "succeeded", job
    assert job["output_model_id"] is None  # an exporter produces no model
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert isinstance(parse(report), ExportMlflowReport)  # its model describes it (tests/engine/test_reports.py)
    assert report["technique"] == "export.mlflow" and report["registered_model_name"] == name
    assert report["model_version"] == "1" and report["source"] == {"technique": "quantize.dynamic",
                                                                     "job_id": quantized["id"]}
    assert report["run_url"] == f"{mlflow.url}/#/experiments/{report['experiment_id']}/runs/{report['run_id']}"

    run = mlflow.get("runs/get", run_id=report["run_id"])["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "int8"
    assert run["info"]["experiment_id"] == report["experiment_id"]
    assert mlflow.get("experiments/get", experiment_id=report["experiment_id"])["experiment"]["name"] == "lathe-tests"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["batch_sizes"] == "[1, 4]" and params["min_runs"] == "1" and params["per_channel"] == "false"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    source_report = api.get(f"/v1/jobs/{quantized['id']}/report").json()
    by_batch = {p["batch_size"]: p for p in source_report["comparison"]}
    for batch in (1, 4):
        assert metrics[f"latency_p50_ms.bs{batch}"] == pytest.approx(by_batch[batch]["result_p50_ms"])
        assert metrics[f"items_per_s.bs{batch}"] == pytest.approx(batch * 1000 / by_batch[batch]["result_p50_ms"])
        assert metrics[f"speedup.bs{batch}"] == pytest.approx(by_batch[batch]["speedup"])
    assert metrics["size_bytes"] == source_report["result"]["size_bytes"]
    assert metrics["size_ratio"] == pytest.approx(source_report["size_ratio"])
    assert metrics["fidelity.logits.cosine_mean"] == pytest.approx(
        source_report["fidelity"]["outputs"]["logits"]["cosine_mean"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["team"] == "vision" and tags["lathe.job_id"] == quantized["id"]
    assert tags["lathe.model_id"] == quantized["output_model_id"]

    root = run["info"]["artifact_uri"]
    listed = {f["path"] for f in mlflow.get("artifacts/list", run_id=report["run_id"])["files"]}
    assert {"report.json", "report.html", "model"} <= listed
    assert json.loads(mlflow.artifact(root, "report.json")) == source_report
    page = mlflow.artifact(root, "report.html").decode()
    assert page.startswith("<!doctype html") and quantized["id"] in page and "quantize.dynamic" in page

    version = mlflow.get("model-versions/get", name=name, version="1")["model_version"]
    assert version["run_id"] == report["run_id"] and version["status"] == "READY"
    onnx_bytes = mlflow.artifact(version["source"], "model.onnx")
    output = api.get(f"/v1/models/{quantized['output_model_id']}/file").content
    assert sha256(onnx_bytes) == sha256(output) == report["model_sha256"]
    assert b"loader_module: mlflow.onnx" in mlflow.artifact(version["source"], "MLmodel")

    # A second export registers version 2 of the same model.
    again = submit(api, {"model_id": quantized["output_model_id"], "technique": "export.mlflow",
                         "params": {"tracking_uri": mlflow.url, "experiment": "lathe-tests",
                                    "registered_model_name": name}})
    assert again["status"] == "succeeded", again
    assert api.get(f"/v1/jobs/{again['id']}/report").json()["model_version"] == "2"
    assert_no_token(json.dumps(report), api.get(f"/v1/jobs/{job['id']}").text, lathe[1].read_text())


def test_as_the_last_step_of_a_pipeline(api, mlflow, lathe, mlp_onnx):
    model = upload(api, mlp_onnx)
    name = f"mlp-pipeline-{uuid.uuid4().hex[:8]}"
    job = submit(api, {"model_id": model["id"], "steps": [
        {"technique": "quantize.dynamic", "params": {**QUICK, "per_channel": True}},
        {"technique": "export.mlflow", "params": {"tracking_uri": mlflow.url, "registered_model_name": name}}]})
    assert job["status"] == "succeeded", job
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    quantize, export = report["steps"]
    assert export["output_model_id"] is None and job["output_model_id"] == quantize["output_model_id"]
    exported = export["report"]
    assert exported["source"] == {"technique": "quantize.dynamic", "job_id": None}
    run = mlflow.get("runs/get", run_id=exported["run_id"])["run"]
    assert mlflow.get("experiments/get", experiment_id=exported["experiment_id"])["experiment"]["name"] == "lathe"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["per_channel"] == "true"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["size_ratio"] == pytest.approx(quantize["report"]["size_ratio"])
    assert json.loads(mlflow.artifact(run["info"]["artifact_uri"], "report.json")) == quantize["report"]
    assert mlflow.artifact(run["info"]["artifact_uri"], "report.html").startswith(b"<!doctype html")
    version = mlflow.get("model-versions/get", name=name, version=exported["model_version"])["model_version"]
    output = api.get(f"/v1/models/{quantize['output_model_id']}/file").content
    assert sha256(mlflow.artifact(version["source"], "model.onnx")) == sha256(output)


def test_without_a_registered_name_only_the_run_is_logged(api, mlflow, mlp_onnx):
    model = upload(api, mlp_onnx)  # an upload: no job produced it, so no params, metrics or report
    job = submit(api, {"model_id": model["id"], "technique": "export.mlflow", "params": {"tracking_uri": mlflow.url}})
    assert job["status"] == "succeeded", job
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["model_version"] is None and report["source"] is None and report["notes"]
    assert report["artifacts"] == ["model/MLmodel", "model/model.onnx"]
    assert mlflow.get("runs/get", run_id=report["run_id"])["run"]["info"]["status"] == "FINISHED"


def test_an_unreachable_server_fails_the_job_with_its_cause(api, lathe, mlp_onnx):
    model = upload(api, mlp_onnx)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job = submit(api, {"model_id": model["id"], "technique": "export.mlflow", "params": {"tracking_uri": url}})
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "export_unreachable"
    assert url in job["error"]["detail"] and "could not be reached" in job["error"]["detail"]
    assert "Traceback" not in job["error"]["detail"]
    assert_no_token(json.dumps(job), lathe[1].read_text())


def test_a_4xx_answer_is_a_rejection_with_its_cause(api, mlflow, mlp_onnx):
    """A URL that is not the server's root: MLflow answers 404 to every API path under it."""
    model = upload(api, mlp_onnx)
    job = submit(api, {"model_id": model["id"], "technique": "export.mlflow",
                       "params": {"tracking_uri": f"{mlflow.url}/not-the-root"}})
    assert job["status"] == "failed" and job["error"]["type"] == "export_rejected", job
    assert "404" in job["error"]["detail"] and "root of an MLflow tracking server" in job["error"]["detail"]


@pytest.fixture
def echoing_server():
    """A server that refuses every request with a 401 whose message echoes the Authorization
    header it got, as a careless proxy might."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"error_code": "UNAUTHENTICATED",
                               "message": f"bad credentials: {self.headers.get('Authorization')}"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_token_is_sent_and_never_shown(api, lathe, mlp_onnx, echoing_server):
    model = upload(api, mlp_onnx)
    job = submit(api, {"model_id": model["id"], "technique": "export.mlflow",
                       "params": {"tracking_uri": echoing_server}})
    assert job["status"] == "failed" and job["error"]["type"] == "export_rejected", job
    detail = job["error"]["detail"]
    assert "401 UNAUTHENTICATED: bad credentials: Bearer <redacted>" in detail and "MLFLOW_TRACKING_TOKEN" in detail
    assert job["id"] in lathe[1].read_text()  # the worker logged this job (at debug level)...
    assert_no_token(json.dumps(job), lathe[1].read_text())  # ...and never the token


@pytest.mark.parametrize("url", ["ftp://mlflow.example.com", "http://user:secret@mlflow.example.com",
                                 "mlflow.example.com", "http://mlflow.example.com/?x=1"])
def test_bad_tracking_uris_are_refused_at_submission(api, mlp_onnx, url):
    model = upload(api, mlp_onnx)
    r = api.post("/v1/jobs", json={"model_id": model["id"], "technique": "export.mlflow", "params": {"tracking_uri": url}})
    assert r.status_code == 422, r.text
    assert "tracking_uri" in r.text and "secret" not in r.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "http://localhost:5000", "http://10.1.2.3",
                                 "http://169.254.169.254/latest", "http://[::1]:5000"])
def test_private_addresses_are_refused_without_the_operator_setting(tmp_path, mlp_onnx, url):
    """The worker's check (ctx.allow_private_urls is LATHE_EXPORT_ALLOW_PRIVATE): refused
    before any connection, with the setting named."""
    ctx = Context(model_path=mlp_onnx, params={"tracking_uri": url}, workdir=tmp_path,
                  source=Source("quantize.dynamic", {}, None))
    with pytest.raises(AddressRefused) as refused:
        get("export.mlflow")().run(ctx)
    assert "LATHE_EXPORT_ALLOW_PRIVATE=true" in refused.value.detail
