"""Every technique's real report, as a job stores it (JSON), matches its model in
``app.engine.reports``: each registered technique runs once on a tiny model here, so a technique
that writes a field its model does not describe (or leaves out a required one) fails this test,
and a technique added to the catalog without a case here fails it too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.engine import catalog
from app.engine.base import Context
from app.engine.reports import SCHEMA_VERSION, PipelineReport, parse, pipeline_report

MEASURE = {"warmup": 1, "min_runs": 3, "max_runs": 20, "min_seconds": 0.0, "max_seconds": 0.5,
           "batch_sizes": [1, 4], "threads": [1]}
QUANT = {**MEASURE, "fidelity_samples": 32}
# technique -> (model: "mlp" | "pt2", params, with the dataset)
CASES = {
    "benchmark": ("mlp", {**MEASURE, "max_latency_ms": 1000.0}, False),
    "compare": ("mlp", {**MEASURE, "model_ids": ["twin"], "accuracy_samples": 32}, True),
    "evaluate": ("mlp", {"samples": 32}, True),
    "quantize.dynamic": ("mlp", QUANT, False),
    "quantize.static": ("mlp", {**QUANT, "samples": 16}, True),
    "quantize.fp16": ("mlp", QUANT, False),
    "quantize.int4": ("mlp", QUANT, False),
    "quantize.auto": ("mlp", {**QUANT, "modes": ["dynamic"], "per_channel": [False], "samples": 16,
                              "sensitivity_samples": 16, "min_cosine": 0.5}, True),
    "optimize.graph": ("mlp", QUANT, False),
    "prune.unstructured": ("mlp", {**MEASURE, "sparsity": 0.5}, False),
    "prune.structured": ("mlp", {**MEASURE, "ratio": 0.5, "fine_tune": {"epochs": 1, "lr": 1e-3}}, True),
    "distill": ("mlp", {**MEASURE, "student": {"pruned_ratio": 0.5}, "epochs": 1, "lr": 1e-3}, True),
    "convert.onnx": ("pt2", {}, False),
}
# Techniques whose report needs a service running beside them: checked where one runs.
ELSEWHERE = {"export.mlflow": "tests/api/test_mlflow_export.py (a real MLflow tracking server)"}


def test_every_technique_has_a_case():
    assert set(CASES) | set(ELSEWHERE) == set(catalog.all_techniques())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, x=rng.standard_normal((64, 128)).astype(np.float32), labels=rng.integers(0, 10, 64))
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_stored_report_matches_its_model(name, models, cnn_pt2, dataset, tmp_path):
    kind, params, with_data = CASES[name]
    model = cnn_pt2[0] if kind == "pt2" else models["mlp"]
    ctx = Context(model_path=model, params=params, workdir=tmp_path, dataset_path=dataset if with_data else None,
                  parent_path=model if name == "evaluate" else None, models={"twin": models["mlp"]})
    report = catalog.get(name)().run(ctx).report
    stored = json.loads(json.dumps(report, allow_nan=False))  # what the job row holds
    parsed = parse(stored)
    assert parsed.technique == name and parsed.schema_version == SCHEMA_VERSION
    # A pipeline of it validates too, and keeps the step's report as it was.
    pipeline = pipeline_report("m1", "m2", [{"technique": name, "params": params, "output_model_id": "m2",
                                             "report": stored}])
    assert isinstance(parse(pipeline), PipelineReport) and pipeline["steps"][0]["report"] == stored
