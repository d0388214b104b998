"""Every job command of ``lathe`` in a subprocess against a running service: exit codes, human
output, and ``--json`` parsed."""

from __future__ import annotations

import hashlib
import json

from tests.client.conftest import FAST, WAIT_S, cli


def ok(result) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_upload_submit_wait_download(service, key, mlp_onnx, digits_npz, tmp_path):
    model = json.loads(ok(cli(service, key, "models", "upload", str(mlp_onnx), "--name", "mlp", "--json")))
    assert model["name"] == "mlp" and model["sha256"] == hashlib.sha256(mlp_onnx.read_bytes()).hexdigest()
    human = ok(cli(service, key, "models", "upload", str(mlp_onnx)))
    assert human.startswith("model ") and "x float32['batch', 64]" in human and model["sha256"] in human

    dataset = json.loads(ok(cli(service, key, "datasets", "upload", str(digits_npz), "--json")))
    assert dataset["num_samples"] == 64
    assert "64 samples" in ok(cli(service, key, "datasets", "upload", str(digits_npz)))

    params = tmp_path / "params.json"
    params.write_text(json.dumps(FAST))
    out = tmp_path / "mlp.int8.onnx"
    job = json.loads(ok(cli(service, key, "jobs", "submit", model["id"], "quantize.dynamic", "--params", f"@{params}",
                            "--dataset", dataset["id"], "--wait", "--timeout", WAIT_S, "--download", str(out),
                            "--json")))
    assert job["status"] == "succeeded" and job["dataset_id"] == dataset["id"] and job["downloaded"] == str(out)
    downloaded = json.loads(ok(cli(service, key, "models", "download", job["output_model_id"],
                                   str(tmp_path / "again.onnx"), "--json")))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256((tmp_path / "again.onnx").read_bytes()).digest()
    assert downloaded["path"] == str(tmp_path / "again.onnx")

    report = json.loads(ok(cli(service, key, "jobs", "report", job["id"], "--json")))
    assert report["technique"] == "quantize.dynamic"
    assert "quantize.dynamic report of job" in ok(cli(service, key, "jobs", "report", job["id"]))
    page = tmp_path / "report.html"
    assert "wrote" in ok(cli(service, key, "jobs", "report", job["id"], "--html", str(page)))
    assert page.read_text().lstrip().lower().startswith("<!doctype html")

    # Without --wait: the queued job; then `jobs wait` follows it, in words.
    queued = json.loads(ok(cli(service, key, "jobs", "submit", model["id"], "benchmark", "--params",
                               json.dumps(FAST), "--json")))
    assert queued["status"] in ("queued", "running")
    waited = ok(cli(service, key, "jobs", "wait", queued["id"], "--timeout", WAIT_S))
    assert f"job {queued['id']} succeeded" in waited


def test_failed_job_and_refusals_exit_non_zero(service, key, mlp_onnx):
    model = json.loads(ok(cli(service, key, "models", "upload", str(mlp_onnx), "--json")))
    # Every quantizable node excluded: the job runs and fails.
    nothing = json.dumps({**FAST, "exclude_op_types": ["Gemm"], "op_types": ["MatMul"]})
    failed = cli(service, key, "jobs", "submit", model["id"], "quantize.dynamic", "--params", nothing, "--wait",
                 "--timeout", WAIT_S)
    assert failed.returncode == 1, failed.stderr + failed.stdout
    assert "failed:" in failed.stdout and "nothing to quantize" in failed.stdout
    job_id = failed.stderr.split()[1]  # "job <id> queued: ..."
    as_json = cli(service, key, "jobs", "wait", job_id, "--json", "--timeout", WAIT_S)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["status"] == "failed"

    refused = cli(service, key, "jobs", "submit", model["id"], "quantize.dynamic", "--params", '{"weight_type": "int3"}')
    assert refused.returncode == 3 and "422" in refused.stderr and "weight_type" in refused.stderr
    missing = cli(service, key, "jobs", "wait", "0" * 32, "--json")
    assert missing.returncode == 3
    assert json.loads(missing.stderr)["error"]["type"] == "urn:lathe:problem:not_found"
    unauthorized = cli(service, "lk_wrong", "techniques")
    assert unauthorized.returncode == 3 and "401" in unauthorized.stderr
    usage = cli(service, key, "jobs", "submit", model["id"], "benchmark", "--params", "{not json")
    assert usage.returncode == 2 and "not JSON" in usage.stderr


def test_techniques_and_cancel(service, key, mlp_onnx):
    techniques = json.loads(ok(cli(service, key, "techniques", "--json")))
    assert {"quantize.dynamic", "benchmark"} <= {t["name"] for t in techniques}
    human = ok(cli(service, key, "techniques"))
    assert any(line.startswith("quantize.static") and "dataset" in line for line in human.splitlines())

    model = json.loads(ok(cli(service, key, "models", "upload", str(mlp_onnx), "--json")))
    long = json.dumps({"batch_sizes": [512], "min_seconds": 30, "max_seconds": 30, "min_runs": 5, "max_runs": 100000})
    job = json.loads(ok(cli(service, key, "jobs", "submit", model["id"], "benchmark", "--params", long, "--json")))
    assert ok(cli(service, key, "jobs", "cancel", job["id"])).strip() == f"job {job['id']} cancelled"
    again = cli(service, key, "jobs", "cancel", job["id"], "--json")
    assert again.returncode == 3 and json.loads(again.stderr)["error"]["status"] == 409
    waited = cli(service, key, "jobs", "wait", job["id"], "--json", "--timeout", WAIT_S)
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"


def test_url_and_key_flags(service, key):
    flags = ["--url", service.url, "--key", key, "--json"]
    result = cli(service, "lk_ignored", "techniques", *flags)
    assert result.returncode == 0 and json.loads(result.stdout)
