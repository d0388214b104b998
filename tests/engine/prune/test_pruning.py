"""prune.unstructured and prune.structured on tiny real models (engine level, no service)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.engine.errors import DatasetMismatch
from app.engine.prune.structured import PruneStructured, PruneStructuredParams
from app.engine.prune.unstructured import PruneUnstructured, PruneUnstructuredParams
from tests.engine.torch_models import export, image_dataset, residual_cnn

torch.set_num_threads(1)
MEASURE = {"warmup": 1, "min_runs": 3, "max_runs": 20, "min_seconds": 0.0, "max_seconds": 1.0,
           "batch_sizes": [1, 8]}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("resnet")
    return export(residual_cnn(), torch.randn(2, 1, 8, 8), d / "resnet.onnx"), image_dataset(d / "ds.npz")


def _runs(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_reaches_the_sparsity_and_claims_no_speedup(models, make_ctx, scope):
    ctx = make_ctx(models["mlp"], PruneUnstructuredParams(sparsity=0.7, scope=scope, **MEASURE))
    result = PruneUnstructured().run(ctx)
    report = result.report
    assert abs(report["sparsity"]["achieved"] - 0.7) < 0.01
    if scope == "layer":
        assert all(abs(layer["sparsity"] - 0.7) < 0.01 for layer in report["sparsity"]["layers"])
    assert report["verdict"]["faster"] is False and "no speedup" in report["verdict"]["summary"]
    assert report["result"]["zip_size_bytes"] < 0.6 * report["parent"]["zip_size_bytes"]
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(result.output_path)).graph.initializer]
    assert any((w == 0).mean() > 0.6 for w in weights if w.ndim == 2)
    assert report["verification"]["output_shapes_match_parent"]
    assert {p["batch_size"] for p in report["latency"]} == {1, 8}


def test_structured_shrinks_a_residual_cnn(resnet, make_ctx):
    model, _ = resnet
    result = PruneStructured().run(make_ctx(model, PruneStructuredParams(ratio=0.5, **MEASURE)))
    report = result.report
    assert report["result"]["parameter_count"] < 0.35 * report["parent"]["parameter_count"]
    assert report["result"]["macs"] < 0.35 * report["parent"]["macs"]
    assert result.output_path.stat().st_size < 0.5 * model.stat().st_size
    shapes = report["pruning"]["layer_shapes"]
    assert shapes["2/a/Conv"] == {"before": [16, 16, 3, 3], "after": [8, 8, 3, 3]}
    assert report["pruning"]["protected_layers"] == ["6/Gemm"]  # the output layer keeps 4 classes
    feed = {"image": np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)}
    assert _runs(result.output_path, feed)[0].shape == (5, 4)
    assert report["verdict"]["smaller"]


@pytest.mark.parametrize("source", ["labels", "teacher"])
def test_structured_with_recovery_training(resnet, make_ctx, source):
    model, data = resnet
    params = PruneStructuredParams(ratio=0.5, importance="taylor", **MEASURE,
                                   fine_tune={"epochs": 2, "lr": 3e-3, "source": source})
    ctx = make_ctx(model, params, dataset=data)
    report = PruneStructured().run(ctx).report
    training = report["training"]
    assert [e["epoch"] for e in training["epochs"]] == [1, 2]
    assert training["val_samples"] == 32 and "val_loss" in training["epochs"][0]
    assert report["accuracy"]["model"]["samples"] == 32  # scored on the held-out split only
    assert any(stage.startswith("epoch 2/2") for _, stage in ctx.stages)


def test_fine_tune_without_a_dataset_is_refused(resnet, make_ctx):
    with pytest.raises(DatasetMismatch, match="fine_tune needs the job's dataset"):
        PruneStructured().run(make_ctx(resnet[0], PruneStructuredParams(fine_tune={"epochs": 1})))


def test_unknown_keep_layer_lists_the_layers(resnet, make_ctx):
    with pytest.raises(Exception, match="not prunable layers of this model"):
        PruneStructured().run(make_ctx(resnet[0], PruneStructuredParams(keep_layers=["nope"])))


def test_torch_conversion_and_export_run_under_the_native_step_deadline(tmp_path):
    """onnx2torch's shape inference and torch.onnx.export are native: each runs in a child that
    the deadline kills (one no step can meet shows it), with the step named in the error."""
    import torch

    from app.engine.runtime.isolate import StepTimeout
    from app.engine.pytorch.export import export_module
    from app.engine.pytorch.loading import onnx_to_torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(2, 4),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    with pytest.raises(StepTimeout, match="ONNX shape inference for the torch conversion"):
        onnx_to_torch(path, tmp_path, deadline_s=0.001)
    module = onnx_to_torch(path, tmp_path)
    with pytest.raises(StepTimeout, match="torch.onnx export"):
        export_module(module, [torch.randn(2, 4)], tmp_path / "out.onnx", path, deadline_s=0.001)
    out = export_module(module, [torch.randn(2, 4)], tmp_path / "out.onnx", path)
    assert out.exists() and not list(tmp_path.glob("*.export-input.pt"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("onnx2torch-")]
