"""SmoothQuant smoothing and padding-aware calibration (app/engine/quantize/smooth.py), on tiny
real models exported from torch in the test."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.engine.transformer_models import export_encoder, tokens

pytest.importorskip("torch")


def outlier_block(path: Path, *, residual: bool) -> Path:
    """x [batch, 8, 16] -> LayerNorm (channel 3's gamma = 60: an activation outlier channel)
    -> Linear 16->32 -> ReLU -> Linear 32->16 (+ the LayerNorm output when ``residual``, as in
    post-LN transformers, so 1/s cannot be folded into the LayerNorm)."""
    import torch

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = torch.nn.LayerNorm(16)
            self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
            with torch.no_grad():
                self.ln.weight.uniform_(0.5, 1.5)
                self.ln.weight[3] = 60.0
                self.ln.bias.uniform_(-0.2, 0.2)

        def forward(self, x):
            h = self.ln(x)
            y = self.down(torch.relu(self.up(h)))
            return y + h if residual else y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(2, 8, 16),), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def feeds(n: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 8, 16)).astype(np.float32)} for _ in range(n)]


def run(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    blob = model if isinstance(model, bytes) else Path(model).read_bytes()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})[0]


def smoothed_bytes(path: Path, data: list[dict], alpha: float, mask: str | None = None) -> tuple[bytes, list[str]]:
    import onnx

    from app.engine.quantize.smooth import smooth, smoothable, tensor_stats

    model = onnx.load(str(path))
    acts = list(smoothable(model))
    stats = tensor_stats(path, acts, data, mask, per_channel=acts)
    done = smooth(model, {k: v["absmax"] for k, v in stats.items()}, alpha)
    return model.SerializeToString(), done


@pytest.mark.parametrize("residual", [False, True])
def test_smoothing_keeps_the_float_function(tmp_path, residual):
    import onnx

    path = outlier_block(tmp_path / "block.onnx", residual=residual)
    data = feeds()
    blob, done = smoothed_bytes(path, data, alpha=0.5)
    assert len(done) == 2  # the LayerNorm output and the ReLU output
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    # folded into the LayerNorm when only the MatMul reads it; a Mul when the residual does too
    assert ops.count("Mul") == (2 if residual else 1)
    test = feeds(2, seed=1)[0]
    np.testing.assert_allclose(run(blob, test), run(path, test), rtol=1e-4, atol=1e-4)


def test_smoothing_a_bert_encoder_keeps_its_outputs(tmp_path):
    path = export_encoder("bert", tmp_path / "bert.onnx", dynamo=False)
    data = [tokens(8, seed=s) for s in range(2)]
    blob, done = smoothed_bytes(path, data, alpha=0.75, mask="attention_mask")
    assert len(done) >= 8  # per layer: Q/K/V input, attention output, FFN in and out
    test = tokens(4, seed=5)
    np.testing.assert_allclose(run(blob, test), run(path, test), rtol=1e-4, atol=1e-4)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("integer", [False, True])
def test_smoothed_static_int8_is_closer_to_float_on_an_outlier_channel(tmp_path, residual, integer):
    import onnx

    from app.engine.quantize.smooth import integer_w8a8, static_w8a8

    path = outlier_block(tmp_path / "block.onnx", residual=residual)
    data = feeds()
    test = feeds(4, seed=2)
    reference = np.concatenate([run(path, f) for f in test])
    scores = {}
    for alpha in (None, 0.5):
        out = tmp_path / f"q-{alpha}.onnx"
        done = (integer_w8a8 if integer else static_w8a8)(path, out, data, alpha=alpha)
        assert bool(done["smoothed"]) == (alpha is not None)
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert "QuantizeLinear" in ops
        if integer:  # both Linear layers, their bias Adds folded in
            assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("Add") == residual
        scores[alpha] = cosine(np.concatenate([run(out, f) for f in test]), reference)
    # the outlier channel (|x| ~ 60 against ~1) leaves the other channels a few int8 levels
    # (unsmoothed: 1 - cosine 2.6e-4, smoothed 6e-5 without the residual)
    assert 1 - scores[0.5] < (1 - scores[None]) / 2, scores


def test_padding_is_left_out_of_activation_ranges(tmp_path):
    from app.engine.quantize.smooth import tensor_stats

    path = outlier_block(tmp_path / "block.onnx", residual=False)
    import onnx

    model = onnx.load(str(path))
    # a mask input the model ignores; the padded rows carry huge values
    model.graph.input.append(onnx.helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64,
                                                                ["batch", 8]))
    onnx.save(model, str(path))
    x = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
    mask = np.ones((2, 8), np.int64)
    mask[:, 6:] = 0
    x[:, 6:] = 1000.0
    stats = tensor_stats(path, ["x"], [{"x": x, "attention_mask": mask}], "attention_mask", per_channel=["x"])
    assert stats["x"]["max"] < 10 and stats["x"]["absmax"].max() < 10
    unmasked = tensor_stats(path, ["x"], [{"x": x, "attention_mask": mask}], None)
    assert unmasked["x"]["max"] == 1000.0


@pytest.mark.parametrize("fmt", ["qdq", "integer"])
def test_quantize_static_with_smooth_alpha_and_mask_padding(tmp_path, fmt):
    """The technique's transformer recipe end to end: only the weight MatMuls quantized (their
    outputs float), padding left out of the ranges, the report says what was done."""
    import onnx

    from app.engine.base import Context
    from app.engine.quantize.static import QuantizeStatic, QuantizeStaticParams

    model = export_encoder("bert", tmp_path / "bert.onnx", dynamo=False)
    data = tmp_path / "tokens.npz"
    np.savez(data, **tokens(16))
    workdir = tmp_path / "w"
    workdir.mkdir()
    params = QuantizeStaticParams(samples=16, smooth_alpha=0.75, mask_padding=True, format=fmt, batch_sizes=[1],
                                  warmup=1, min_runs=3, min_seconds=0.01, max_seconds=0.5)
    result = QuantizeStatic().run(Context(model_path=model, params=params, workdir=workdir,
                                          dataset_path=data))
    q = result.report["quantization"]
    assert q["smooth_alpha"] == 0.75 and q["mask_padding"] and q["mask_input"] == "attention_mask"
    assert q["smoothed_tensors"] >= 8 and q["op_types"] == ["MatMul"]
    graph = onnx.load(str(result.output_path)).graph
    ops = {n.op_type for n in graph.node}
    if fmt == "qdq":
        quantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        assert quantized & {i.name for i in graph.initializer}  # the MatMul weights are int8
    else:
        assert "MatMulIntegerToFloat" in ops and not graph.value_info
    assert "QLinearMatMul" not in ops
    assert result.report["fidelity"]["outputs"]["out"]["cosine_mean"] > 0.99


@pytest.mark.parametrize("bad", [{"calibration": "entropy"}, {"activation_type": "int8"},
                                 {"format": "integer", "op_types": ["Conv"]},
                                 {"format": "integer", "per_channel": False}])
def test_smooth_alpha_refuses_other_calibrations(bad):
    from pydantic import ValidationError

    from app.engine.quantize.static import QuantizeStaticParams

    with pytest.raises(ValidationError):
        QuantizeStaticParams(smooth_alpha=0.5, **bad)
