"""quantize.auto's search on tiny real models: whole-model candidates first, sensitivity and
bisection only when none meets the tolerance, the per-sample tolerance, the tolerance's unit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError

from app.engine.measure.speedup import MIN_ROUNDS
from app.engine.pipeline import from_row
from app.engine.quantize.auto import QuantizeAuto, QuantizeAutoParams
from app.engine.quantize.dynamic import QuantizeDynamic, QuantizeDynamicParams
from app.engine.quantize.search import choose, plan
from app.engine.quantize.sensitivity import groups_of
from tests.engine.quant_models import digits, outlier_mlp
from tests.engine.quantize.test_quantization import FAST, cosine, outputs, run
from tests.reports.test_render import JOB, render

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EVALUATED = 256  # QuantParams.fidelity_samples' default: the samples candidates are judged on


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The outlier MLP: whole-model int8 keeps a fair mean cosine (> 0.9) but not 0.99, and
    one layer, kept in float, fixes it."""
    d = tmp_path_factory.mktemp("outlier")
    path, layer = outlier_mlp(d / "mlp.onnx")
    x, y = digits()
    np.savez(d / "digits.npz", x=x[:400], labels=y[:400])
    return path, layer, d / "digits.npz", x[:EVALUATED]


def test_candidates_fastest_expected_first():
    conv = [c["name"] for c in plan(["dynamic", "static"], [False, True], has_conv=True)]
    assert conv == ["static-per-channel", "static-per-tensor", "dynamic-per-channel",
                    "dynamic-per-tensor"]
    dense = plan(["dynamic"], [False, True], has_conv=False)
    assert [c["name"] for c in dense] == ["dynamic-per-channel", "dynamic-per-tensor"]
    assert dense[0]["speed"] == dense[1]["speed"]
    # without convolutions static is the integer recipe: per-channel weights only
    both = [c["name"] for c in plan(["static", "dynamic"], [False, True], has_conv=False, integer=True)]
    assert both == ["static-per-channel", "dynamic-per-channel", "dynamic-per-tensor"]


