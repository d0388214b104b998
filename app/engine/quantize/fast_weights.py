"""Per-channel weight quantization in one vectorized pass, bit for bit what onnxruntime computes.

onnxruntime's quantizer (``BaseQuantizer.quantize_weight_per_channel_impl``, used by the dynamic
and QOperator quantizers) quantizes each output channel in a Python loop: MiniLM's 20,739
channels took about 2 s of a 3 s ``quantize_dynamic`` here, and ``quantize.auto`` waits on it.
``vectorized_per_channel`` patches that method, for the duration of a ``with``, with the same
arithmetic on whole arrays (the same dtypes at every step, the same rounding, the same
degenerate-channel rule), for the common case: float32 weights, (u)int8, no per-channel
overrides. Anything else goes to onnxruntime's own loop. ``tests/engine/quantize/test_fast_weights.py``
compares the two initializer by initializer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
from onnxruntime.quantization.base_quantizer import BaseQuantizer
from onnxruntime.quantization.quant_utils import (ONNX_TYPE_TO_NP_TYPE, TENSOR_NAME_QUANT_SUFFIX,
                                                  find_by_name, get_qmin_qmax_for_qType, normalize_axis,
                                                  tensor_proto_to_array)


def quantize_channels(weights: np.ndarray, axis: int, qtype: int, symmetric: bool, reduce_range: bool,
                      min_real_range: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zero points, scales, quantized weights) per channel along ``axis``, as onnxruntime's
    ``compute_scale_zp`` + ``quantize_nparray`` give them channel by channel."""
    moved = np.moveaxis(weights, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    qmin, qmax = get_qmin_qmax_for_qType(qtype, reduce_range, symmetric=symmetric)
    rmin = np.minimum(flat.min(axis=1), np.float32(0))
    rmax = np.maximum(flat.max(axis=1), np.float32(0))
    if min_real_range is not None:
        rmax = np.maximum(rmax, rmin + np.float32(min_real_range))
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale = (rmax.astype(np.float64) - rmin.astype(np.float64)) / (np.float64(qmax) - np.float64(qmin))
    degenerate = scale < np.finfo(np.float32).tiny
    if symmetric:
        zero_point = np.full(len(scale), np.round((qmin + qmax) / np.float64(2.0)), dtype=qmin.dtype)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate channels: 0 / 0
            zero_point = np.round(qmin - rmin / scale)
    zero_point = np.where(degenerate, 0, zero_point).astype(qmin.dtype)
    stored = scale.astype(np.float32)
    stored[degenerate] = np.float32(1.0)
    lo, hi = get_qmin_qmax_for_qType(qtype, reduce_range=False, symmetric=False)
    quantized = (flat.astype(np.float32) / stored[:, None]).round() + zero_point[:, None]
    np.clip(quantized, lo, hi, out=quantized)
    quantized = np.moveaxis(quantized.astype(ONNX_TYPE_TO_NP_TYPE[qtype]).reshape(moved.shape), 0, axis)
    return zero_point, stored, quantized


@contextmanager
def vectorized_per_channel() -> Iterator[None]:
    """Inside: onnxruntime's per-channel weight quantization runs vectorized where it can."""
    original = BaseQuantizer.quantize_weight_per_channel_impl

    def fast(self, weight_name, weight_qType, channel_axis, reduce_range=True, keep_float_weight=False):  # noqa: N803
        initializer = find_by_name(weight_name, self.model.initializer())
        overrides = self.tensor_quant_overrides.get_per_channel_overrides(weight_name, default_val=[{"axis": None}])
        if (initializer is None or initializer.data_type != onnx.TensorProto.FLOAT or keep_float_weight
                or weight_qType not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                or len(overrides) != 1 or set(overrides[0]) != {"axis"}):
            return original(self, weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight)
        weights = tensor_proto_to_array(initializer)
        valid, axis = normalize_axis(channel_axis, weights.ndim)
        if not valid or weights.size == 0:
            return original(self, weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight)
        zero_point, scale, quantized = quantize_channels(
            weights, axis, weight_qType, self.is_weight_symmetric(weight_qType), self.reduce_range and reduce_range,
            self.min_real_range)
        q_name, zp_name, scale_name = weight_name + TENSOR_NAME_QUANT_SUFFIX, weight_name + "_zero_point", \
            weight_name + "_scale"
        shape = [initializer.dims[axis]]
        self.model.initializer_extend([
            onnx.helper.make_tensor(scale_name, initializer.data_type, shape, scale.tolist()),
            onnx.helper.make_tensor(zp_name, weight_qType, shape, zero_point.tolist()),
            onnx.numpy_helper.from_array(quantized.reshape(initializer.dims), q_name),
        ])
        return q_name, zp_name, scale_name

    BaseQuantizer.quantize_weight_per_channel_impl = fast
    try:
        yield
    finally:
        BaseQuantizer.quantize_weight_per_channel_impl = original
