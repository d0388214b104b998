from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from app.engine.catalog import get
from app.engine.errors import DatasetMismatch, TechniqueError, UnsupportedModel
from app.engine.measure.benchmark import Benchmark, BenchmarkParams

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
from tests.support import ROOT


def test_report_structure_and_numbers(models, make_ctx, fast):
    ctx = make_ctx(models["mlp"], BenchmarkParams(batch_sizes=[1, 4], threads=[1, 2], **fast))
    result = Benchmark().run(ctx)
    report = result.report
    assert result.output_path is None
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # plain JSON types only
    assert report["schema_version"] == 1 and report["technique"] == "benchmark"
    assert report["provider"] == "CPUExecutionProvider"
    assert report["model"]["parameter_count"] > 300_000
    assert report["model"]["size_bytes"] == models["mlp"].stat().st_size
    points = {(p["batch_size"], p["threads"]) for p in report["results"]}
    assert points == {(1, 1), (4, 1), (1, 2), (4, 2)} and len(report["results"]) == 4
    for p in report["results"]:
        assert 0 < p["min_ms"] <= p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert fast["min_runs"] <= p["runs"] <= fast["max_runs"]
        assert p["throughput_items_per_s"] > 0 and p["session_create_ms"] > 0
        # one definition of items/s: batch / p50 (p50 as reported is rounded)
        assert p["throughput_items_per_s"] == pytest.approx(p["batch_size"] / p["p50_ms"] * 1e3, rel=0.02)
        assert p["cpu_p50_ms"] > 0 and p["tail_outlier"] == (p["p99_ms"] > 5 * p["p50_ms"])
        assert p["input_shapes"] == {"x": [p["batch_size"], 128]}
    assert report["host_load"]["points"] == 4 and 0 <= report["host_load"]["others_cpu_percent"] <= 100
    memory = report["memory"]
    assert memory["rss_before_session_bytes"] > 0 and memory["rss_after_runs_bytes"] > 0
    assert memory["process_peak_rss_bytes"] >= memory["rss_before_session_bytes"] // 2
    env = report["environment"]
    assert env["logical_cores"] >= 1 and env["onnxruntime"] and env["cpu_model"]
    assert report["inputs"]["source"] == "generated"
    stages = [s for _, s in ctx.stages]
    assert stages[0] == "loading" and "benchmark bs=4 threads=2" in stages
    fractions = [f for f, _ in ctx.stages]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1


def test_token_model_dims(models, make_ctx, fast):
    params = BenchmarkParams(batch_sizes=[2], dims={"seq_len": 16}, **fast)
    report = Benchmark().run(make_ctx(models["tokens"], params)).report
    assert report["results"][0]["input_shapes"] == {"input_ids": [2, 16],
                                                    "attention_mask": [2, 16]}
    assert report["inputs"]["dims"] == {"seq_len": 16}


def test_odd_input_names(models, make_ctx, fast, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **{"input/ids:0": np.zeros((2, 8), np.float32)})
    for dataset in (None, path):
        ctx = make_ctx(models["odd_names"], BenchmarkParams(batch_sizes=[3], **fast), dataset)
        report = Benchmark().run(ctx).report
        assert report["results"][0]["input_shapes"] == {"input/ids:0": [3, 8]}


def test_unknown_dim_name_is_an_error(models, make_ctx, fast):
    params = BenchmarkParams(batch_sizes=[1], dims={"seqlen": 16}, **fast)
    with pytest.raises(TechniqueError, match="seq_len") as err:
        Benchmark().run(make_ctx(models["tokens"], params))
    assert err.value.type == "invalid_params"


def test_dataset_is_used(models, make_ctx, fast, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.ones((3, 5), np.int64), attention_mask=np.ones((3, 5), np.int64))
    params = BenchmarkParams(batch_sizes=[4], **fast)
    report = Benchmark().run(make_ctx(models["tokens"], params, dataset=path)).report
    assert report["inputs"]["source"] == "dataset" and report["inputs"]["dataset_samples"] == 3
    assert report["results"][0]["input_shapes"]["input_ids"] == [4, 5]


