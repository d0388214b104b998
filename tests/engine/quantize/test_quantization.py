"""quantize.static / fp16 / int4 / auto and evaluate, run in-process on tiny real models."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from app.engine.base import Context
from app.engine.errors import NotApplicable, TechniqueError, UnsupportedModel
from app.engine.measure.evaluate import Evaluate, EvaluateParams
from app.engine.quantize.auto import QuantizeAuto, QuantizeAutoParams
from app.engine.quantize.dynamic import QuantizeDynamic, QuantizeDynamicParams
from app.engine.quantize.fp16 import QuantizeFp16, QuantizeFp16Params
from app.engine.quantize.int4 import QuantizeInt4, QuantizeInt4Params
from app.engine.quantize.static import QuantizeStatic, QuantizeStaticParams
from tests.engine.quant_models import digits, outlier_mlp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FAST = dict(batch_sizes=[1, 4], warmup=1, min_runs=3, min_seconds=0.01, max_seconds=1.0)
COMMON = ("schema_version", "technique", "parent", "result", "size_ratio", "comparison",
          "fidelity", "accuracy", "tolerance", "verdict", "quantization", "nodes")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    d = tmp_path_factory.mktemp("outlier")
    path, layer = outlier_mlp(d / "mlp.onnx")
    x, y = digits()
    np.savez(d / "digits.npz", x=x[:400], labels=y[:400])
    return path, layer, d / "digits.npz", x[:400], y[:400]


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def run(technique, model, params, workdir, dataset=None, parent=None, models=None):
    workdir.mkdir(exist_ok=True)
    ctx = Context(model_path=model, params=params, workdir=workdir, dataset_path=dataset,
                  parent_path=parent, models=models or {})
    result = technique().run(ctx)
    assert json.loads(json.dumps(result.report, allow_nan=False)) == result.report
    return result


def outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_common(report, technique):
    assert report["technique"] == technique and all(k in report for k in COMMON)
    v = report["verdict"]
    assert {"faster", "smaller", "within_tolerance", "summary", "reasons"} <= set(v)
    kinds = [c["speedup_ci"]["verdict"] for c in report["comparison"]]
    assert v["faster"] == (True if set(kinds) == {"faster"} else False if "slower" in kinds else None)
    if v["faster"] is False:
        assert "NOT faster" in v["summary"] and v["reasons"]


def test_static_cnn(models, tmp_path, cwd):
    data = tmp_path / "img.npz"
    np.savez(data, img=np.random.default_rng(0).standard_normal((48, 3, 16, 16), np.float32))
    params = QuantizeStaticParams(samples=32, calibration="entropy", **FAST)
    result = run(QuantizeStatic, models["cnn"], params, tmp_path / "w", data)
    report = result.report
    check_common(report, "quantize.static")
    assert report["quantization"]["activation_type"] == "uint8"
    assert report["quantization"]["calibration_samples"] == 32
    assert report["nodes"]["qdq_compute"] == 3  # two Conv + the Gemm
    assert report["fidelity"]["outputs"]["out"]["cosine_mean"] > 0.98
    assert os.listdir(cwd) == [] and os.listdir(tmp_path / "w") == ["model.onnx"]
    assert report["size_ratio"] < 0.9  # tiny model: Q/DQ params weigh as much as weights


def test_static_needs_dataset(models, tmp_path):
    with pytest.raises(TechniqueError, match="dataset"):
        run(QuantizeStatic, models["mlp"], QuantizeStaticParams(**FAST), tmp_path / "w")


def test_exclusions_and_opset9(tmp_path, cwd):
    # Opset 9, a name with '/' and ':', weights from a Constant -> Transpose subgraph.
    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["wt"], value=helper.make_tensor(
                 "wt", TensorProto.FLOAT, [16, 32], w.ravel())),
             helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0], name="tr"),
             helper.make_node("MatMul", ["in/x:0", "w"], ["h"], name="mm/0"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "in/x:0", TensorProto.FLOAT, ["batch", 32])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["batch", 16])])
    path = tmp_path / "old.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), path)
    report = run(QuantizeDynamic, path, QuantizeDynamicParams(**FAST), tmp_path / "a").report
    assert report["nodes"]["compute_quantized"] == 1
    assert report["quantization"]["opset"] == {"original": 9, "used": 11}
    with pytest.raises(UnsupportedModel, match="constant subgraphs"):
        run(QuantizeDynamic, path, QuantizeDynamicParams(preprocess=False, **FAST),
            tmp_path / "b")
    with pytest.raises(UnsupportedModel, match="excluded"):
        run(QuantizeDynamic, path, QuantizeDynamicParams(exclude_nodes=["mm/0"], **FAST),
            tmp_path / "c")
    with pytest.raises(TechniqueError, match="not node names"):
        run(QuantizeDynamic, path, QuantizeDynamicParams(exclude_nodes=["nope"], **FAST),
            tmp_path / "d")
    assert os.listdir(cwd) == []


def test_fp16_reports_honestly(models, tmp_path):
    report = run(QuantizeFp16, models["mlp"], QuantizeFp16Params(**FAST), tmp_path / "w").report
    check_common(report, "quantize.fp16")
    assert 0.45 < report["size_ratio"] < 0.55
    assert report["fidelity"]["outputs"]["out"]["cosine_min"] > 0.999
    x = np.ones((2, 128), np.float32)
    assert outputs(tmp_path / "w" / "model.onnx", x).dtype == np.float32


def test_int4_gemm_model(models, tmp_path):
    report = run(QuantizeInt4, models["mlp"], QuantizeInt4Params(block_size=32, **FAST),
                 tmp_path / "w").report
    check_common(report, "quantize.int4")
    assert report["nodes"]["quantized_ops"]["MatMulNBits"] == 3  # Gemm rewritten first
    assert report["size_ratio"] < 0.2
    assert report["fidelity"]["outputs"]["out"]["cosine_mean"] > 0.97


def test_int4_embedding(models, tmp_path):
    report = run(QuantizeInt4, models["tokens"], QuantizeInt4Params(**FAST, dims={"seq_len": 8}),
                 tmp_path / "w").report
    assert report["quantization"]["gather_quantized"] is True
    assert report["nodes"]["quantized_ops"].get("GatherBlockQuantized") == 1


def test_evaluate_matches_direct(outlier, models, tmp_path):
    path, _, data, x, y = outlier
    report = run(Evaluate, path, EvaluateParams(samples=300, batch_size=64), tmp_path / "w",
                 data).report
    logits = outputs(path, x[:300])
    top1 = (logits.argmax(1) == y[:300]).mean()
    top5 = (np.argsort(-logits, 1)[:, :5] == y[:300, None]).any(1).mean()
    assert report["accuracy"]["model"]["top1"] == pytest.approx(top1, abs=1e-6)
    assert report["accuracy"]["model"]["top5"] == pytest.approx(top5, abs=1e-6)
    assert report["fidelity"] is None and report["reference"] is None

    # Fidelity to a reference (given by id) and regression labels.
    q = run(QuantizeDynamic, path, QuantizeDynamicParams(**FAST), tmp_path / "q").output_path
    reg = tmp_path / "reg.npz"
    np.savez(reg, x=x[:100], labels=logits[:100] + 0.5)
    # One batch of 100, as below: dynamic quantization scales activations per batch.
    report = run(Evaluate, q, EvaluateParams(reference_model_id="ref", batch_size=100),
                 tmp_path / "e", reg,
                 models={"ref": path}).report
    got = outputs(q, x[:100])
    assert report["accuracy"]["model"]["mse"] == pytest.approx(
        ((got - logits[:100] - 0.5) ** 2).mean(), rel=1e-4)
    fid = report["fidelity"]["outputs"]["logits"]
    assert fid["cosine_mean"] == pytest.approx(cosine(got, logits[:100]).mean(), abs=1e-5)
    assert fid["max_abs_error"] == pytest.approx(np.abs(got - logits[:100]).max(), rel=1e-4)
    assert fid["top1_agreement"] == pytest.approx((got.argmax(1) == logits[:100].argmax(1)).mean())
    assert 0 <= fid["nearest_neighbour_agreement"] <= 1
    assert report["reference"]["source"] == "reference_model_id"
    assert report["accuracy"]["drop"] == pytest.approx(
        (report["accuracy"]["model"]["mse"] - report["accuracy"]["reference"]["mse"])
        / report["accuracy"]["reference"]["mse"] * 100, rel=1e-3)


def test_evaluate_needs_labels_or_reference(models, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((4, 128), np.float32))
    with pytest.raises(TechniqueError, match="nothing to evaluate"):
        run(Evaluate, models["mlp"], EvaluateParams(), tmp_path / "w", data)


def test_auto_respects_tolerance(outlier, tmp_path, cwd):
    path, layer, data, x, _ = outlier
    full = run(QuantizeDynamic, path, QuantizeDynamicParams(**FAST), tmp_path / "full")
    ref = outputs(path, x)
    assert cosine(outputs(full.output_path, x), ref).mean() < 0.99  # full INT8 breaks it
    params = QuantizeAutoParams(min_cosine=0.99, modes=["dynamic"], **FAST)
    result = run(QuantizeAuto, path, params, tmp_path / "auto", data)
    report = result.report
    check_common(report, "quantize.auto")
    assert cosine(outputs(result.output_path, x), ref).mean() >= 0.99
    assert report["sensitivity"]["layers"][0]["layer"] == layer
    assert report["quantization"]["float_layers"] == [layer]
    assert report["verdict"]["within_tolerance"] is True
    chosen = [c for c in report["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["meets_tolerance"]
    assert any(c["float_layers"] == 0 and not c["meets_tolerance"] for c in report["candidates"])
    assert os.listdir(cwd) == [] and os.listdir(tmp_path / "auto") == ["model.onnx"]


def test_auto_gives_up_with_advice(outlier, tmp_path):
    path, _, data, _, _ = outlier
    params = QuantizeAutoParams(min_cosine=1.0, modes=["dynamic"], per_channel=[False], **FAST)
    with pytest.raises(TechniqueError, match="no quantized variant meets") as err:
        run(QuantizeAuto, path, params, tmp_path / "w", data)
    assert err.value.type == "tolerance_not_met"


def test_a_technique_with_nothing_to_work_on_says_not_applicable(models, tmp_path):
    """int4 looks for MatMul/Gemm/Gather: on an all-convolution net (SqueezeNet-style: a 1x1
    conv classifier, no linear layer) it is a correct refusal of its own type, pointing at what
    does apply. Everything excluded by the user is a different failure: the model has the ops,
    the params removed them."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    conv_only = tmp_path / "conv_only.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 8, 8),), str(conv_only), dynamo=False,
                      input_names=["img"], dynamic_axes={"img": {0: "batch"}})
    with pytest.raises(NotApplicable, match="quantize.static") as refused:
        run(QuantizeInt4, conv_only, QuantizeInt4Params(**FAST), tmp_path / "a")
    assert refused.value.type == "not_applicable" and "Conv" in refused.value.detail
    with pytest.raises(UnsupportedModel) as excluded:
        run(QuantizeDynamic, models["mlp"], QuantizeDynamicParams(
            **FAST, exclude_op_types=["Gemm", "MatMul"]), tmp_path / "b")
    assert type(excluded.value) is UnsupportedModel and "excluded" in excluded.value.detail
