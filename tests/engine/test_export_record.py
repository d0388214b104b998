"""What export.mlflow records from a stored report (app.engine.export.record): the reports under
tests/data/reports are real ones, as jobs stored them."""

from __future__ import annotations

import json

import pytest

from app.engine.export.record import MAX_PARAM_VALUE, flat_params, metrics
from tests.support import ROOT


def stored(name: str) -> dict:
    return json.loads((ROOT / "tests" / "data" / "reports" / f"{name}.json").read_text())


def test_a_quantize_report_gives_latency_throughput_size_and_fidelity():
    report = stored("quantize.dynamic")
    got = metrics(report)
    for point in report["comparison"]:
        bs, p50 = point["batch_size"], point["result_p50_ms"]
        assert got[f"latency_p50_ms.bs{bs}"] == p50 and got[f"parent_latency_p50_ms.bs{bs}"] == point["parent_p50_ms"]
        assert got[f"items_per_s.bs{bs}"] == pytest.approx(bs * 1000 / p50)
    assert got["size_bytes"] == report["result"]["size_bytes"] and got["size_ratio"] == report["size_ratio"]
    assert got["fidelity.logits.cosine_mean"] == report["fidelity"]["outputs"]["logits"]["cosine_mean"]
    assert got["accuracy.top1"] == report["accuracy"]["model"]["top1"]
    assert got["accuracy.drop"] == report["accuracy"]["drop"]


def test_a_pipeline_report_gives_its_last_model_producing_step():
    report = stored("pipeline")
    producing = [s for s in report["steps"] if s["output_model_id"]][-1]["report"]
    assert metrics(report) == metrics(producing) and metrics(report)


def test_a_pipeline_measured_end_to_end_adds_those_figures():
    step = stored("quantize.dynamic")
    e2e = {k: step[k] for k in ("parent", "result", "size_ratio", "comparison", "fidelity", "accuracy")}
    report = {**stored("pipeline"), "end_to_end": e2e}
    got = metrics(report)
    for point in e2e["comparison"]:
        assert got[f"end_to_end.latency_p50_ms.bs{point['batch_size']}"] == point["result_p50_ms"]
    assert got["end_to_end.size_ratio"] == e2e["size_ratio"]
    assert got["end_to_end.accuracy.drop"] == e2e["accuracy"]["drop"]
    assert {k: v for k, v in got.items() if not k.startswith("end_to_end.")} == metrics(stored("pipeline"))


def test_a_benchmark_names_threads_when_it_swept_them():
    got = metrics(stored("benchmark"))
    assert {"latency_p50_ms.bs1_t1", "latency_p50_ms.bs1_t2", "items_per_s.bs32_t2"} <= set(got)


def test_no_report_and_odd_values_record_nothing():
    assert metrics(None) == {} and metrics({"technique": "x", "size_ratio": float("nan"), "result": "?"}) == {}


def test_params_are_flattened_to_what_mlflow_stores():
    flat = flat_params({"per_channel": True, "measure": {"batch_sizes": [1, 8]}, "exclude_nodes": [],
                        "steps": [{"technique": "quantize.dynamic", "params": {"op_types": None}}],
                        "long": "x" * 2000, "odd key!": 1})
    assert flat == {"per_channel": "true", "measure.batch_sizes": "[1, 8]", "exclude_nodes": "[]",
                    "steps.0.technique": "quantize.dynamic", "steps.0.params.op_types": "null",
                    "long": "x" * (MAX_PARAM_VALUE - 1) + "…", "odd key_": "1"}
