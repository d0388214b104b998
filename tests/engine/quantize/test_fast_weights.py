"""The vectorized per-channel weight quantizer gives onnxruntime's own bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.base_quantizer import BaseQuantizer

from app.engine.quantize.fast_weights import quantize_channels, vectorized_per_channel


def _weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-3, 3, size=shape[:1] + (1,) * (len(shape) - 1))
    w[0] = 0.0                      # a dead channel: scale 1, zero point 0
    w[1] = np.abs(w[1])             # all positive: rmin clamps to 0
    w[2] = 1e-42                    # denormal range: below float32's tiny
    return w.astype(np.float32)


@pytest.mark.parametrize("qtype", [TensorProto.INT8, TensorProto.UINT8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("shape,axis", [((64, 48), 1), ((64, 48), 0), ((8, 3, 3, 3), 0)])
def test_channels_match_onnxruntime_per_channel_loop(qtype, symmetric, reduce_range, shape, axis):
    from onnxruntime.quantization.quant_utils import quantize_data

    w = np.moveaxis(_weights(np.random.default_rng(0), (shape[axis], *np.delete(shape, axis))), 0, axis)
    zp, scale, q = quantize_channels(w, axis, qtype, symmetric, reduce_range, None)
    for c in range(w.shape[axis]):
        rzp, rscale, rq = quantize_data(w.take(c, axis).flatten(), qtype, symmetric, reduce_range=reduce_range)
        assert zp[c] == rzp and zp.dtype == rzp.dtype
        assert scale[c] == rscale and scale.dtype == rscale.dtype
        np.testing.assert_array_equal(q.take(c, axis).flatten(), rq)
        assert q.dtype == rq.dtype


def _model(path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    with torch.no_grad():
        net[0].weight[3] = 0.0
    torch.onnx.export(net, (torch.randn(2, 32),), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "b"}})
    return path


@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8])
def test_quantize_dynamic_writes_the_same_model(tmp_path, weight_type):
    src = _model(tmp_path / "m.onnx")
    quantize_dynamic(src, tmp_path / "ref.onnx", per_channel=True, weight_type=weight_type)
    original = BaseQuantizer.quantize_weight_per_channel_impl
    with vectorized_per_channel():
        assert BaseQuantizer.quantize_weight_per_channel_impl is not original
        quantize_dynamic(src, tmp_path / "fast.onnx", per_channel=True, weight_type=weight_type)
    assert BaseQuantizer.quantize_weight_per_channel_impl is original
    ref, fast = onnx.load(tmp_path / "ref.onnx"), onnx.load(tmp_path / "fast.onnx")
    assert [n.SerializeToString() for n in ref.graph.node] == [n.SerializeToString() for n in fast.graph.node]
    ref_inits = {i.name: onnx.numpy_helper.to_array(i) for i in ref.graph.initializer}
    fast_inits = {i.name: onnx.numpy_helper.to_array(i) for i in fast.graph.initializer}
    assert ref_inits.keys() == fast_inits.keys() and any(k.endswith("_quantized") for k in ref_inits)
    for name, value in ref_inits.items():
        assert fast_inits[name].dtype == value.dtype, name
        np.testing.assert_array_equal(fast_inits[name], value, err_msg=name)
