from __future__ import annotations

import json
import os

import numpy as np
import pytest

from app.engine.runtime.model_info import inspect_onnx
from app.engine.quantize.analysis import saturation_note, verdict
from app.engine.errors import UnsupportedModel
from app.engine.quantize.dynamic import QuantizeDynamic, QuantizeDynamicParams

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_mlp_quantized(models, make_ctx, fast, empty_cwd):
    import onnxruntime as ort

    ctx = make_ctx(models["mlp"], QuantizeDynamicParams(batch_sizes=[1, 16], **fast))
    result = QuantizeDynamic().run(ctx)
    report = result.report

    assert result.output_path == ctx.workdir / "model.onnx"
    assert sorted(os.listdir(ctx.workdir)) == ["model.onnx"]  # scratch files cleaned up
    assert os.listdir(empty_cwd) == []  # nothing leaked into the CWD
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["schema_version"] == 1 and report["technique"] == "quantize.dynamic"

    session = ort.InferenceSession(str(result.output_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ones((3, 128), np.float32)})
    assert out.shape == (3, 10)
    assert inspect_onnx(result.output_path)["inputs"][0]["shape"] == ["batch", 128]

    assert report["result"]["size_bytes"] < report["parent"]["size_bytes"]
    assert report["size_ratio"] < 0.35  # fp32 -> int8 weights: about 4x smaller
    assert report["nodes"]["quantized_ops"]["MatMulInteger"] == 3
    assert report["nodes"]["candidates_in_parent"] == {"Gemm": 3}
    assert report["nodes"]["float_compute_left"] == {}
    assert report["quantization"]["preprocess"] in ("full", "without symbolic shape inference")

    fid = report["fidelity"]
    assert fid["source"] == "generated" and fid["samples"] == 64
    # the report says what it measured: 64 generated samples of the 256 the params asked for
    assert fid["samples_requested"] == 256 and "64 of the 256 requested" in fid["samples_note"]
    assert report["host_load"]["points"] == 2 and report["host_load"]["summary"]
    assert fid["outputs"]["out"]["cosine_mean"] > 0.99
    assert fid["outputs"]["out"]["cosine_min"] > 0.95
    assert 0 < fid["outputs"]["out"]["mean_abs_error"] <= fid["outputs"]["out"]["max_abs_error"]
    assert fid["outputs"]["out"]["top1_agreement"] > 0.8

    assert [(c["batch_size"], c["threads"]) for c in report["comparison"]] == [(1, 1), (16, 1)]
    for c in report["comparison"]:
        est = c["speedup_ci"]  # the median per-round ratio, inside its own interval
        assert est["ci_low"] <= c["speedup"] == est["speedup"] <= est["ci_high"]
        assert c["parent_runs"] >= fast["min_runs"] and c["result_runs"] >= fast["min_runs"]
    v = report["verdict"]
    assert v["smaller"] is True
    kinds = [c["speedup_ci"]["verdict"] for c in report["comparison"]]
    assert v["faster"] == (True if set(kinds) == {"faster"} else False if "slower" in kinds else None)
    assert "smaller" in v["summary"] and v["summary"]
    stages = [s for _, s in ctx.stages]
    assert stages[:2] == ["loading", "quantizing"] and "fidelity" in stages


def test_cnn_verdict_is_explained(models, make_ctx, fast):
    params = QuantizeDynamicParams(batch_sizes=[1], preprocess=False, **fast)
    report = QuantizeDynamic().run(make_ctx(models["cnn"], params)).report
    assert report["quantization"]["preprocess"] == "off"
    assert report["nodes"]["quantized_ops"]["ConvInteger"] == 2
    v = report["verdict"]
    if v["faster"] is False:  # the usual outcome on CPU: ConvInteger is slow
        assert "ConvInteger" in v["reasons"][0] and "NOT faster" in v["summary"]


def test_reduce_range_fidelity_on_uniform_weights(models, make_ctx, fast):
    # Uniform (torch default init) weights: reduce_range keeps fidelity high on every x86 CPU,
    # VNNI or not; without it an AVX2-only CPU measured a per-sample cosine of ~0.95.
    params = QuantizeDynamicParams(batch_sizes=[1], reduce_range=True, **fast)
    report = QuantizeDynamic().run(make_ctx(models["mlp_uniform"], params)).report
    assert report["fidelity"]["outputs"]["out"]["cosine_min"] > 0.99
    assert report["quantization"]["reduce_range"] is True


def test_saturation_note():
    avx2 = {"cpu_features": ["avx2", "fma"]}
    assert "reduce_range=true" in saturation_note(False, False, avx2, 0.95)
    assert "reduce_range=true" in saturation_note(True, False, avx2, None)
    assert saturation_note(False, False, avx2, 0.999) is None
    assert saturation_note(False, True, avx2, 0.9) is None
    assert saturation_note(True, False, {"cpu_features": ["avx2", "avx512_vnni"]}, 0.9) is None
    assert saturation_note(True, False, {"cpu_features": ["asimd"]}, 0.9) is None