def _encoder_block(path):
    """Linear layers on (batch, tokens, features): exported as MatMul + Add, as transformers are."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    torch.onnx.export(net, (torch.randn(2, 8, 16),), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "b"}})
    return path


def test_static_on_a_transformer_like_model_is_the_integer_recipe(tmp_path):
    path = _encoder_block(tmp_path / "block.onnx")
    assert {"MatMul"} <= {n.op_type for n in onnx.load(str(path)).graph.node} and not {
        "Gemm", "Conv"} & {n.op_type for n in onnx.load(str(path)).graph.node}
    x = np.random.default_rng(0).standard_normal((300, 8, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    params = QuantizeAutoParams(min_cosine=0.98, modes=["static", "dynamic"], **FAST)
    report = run(QuantizeAuto, path, params, tmp_path / "w", tmp_path / "x.npz").report
    first = report["candidates"][0]
    assert report["search"]["order"] == ["static-per-channel", "dynamic-per-channel", "dynamic-per-tensor"]
    assert first["name"] == "static-per-channel" and first["meets_tolerance"] and first["chosen"]
    q = report["quantization"]
    assert (q["mode"], q["format"], q["mask_padding"], q["per_channel"]) == ("static", "integer", True, True)
    ops = [n.op_type for n in onnx.load(str(report_path(tmp_path))).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and "MatMul" not in ops and "DynamicQuantizeLinear" not in ops
    assert any("contrib op" in n for n in report["notes"])
    assert cosine(outputs(report_path(tmp_path), x[:64]), outputs(path, x[:64])).mean() >= 0.98


def test_without_convolutions_the_default_is_dynamic_only(tmp_path):
    path = _encoder_block(tmp_path / "block.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((300, 8, 16)).astype(np.float32))
    report = run(QuantizeAuto, path, QuantizeAutoParams(min_cosine=0.98, **FAST), tmp_path / "w",
                 tmp_path / "x.npz").report
    assert report["search"]["order"] == ["dynamic-per-channel", "dynamic-per-tensor"]


def test_timing_overturns_the_expected_order_only_when_the_interval_says_so():
    finalists = [{"name": "a"}, {"name": "b"}]

    def grid(a: list[float], b: list[float]) -> dict:
        return {"points": [{"a": {"round_speedups": a}, "b": {"round_speedups": b}}]}

    flat = [1.5] * 12
    # too few rounds to tell, whatever the figures: a stays
    assert choose(finalists, grid([1.5] * 3, [1.9] * 3))[0]["name"] == "a"
    # b faster in most rounds, but slower in enough of them (bursts of load) that the interval
    # of the per-round ratio reaches below 1: a stays
    noisy = [1.9, 1.4, 1.8, 1.3, 1.9, 1.4, 1.8, 1.3, 1.9, 1.4, 1.8, 1.45]
    assert choose(finalists, grid(flat, noisy))[0]["name"] == "a"
    # b faster in most rounds, one burst had it slower, the interval is still above 1: b
    steady = [1.8, 1.7, 1.8, 1.75, 1.8, 1.7, 1.2, 1.8, 1.75, 1.8, 1.7, 1.8]
    chosen, why = choose(finalists, grid(flat, steady))
    assert chosen["name"] == "b" and "95% interval above 1" in why


def test_a_cnn_tries_static_per_channel_first(models, tmp_path):
    data = tmp_path / "img.npz"
    np.savez(data, img=np.random.default_rng(0).standard_normal((64, 3, 16, 16), np.float32))
    params = QuantizeAutoParams(min_cosine=0.9, samples=32, **FAST)
    report = run(QuantizeAuto, models["cnn"], params, tmp_path / "w", data).report
    rows = {c["name"]: c for c in report["candidates"]}
    assert report["search"]["order"][0] == "static-per-channel"
    assert rows["static-per-channel"]["meets_tolerance"]
    assert rows["static-per-channel"]["chosen"]
    # The rest cannot beat it in expectation: not even built.
    for name in ("static-per-tensor", "dynamic-per-channel", "dynamic-per-tensor"):
        assert "static-per-channel already meets" in rows[name]["skipped"]
    assert report["quantization"]["mode"] == "static" and report["quantization"]["per_channel"]


def test_groups_of_consecutive_layers():
    layers = [{"name": str(i)} for i in range(39)]
    groups = groups_of(layers)
    assert len(groups) <= 16 and [layer for g in groups for layer in g] == layers
    assert groups_of(layers[:5]) == [[layer] for layer in layers[:5]]


def test_a_passing_whole_model_candidate_ends_the_search(outlier, tmp_path):
    path, _, data, x = outlier
    params = QuantizeAutoParams(min_cosine=0.9, modes=["dynamic"], per_channel=[True, False],
                                **FAST)
    report = run(QuantizeAuto, path, params, tmp_path / "w", data).report
    search = report["search"]
    assert search["sensitivity_ran"] is False and report["sensitivity"] is None
    assert set(search["phases"]) == {"prepare", "whole_model", "timing"}
    first, second = report["candidates"]
    assert first["name"] == "dynamic-per-channel" and first["meets_tolerance"]
    assert first["samples"] == EVALUATED and first["phase"] == "whole_model"
    assert second["name"] == "dynamic-per-tensor" and "meets_tolerance" not in second
    assert "dynamic-per-channel already meets the tolerance" in second["skipped"]
    assert first["chosen"] and report["quantization"]["float_layers"] == []
    assert report["verdict"]["within_tolerance"]
    # built without the shape annotations that steer onnxruntime's fusions (see search.py)
    assert not onnx.load(str(report_path(tmp_path))).graph.value_info
    # one finalist: no race; it alone is timed against the parent over the whole grid
    assert search["finalists"] == ["dynamic-per-channel"] and "race" not in search["timing"]
    assert [set(p) for p in search["timing"]["points"]] == [{"batch_size", "threads", "dynamic-per-channel"}] * 2
    assert all(len(p["dynamic-per-channel"]) >= MIN_ROUNDS for p in search["timing"]["points"])
    assert cosine(outputs(report_path(tmp_path), x), outputs(path, x)).mean() >= 0.9
    html, _ = render(report, job=JOB)  # the page says it too
    assert "skipped: dynamic-per-channel already meets" in html
    assert "sensitivity not needed" in html


def report_path(tmp_path):
    return tmp_path / "w" / "model.onnx"


def test_sensitivity_and_bisection_only_when_no_candidate_passes(outlier, tmp_path):
    path, layer, data, x = outlier
    params = QuantizeAutoParams(min_cosine=0.99, modes=["dynamic"], per_channel=[True, False],
                                **FAST)
    report = run(QuantizeAuto, path, params, tmp_path / "w", data).report
    search = report["search"]
    assert search["sensitivity_ran"] is True
    assert {"whole_model", "sensitivity", "bisection", "timing"} <= set(search["phases"])
    whole = [c for c in report["candidates"] if c["phase"] == "whole_model"]
    assert len(whole) == 2 and not any(c["meets_tolerance"] for c in whole)
    assert report["sensitivity"]["layers"][0]["layer"] == layer
    assert report["sensitivity"]["samples"] == 32  # sensitivity_samples, not all 256
    bisected = [c for c in report["candidates"] if c["phase"] == "bisection"]
    assert bisected and bisected[-1]["meets_tolerance"]
    assert report["quantization"]["float_layers"] == [layer]
    assert cosine(outputs(report_path(tmp_path), x), outputs(path, x)).mean() >= 0.99


def test_min_cosine_per_sample_bounds_every_sample(outlier, tmp_path):
    path, _, data, x = outlier
    params = QuantizeAutoParams(min_cosine=0.9, min_cosine_per_sample=0.99, modes=["dynamic"],
                                per_channel=[True], **FAST)
    report = run(QuantizeAuto, path, params, tmp_path / "w", data).report
    whole = report["candidates"][0]
    # The mean alone would have passed: the worst sample is what failed it.
    assert whole["mean_cosine"] >= 0.9 and whole["cosine_min"] < 0.99
    assert not whole["meets_tolerance"] and report["search"]["sensitivity_ran"]
    chosen = next(c for c in report["candidates"] if c["chosen"])
    assert chosen["cosine_min"] >= 0.99
    assert cosine(outputs(report_path(tmp_path), x), outputs(path, x)).min() >= 0.99
    assert report["tolerance"]["min_cosine_per_sample"] == 0.99
    assert report["tolerance"]["worst_cosine"] >= 0.99 and report["tolerance"]["within"]


def test_every_quantizer_reports_the_per_sample_tolerance(outlier, tmp_path):
    path, _, _, _ = outlier
    params = QuantizeDynamicParams(min_cosine=0.5, min_cosine_per_sample=0.9999, **FAST)
    report = run(QuantizeDynamic, path, params, tmp_path / "w").report
    assert report["tolerance"]["within"] is False
    assert "lowest per-sample cosine" in report["verdict"]["summary"]


def test_the_accuracy_drop_says_its_unit():
    assert QuantizeAutoParams(max_accuracy_drop_pt=0.5).tolerance(True)["max_accuracy_drop_pt"] == 0.5
    with pytest.raises(ValidationError, match="renamed max_accuracy_drop_pt.*max_accuracy_drop_pt=0.5"):
        QuantizeAutoParams(max_accuracy_drop=0.005)
    with pytest.raises(ValidationError, match="max_accuracy_drop_pt"):
        QuantizeDynamicParams.model_validate({"max_accuracy_drop": 1.0})
    # Params echoed from an older job (every field, this one null) still validate.
    assert QuantizeAutoParams.model_validate({"max_accuracy_drop": None}).max_accuracy_drop_pt is None


def test_a_stored_job_with_the_old_name_keeps_its_meaning():
    # Rows written before the rename carry no version (version 1) and meant points.
    (step,) = from_row("quantize.auto", {"max_accuracy_drop": 0.5, "min_cosine": 0.99})
    assert step.params.max_accuracy_drop_pt == 0.5 and step.params.min_cosine == 0.99


@pytest.mark.parametrize("fuse", [True, False])
def test_fuse_attention_rewrites_the_staged_parent_when_asked(fuse, tmp_path):
    """fuse_attention: every attention block of a tiny BERT (transformers' default sdpa
    export) becomes one MultiHeadAttention before quantizing; off (the default), the graph
    keeps its per-head operators."""
    from tests.engine.transformer_models import export_encoder, tokens

    path = export_encoder("bert", tmp_path / "bert.onnx", dynamo=False, opset=17)
    np.savez(tmp_path / "t.npz", **tokens(64, seq=12))
    params = QuantizeAutoParams(min_cosine=0.9, fuse_attention=fuse, **FAST)
    report = run(QuantizeAuto, path, params, tmp_path / "w", tmp_path / "t.npz").report
    ops = [n.op_type for n in onnx.load(str(report_path(tmp_path))).graph.node]
    assert "DynamicQuantizeLinear" in ops  # quantized either way
    if fuse:
        assert report["search"]["attention_fusion"]["fused"] == 2
        assert report["search"]["attention_fusion"]["max_abs_diff"] <= 1e-4
        assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops
        assert any("MultiHeadAttention" in n for n in report["notes"])
    else:
        assert report["search"]["attention_fusion"] is None
        assert "MultiHeadAttention" not in ops and ops.count("Softmax") == 2


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory):
    """A small residual CNN trained a little on a learnable 4-class image set (labels)."""
    from tests.engine.torch_models import export, image_dataset, residual_cnn

    folder = tmp_path_factory.mktemp("prune-auto")
    data = image_dataset(folder / "data.npz", n=240)
    arrays = np.load(data)
    torch.manual_seed(0)
    net = residual_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["labels"])
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return export(net, x[:1], folder / "cnn.onnx"), data


def _params(**kw):
    return QuantizeAutoParams(prune_ratios=[0.3], prune_fine_tune={"epochs": 15, "lr": 3e-3}, **FAST, **kw)


def test_a_pruning_candidate_within_tolerance_is_kept(quadrants, tmp_path):
    import onnx

    model, data = quadrants
    report = run(QuantizeAuto, model, _params(max_accuracy_drop_pt=10.0), tmp_path / "w", data).report
    pruning = report["pruning"]
    assert pruning["chosen_ratio"] == 0.3 and pruning["tried"][0]["result"] == "chosen", pruning
    assert (pruning["train_samples"], pruning["holdout_samples"]) == (168, 72)
    # the report's figures are against the unpruned parent, on the held-out samples
    assert report["parent"]["size_bytes"] == model.stat().st_size
    assert report["result"]["parameter_count"] < 0.7 * report["parent"]["parameter_count"]
    assert report["accuracy"]["model"]["samples"] == 72
    assert report["tolerance"]["accuracy_drop"] <= 10.0
    assert any("held-out" in n for n in report["notes"])
    ops = {n.op_type for n in onnx.load(str(report_path(tmp_path))).graph.node}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops  # and quantized
    assert not list((tmp_path / "w").glob("prune-*.npz"))  # the split files are gone
    html, _ = render(report, job={**JOB, "technique": "quantize.auto"})
    assert "Pruning candidates" in html and "kept 30%" in html and "<td>chosen</td>" in html


def test_a_pruning_candidate_outside_tolerance_falls_back_to_quantization(quadrants, tmp_path):
    model, data = quadrants
    # a cosine no 30%-pruned model keeps: pruning is refused, plain quantization still runs
    report = run(QuantizeAuto, model, _params(min_cosine=0.99999, max_accuracy_drop_pt=100.0),
                 tmp_path / "w", data).report
    pruning = report["pruning"]
    assert pruning["chosen_ratio"] is None
    assert "outside the tolerance" in pruning["tried"][0]["result"]
    assert report["result"]["parameter_count"] >= report["parent"]["parameter_count"]  # nothing removed