def test_dataset_mismatch(models, make_ctx, fast, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.ones((3, 5), np.int64))
    with pytest.raises(DatasetMismatch, match="attention_mask"):
        Benchmark().run(make_ctx(models["tokens"], BenchmarkParams(**fast), dataset=path))


def test_fixed_batch_model_skips_other_sizes(make_ctx, fast, tmp_path):
    import torch

    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(2, 4),), str(path),
                          input_names=["x"], dynamo=False)
    report = Benchmark().run(make_ctx(path, BenchmarkParams(batch_sizes=[1, 2], **fast))).report
    assert [p["batch_size"] for p in report["results"]] == [2]
    assert report["skipped"][0]["batch_size"] == 1
    with pytest.raises(UnsupportedModel, match="fixed first dimension of 2"):
        Benchmark().run(make_ctx(path, BenchmarkParams(batch_sizes=[1], **fast)))


def test_inference_failure_is_advice(models, make_ctx, fast):
    # Token ids beyond the 1000-row embedding table make Gather fail inside onnxruntime.
    params = BenchmarkParams(batch_sizes=[1], int_high=10**6, dims={"seq_len": 64}, **fast)
    with pytest.raises(TechniqueError, match="int_high") as err:
        Benchmark().run(make_ctx(models["tokens"], params))
    assert err.value.type == "inference_failed" and "\n" not in err.value.detail