def test_token_model_with_dataset(models, make_ctx, fast, tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(1)
    np.savez(path, input_ids=rng.integers(0, 1000, (40, 12)),
             attention_mask=np.ones((40, 12), np.int64), labels=np.zeros(40))
    params = QuantizeDynamicParams(batch_sizes=[4], fidelity_samples=30, fidelity_batch_size=8,
                                   weight_type="uint8", per_channel=True, **fast)
    report = QuantizeDynamic().run(make_ctx(models["tokens"], params, dataset=path)).report
    assert report["fidelity"]["source"] == "dataset" and report["fidelity"]["samples"] == 30
    assert report["fidelity"]["outputs"]["out"]["samples"] == 30
    assert report["quantization"]["weight_type"] == "uint8"
    assert report["comparison"][0]["input_shapes"]["input_ids"] == [4, 12]
    # The embedding table (Gather) is weight-quantized: int8 storage + DequantizeLinear.
    assert report["nodes"]["quantized_ops"].get("DequantizeLinear", 0) >= 1


def test_nothing_to_quantize(models, make_ctx, fast, empty_cwd):
    ctx = make_ctx(models["addrelu"], QuantizeDynamicParams(**fast))
    with pytest.raises(UnsupportedModel) as err:
        QuantizeDynamic().run(ctx)
    assert "MatMul" in err.value.detail and "'Add'" in err.value.detail
    assert "'Relu'" in err.value.detail
    assert os.listdir(empty_cwd) == [] and not (ctx.workdir / "model.onnx").exists()


def test_op_types_filter_can_leave_nothing(models, make_ctx, fast):
    # Only Conv requested on an MLP: nothing matches, refused before quantizing.
    params = QuantizeDynamicParams(op_types=["Conv"], **fast)
    with pytest.raises(UnsupportedModel, match="'Conv'"):
        QuantizeDynamic().run(make_ctx(models["mlp"], params))


def test_params_schema():
    schema = QuantizeDynamicParams.model_json_schema()
    props = schema["properties"]
    assert props["min_runs"]["default"] == 20 and props["min_runs"]["description"]
    assert props["weight_type"]["enum"] == ["int8", "uint8"]
    assert QuantizeDynamicParams(threads=2).threads == [2]
    with pytest.raises(ValueError):
        QuantizeDynamicParams(op_types=["Softmax"])


def _point(bs, parent, result):
    return {"batch_size": bs, "threads": 1, "parent_p50_ms": parent, "result_p50_ms": result,
            "speedup": round(parent / result, 4)}


def test_verdict_slower_explains():
    nodes = {"quantized_ops": {"ConvInteger": 4, "DynamicQuantizeLinear": 4},
             "compute_quantized": 4, "compute_total": 5}
    v = verdict([_point(1, 2.0, 2.6), _point(8, 9.0, 8.0)], 0.3, nodes,
                "CPUExecutionProvider", 0.999)
    assert v["faster"] is False and v["smaller"] is True
    assert "NOT faster" in v["summary"] and "bs=1" in v["summary"] and "bs=8" not in v["summary"]
    assert "ConvInteger" in v["reasons"][0]
    v = verdict([_point(1, 0.05, 0.06)], 0.9, {"quantized_ops": {"MatMulInteger": 1},
                                               "compute_quantized": 1, "compute_total": 4},
                "CPUExecutionProvider", None)
    assert any("only 1 of 4" in r for r in v["reasons"])
    assert any("very fast already" in r for r in v["reasons"])
    v = verdict([_point(1, 2.0, 1.0)], 0.25, {"quantized_ops": {}, "compute_quantized": 1,
                                              "compute_total": 1}, "CPUExecutionProvider", 0.99)
    assert v["faster"] and v["reasons"] == [] and "speedup 2.00x)" in v["summary"]
    v = verdict([_point(1, 2.0, 1.0), _point(8, 1.01, 1.0)], 0.25, {"quantized_ops": {},
                "compute_quantized": 1, "compute_total": 1}, "CPUExecutionProvider", None)
    assert v["faster"] is None and v["speed"] == "inconclusive" and v["reasons"] == []
    assert "within measurement noise" in v["summary"] and "bs=8" in v["summary"]
    assert "NOT faster" not in v["summary"]


def test_standard_attention_op_is_left_to_its_matmuls(make_ctx, fast, tmp_path):
    """A dynamo export at opset 23 carries ONNX's own Attention op (ai.onnx domain). ORT's
    quantizer takes every node named "Attention" for its com.microsoft contrib op and wrote a
    QAttention the runtime rejects (bert, gpt2, whisper in the corpus): the standard op has no
    weights of its own, so the projections around it are quantized and it stays float."""
    import onnx
    import onnxruntime as ort
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)

        def forward(self, x):
            q, k, v = (t.view(x.shape[0], x.shape[1], 2, 8).transpose(1, 2)
                       for t in self.qkv(x).chunk(3, -1))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], 16))

    path = tmp_path / "attention.onnx"
    torch.onnx.export(SelfAttention().eval(), (torch.randn(2, 5, 16),), str(path), dynamo=True,
                      opset_version=23, input_names=["x"], external_data=False)
    assert any(n.op_type == "Attention" and n.domain in ("", "ai.onnx")
               for n in onnx.load(str(path)).graph.node)
    ctx = make_ctx(path, QuantizeDynamicParams(batch_sizes=[2], **fast))  # exported batch: 2
    result = QuantizeDynamic().run(ctx)
    quantized = onnx.load(str(result.output_path))
    assert not [n for n in quantized.graph.node if n.op_type == "QAttention"]
    assert [n for n in quantized.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    session = ort.InferenceSession(str(result.output_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    assert session.run(None, {"x": x})[0].shape == (2, 5, 16)
