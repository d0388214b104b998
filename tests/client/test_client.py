"""The Python client against a running service: the whole flow, errors, lists, cancel, pipelines."""

from __future__ import annotations

import asyncio
import hashlib

import onnxruntime as ort
import pytest

from lathe_client import (AsyncLathe, ConflictError, InvalidInputError, Job, Lathe, LatheError, NotFoundError,
                          Step, UnauthorizedError, ValidationError, WaitTimeoutError)
from tests.client.conftest import FAST, WAIT_S


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_whole_flow(lathe: Lathe, mlp_onnx, digits_npz, digits_x, tmp_path):
    model = lathe.models.upload(mlp_onnx, name="mlp")
    assert model.name == "mlp" and model.format == "onnx" and model.sha256 == sha256(mlp_onnx)
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", ["batch", 64], "float32")]
    data = lathe.datasets.upload(digits_npz)
    assert data.num_samples == 64 and data.arrays["x"].shape == [64, 64]

    job = lathe.jobs.submit(model.id, "quantize.dynamic", FAST, dataset_id=data.id)
    assert isinstance(job, Job) and job.status == "queued" and job.dataset_id == data.id
    seen: list[str] = []
    job = job.wait(timeout=float(WAIT_S), progress=False, on_update=lambda j: seen.append(j.status))
    assert job.status == "succeeded", job.error
    assert job.done and job.progress == 1.0 and seen[-1] == "succeeded"
    report = job.report()
    assert report["technique"] == "quantize.dynamic" and "verdict" in report
    assert "<html" in job.report_html().lower()

    out = lathe.models.download(job.output_model_id, tmp_path / "mlp.int8.onnx")
    record = lathe.models.get(job.output_model_id)
    assert out == tmp_path / "mlp.int8.onnx" and sha256(out) == record.sha256
    assert record.parent_id == model.id and record.job_id == job.id
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.int8.onnx"]  # no partial file left behind
    ref = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": digits_x[:32]})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": digits_x[:32]})[0]
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9
    # A folder as destination: the service's file name; the dataset comes back byte for byte.
    assert sha256(lathe.datasets.download(data, tmp_path)) == sha256(digits_npz)


def test_errors_are_one_class_per_problem_type(lathe: Lathe, service, mlp_onnx):
    with pytest.raises(NotFoundError) as missing:
        lathe.models.get("0" * 32)
    e = missing.value
    assert (e.status, e.type, e.title) == (404, "urn:lathe:problem:not_found", "Not found")
    assert isinstance(e, LatheError) and e.detail

    model = lathe.models.upload(mlp_onnx)
    with pytest.raises(InvalidInputError) as bad:
        lathe.jobs.submit(model, "quantize.dynamic", {"weight_type": "int3"})
    assert bad.value.status == 422 and bad.value.type == "urn:lathe:problem:invalid_input"
    assert "weight_type" in bad.value.detail
    assert bad.value.errors[0]["loc"][:3] == ["body", "params", "weight_type"]
    with pytest.raises(InvalidInputError, match="nope"):
        lathe.jobs.submit(model, "nope")
    with pytest.raises(ValidationError) as invalid:  # FastAPI's schema check: its own type, still a 422
        lathe.jobs.submit(model, "benchmark", device="tpu")
    assert invalid.value.type == "urn:lathe:problem:validation_error" and isinstance(invalid.value, InvalidInputError)
    with pytest.raises(NotFoundError):
        lathe.jobs.submit("0" * 32, "benchmark")

    with Lathe(service.url, api_key="lk_not-a-key") as stranger:
        with pytest.raises(UnauthorizedError) as denied:
            stranger.models.get(model.id)
    assert denied.value.status == 401


def test_lists_iterate_across_pages(lathe: Lathe, mlp_onnx):
    ids = [lathe.models.upload(mlp_onnx, name=f"m{i}").id for i in range(5)]
    assert [m.id for m in lathe.models.list(limit=2)] == ids[::-1]  # newest first, 3 requests
    pages = list(lathe.models.list(limit=2).pages())
    assert [len(p.items) for p in pages] == [2, 2, 1]
    assert pages[0].next_cursor and pages[-1].next_cursor is None
    assert [m.id for m in lathe.models.list(limit=2, cursor=pages[0].next_cursor)] == ids[::-1][2:]
    assert list(lathe.datasets.list()) == []


def test_cancel_and_wait_timeout(lathe: Lathe, mlp_onnx):
    model = lathe.models.upload(mlp_onnx)
    long = {"batch_sizes": [512], "min_seconds": 30, "max_seconds": 30, "min_runs": 5, "max_runs": 100000}
    job = lathe.jobs.submit(model, "benchmark", long)
    with pytest.raises(WaitTimeoutError) as timed_out:
        job.wait(timeout=0.5, progress=False)
    assert timed_out.value.job.id == job.id and not timed_out.value.job.done
    cancelled = job.cancel()
    assert cancelled.status == "cancelled"
    assert job.wait(timeout=60, progress=False).status == "cancelled"
    with pytest.raises(ConflictError) as again:
        cancelled.cancel()
    assert again.value.status == 409
    with pytest.raises(ConflictError):  # no report: it never ran to the end
        cancelled.report()
    assert [j.id for j in lathe.jobs.list(status="cancelled")] == [job.id]
    assert list(lathe.jobs.list(status="succeeded")) == []


def test_pipeline(lathe: Lathe, mlp_onnx):
    model = lathe.models.upload(mlp_onnx)
    job = lathe.jobs.submit(model, steps=[Step("quantize.dynamic", FAST), ("benchmark", FAST)])
    assert job.technique == "pipeline"
    assert [s.technique for s in job.steps] == ["quantize.dynamic", "benchmark"]
    job = job.wait(timeout=float(WAIT_S), progress=False)
    assert job.status == "succeeded", job.error
    report = job.report()
    assert [s["technique"] for s in report["steps"]] == ["quantize.dynamic", "benchmark"]
    with pytest.raises(ValueError):
        lathe.jobs.submit(model, "benchmark", steps=[Step("benchmark")])


def test_async_client(service, key, mlp_onnx, tmp_path):
    async def flow() -> None:
        async with AsyncLathe(service.url, api_key=key) as lathe:
            model = await lathe.models.upload(mlp_onnx, name="mlp")
            job = await lathe.jobs.submit(model.id, "quantize.dynamic", FAST)
            job = await job.wait(timeout=float(WAIT_S), progress=False)
            assert job.status == "succeeded", job.error
            assert (await job.report())["technique"] == "quantize.dynamic"
            out = await job.download(tmp_path / "q.onnx")
            assert sha256(out) == (await lathe.models.get(job.output_model_id)).sha256
            assert [m.id async for m in lathe.models.list(limit=1)] == [job.output_model_id, model.id]
            assert [j.id async for j in lathe.jobs.list()] == [job.id]
            with pytest.raises(NotFoundError):
                await lathe.jobs.get("0" * 32)
            assert "quantize.dynamic" in {t.name for t in await lathe.techniques.list()}

    asyncio.run(flow())


def test_environment_configures_the_client(service, key, monkeypatch):
    monkeypatch.setenv("LATHE_URL", service.url)
    monkeypatch.setenv("LATHE_API_KEY", key)
    with Lathe() as lathe:
        assert lathe.url == service.url
        assert "benchmark" in {t.name for t in lathe.techniques.list()}