def test_unloadable_model(make_ctx, fast, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.acme")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.acme", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(UnsupportedModel, match="cannot load") as err:
        Benchmark().run(make_ctx(tmp_path / "custom.onnx", BenchmarkParams(**fast)))
    assert "\n" not in err.value.detail and str(tmp_path) not in err.value.detail


def test_progress_exception_propagates(models, tmp_path, fast):
    from app.engine.base import Context

    class Cancelled(Exception):
        pass

    def progress(fraction, stage):
        if stage.startswith("benchmark"):
            raise Cancelled

    ctx = Context(models["mlp"], BenchmarkParams(**fast), tmp_path, progress=progress)
    with pytest.raises(Cancelled):
        Benchmark().run(ctx)


def test_gpu_request_without_cuda_falls_back(models, make_ctx, fast):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA available here")
    ctx = make_ctx(models["mlp"], BenchmarkParams(batch_sizes=[1], **fast), device="gpu")
    report = Benchmark().run(ctx).report
    assert report["provider"] == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider" in n for n in report["notes"])


def test_params_validation():
    assert BenchmarkParams(threads=4).threads == [4]
    assert BenchmarkParams(batch_sizes=[8, 1, 8]).batch_sizes == [8, 1]
    for bad in ({"batch_sizes": [0]}, {"batch_sizes": [5000]}, {"threads": [300]},
                {"min_runs": 10, "max_runs": 5}, {"min_seconds": 5, "max_seconds": 1},
                {"batch_sizes": []}, {"nope": 1}, {"dims": {"s": 0}}):
        with pytest.raises(ValidationError):
            BenchmarkParams(**bad)
    params = BenchmarkParams()
    with pytest.raises(ValidationError):
        params.warmup = 3  # frozen
    assert BenchmarkParams.model_validate_json(params.model_dump_json()) == params
    schema = BenchmarkParams.model_json_schema()
    assert schema["additionalProperties"] is False and schema["examples"]
    for name, field in schema["properties"].items():
        assert field.get("description") and "examples" in field, name


def test_api_import_is_light():
    # The API lists techniques and builds schemas; that must not load the inference stack.
    code = (
        "import sys, json; from app.engine import catalog; "
        "[json.dumps(t.Params.model_json_schema()) for t in catalog.all_techniques().values()]; "
        "bad = [m for m in ('onnx', 'onnxruntime', 'numpy', 'torch', 'psutil') "
        "if m in sys.modules]; assert not bad, bad; "
        "assert set(catalog.all_techniques()) >= {'benchmark', 'quantize.dynamic'}"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert get("benchmark") is Benchmark


def test_sweep_repeats_until_the_p50_is_known(models, make_ctx):
    params = BenchmarkParams(batch_sizes=[1, 4], threads=[1, 2], warmup=2, min_runs=20, min_seconds=0.0,
                             ci_target=0.05, max_seconds=5)
    report = Benchmark().run(make_ctx(models["mlp"], params)).report
    assert len(report["results"]) == 4
    for r in report["results"]:
        assert r["provider"] == "CPUExecutionProvider"
        assert r["runs"] >= 20
        # Stopped because the interval was narrow enough, or marked noisy: never silently wide.
        assert r["ci_rel_half_width"] <= 0.05 or r["noisy"], r
    assert report["noisy_points"] == sum(r["noisy"] for r in report["results"])


def test_a_point_that_cannot_settle_is_marked_noisy(models, make_ctx):
    params = BenchmarkParams(batch_sizes=[1], min_runs=10, min_seconds=0.0, ci_target=1e-9, max_seconds=0.3)
    point = Benchmark().run(make_ctx(models["mlp"], params)).report["results"][0]
    assert point["noisy"] is True and point["ci_rel_half_width"] > 1e-9


def test_recommendation_within_and_beyond_the_sla(models, make_ctx, fast):
    base = dict(batch_sizes=[1, 8, 32], **fast)
    report = Benchmark().run(make_ctx(models["mlp"], BenchmarkParams(max_latency_ms=10_000, **base))).report
    best = report["recommendation"]["best"]
    top = max(report["results"], key=lambda r: r["throughput_items_per_s"])
    assert (best["batch_size"], best["threads"]) == (top["batch_size"], top["threads"])
    # An SLA between the fastest and slowest p99 excludes the slow points.
    p99s = sorted(r["p99_ms"] for r in report["results"])
    report = Benchmark().run(make_ctx(models["mlp"], BenchmarkParams(max_latency_ms=1e-6, **base))).report
    assert report["recommendation"]["best"] is None
    assert "no measured point meets the SLA" in report["recommendation"]["reason"]
    assert report["recommendation"]["sla"] == {"max_latency_ms": 1e-6, "min_throughput": None, "latency_stat": "p99"}
    assert p99s[0] > 1e-6


def test_recommend_picks_the_highest_throughput_inside_the_sla():
    from app.engine.measure.benchmark import recommend

    points = [{"batch_size": b, "threads": 1, "provider": "CPUExecutionProvider", "p50_ms": p99 / 2,
               "p99_ms": p99, "throughput_items_per_s": tput} for b, p99, tput in ((1, 1.0, 100), (8, 5.0, 800), (32, 20.0, 1600))]
    assert recommend(points, 10.0, None)["best"]["batch_size"] == 8
    assert recommend(points, None, None)["best"]["batch_size"] == 32
    assert recommend(points, 10.0, 1000)["best"] is None
    assert recommend(points, 0.5, None)["best"] is None


def test_a_tail_outlier_p99_never_decides_the_sla_unflagged():
    from app.engine.measure.benchmark import recommend

    # batch 8: p50 0.05 ms, p99 13.5 ms (the numbers): interference, not the model
    points = [{"batch_size": b, "threads": 1, "provider": "CPUExecutionProvider", "p50_ms": p50,
               "p99_ms": p99, "throughput_items_per_s": round(b / p50 * 1e3, 2)}
              for b, p50, p99 in ((1, 0.04, 0.05), (8, 0.05, 13.5), (32, 0.5, 0.6))]
    rec = recommend(points, 10.0, None)  # batch 8 is turned down on its flagged p99 alone
    assert rec["best"]["batch_size"] == 32
    assert len(rec["flags"]) == 1 and "batch 8" in rec["flags"][0] and "270x the p50" in rec["flags"][0]
    rec = recommend(points, 20.0, None)  # batch 8 is picked: its p99 is flagged with it
    assert rec["best"]["batch_size"] == 8 and rec["flags"][0].startswith("the recommended point: p99 13.5 ms")
    assert recommend(points[:1], 10.0, None)["flags"] == []
