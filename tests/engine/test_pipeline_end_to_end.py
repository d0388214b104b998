"""A pipeline's report measures the job's input against its final output in the same run
(``end_to_end``): each step compares only with the step before it, so the product of the
steps' speedups, and the accuracy after all of them, were never measured."""

from __future__ import annotations

import pytest

from app.engine import pipeline
from app.engine.base import Context
from tests.engine.conftest import FAST
from tests.engine.torch_models import export, image_dataset, residual_cnn
from tests.reports.test_render import JOB, render

pytestmark = pytest.mark.filterwarnings("ignore")
GRID = {"batch_sizes": [1, 8], **FAST}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("e2e")
    return export(residual_cnn(), torch.zeros(1, 1, 8, 8), folder / "cnn.onnx"), \
        image_dataset(folder / "data.npz", n=64)


def run(steps, model, data, tmp_path):
    plan = pipeline.from_request(None, {}, steps)
    ctx = Context(model_path=model, params=plan[0].params, workdir=tmp_path, dataset_path=data)
    results = pipeline.run(plan, ctx, tmp_path, lambda fraction, stage: None)
    return pipeline.report(plan, results, "m-in", ["m-1" if r.output_path else None for r in results])


def test_two_model_producing_steps_are_measured_end_to_end(cnn, tmp_path):
    model, data = cnn
    report = run([{"technique": "prune.structured", "params": {"ratio": 0.5, "method": "torch", **GRID}},
                  {"technique": "quantize.static", "params": {"samples": 32, **GRID}}], model, data, tmp_path)
    first, last = report["steps"][0]["report"], report["steps"][1]["report"]
    e2e = report["end_to_end"]
    # the job's input and the final output, not a step's parent or child
    assert e2e["parent"]["size_bytes"] == first["parent"]["size_bytes"]
    assert e2e["result"]["size_bytes"] == last["result"]["size_bytes"] < e2e["parent"]["size_bytes"]
    assert e2e["size_ratio"] == pytest.approx(last["result"]["size_bytes"] / first["parent"]["size_bytes"], abs=1e-4)
    # the same data scored on the same models: the input's top-1 is the first step's reference,
    # the final output's the last step's result
    assert e2e["accuracy"]["reference"]["top1"] == first["accuracy"]["reference"]["top1"]
    assert e2e["accuracy"]["model"]["top1"] == last["accuracy"]["model"]["top1"]
    assert [p["batch_size"] for p in e2e["comparison"]] == [1, 8]
    for point in e2e["comparison"]:
        assert point["speedup"] > 0 and point["speedup_ci"]["rounds"] >= 1
        assert point["parent_p50_ms"] > 0 and point["result_p50_ms"] > 0
    assert "job input vs final output at batch 1" in e2e["summary"]
    assert e2e["fidelity"]["samples"] > 0
    assert e2e["notes"] == []  # nothing trained on the dataset
    html, page = render(report, job={**JOB, "technique": "pipeline"})
    section = html[html.index('id="end-to-end"'):]
    assert f"{e2e['comparison'][1]['speedup']:.2f}×" in section[:section.index("</section>")]


def test_one_model_producing_step_has_no_end_to_end(cnn, tmp_path):
    model, data = cnn
    report = run([{"technique": "quantize.dynamic", "params": GRID},
                  {"technique": "benchmark", "params": {"batch_sizes": [1], **FAST}}], model, data, tmp_path)
    assert "end_to_end" not in report


def test_a_step_that_trained_on_the_dataset_is_named(cnn, tmp_path):
    model, data = cnn
    report = run([{"technique": "prune.structured",
                   "params": {"ratio": 0.25, "method": "torch", "fine_tune": {"epochs": 1, "lr": 1e-3}, **GRID}},
                  {"technique": "quantize.dynamic", "params": GRID}], model, data, tmp_path)
    (note,) = report["end_to_end"]["notes"]
    assert note.startswith("prune.structured trained on this dataset")


def test_a_failed_end_to_end_measurement_does_not_fail_the_job(cnn, tmp_path, monkeypatch):
    """Every step succeeded: the job stands, and the report says the comparison is missing."""
    from app.engine.errors import InferenceFailed
    from app.engine.quantize import report as quantize_report

    def broken(*args, **kwargs):
        raise InferenceFailed("the input model stopped running")

    monkeypatch.setattr(quantize_report, "end_to_end", broken)
    model, data = cnn
    report = run([{"technique": "quantize.dynamic", "params": GRID},
                  {"technique": "quantize.fp16", "params": GRID}], model, data, tmp_path)
    assert report["end_to_end"]["summary"] == "not measured end to end: the input model stopped running"
    assert set(report["end_to_end"]) == {"summary"}
    html, _ = render(report, job={**JOB, "technique": "pipeline"})
    assert "not measured end to end" in html


def test_each_technique_says_when_it_trains_on_the_dataset():
    from app.engine.catalog import all_techniques, get

    training = {n for n, t in all_techniques().items() if not t.Params.model_json_schema().get("required")
                 and t.trains_on_dataset(t.Params())}
    assert training == {"distill"}  # with default params only distillation trains
    assert get("prune.structured").trains_on_dataset(get("prune.structured").Params(fine_tune={"epochs": 1}))
    assert get("quantize.auto").trains_on_dataset(get("quantize.auto").Params(prune_ratios=[0.3]))
