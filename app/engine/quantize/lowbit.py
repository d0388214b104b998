"""Float16 conversion and 4-bit weight-only quantization (onnxruntime's MatMulNBits).

onnx/onnxruntime imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from app.engine.quantize.ort_tools import Staged, run_quantizer

# 4-bit Gather (GatherBlockQuantized) stores int4 tensors, which need opset 21 / IR 10.
INT4_GATHER_OPSET = 21


def convert_fp16(stage: Staged, dst: Path, *, exclude_nodes: Sequence[str],
                 exclude_op_types: Sequence[str]) -> None:
    """float32 -> float16 everywhere except graph inputs/outputs (kept float32 behind Casts,
    so callers feed and read what they did before) and the excluded nodes."""
    run_quantizer(stage, dst, "float16", "exclude the op types it fails on "
                  "(exclude_op_types) or set preprocess=false", _convert_fp16, stage.path, dst,
                  exclude_nodes=list(exclude_nodes), exclude_op_types=list(exclude_op_types))


def _convert_fp16(src: Path, dst: Path, *, exclude_nodes: list[str],
                  exclude_op_types: list[str]) -> None:
    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=False,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(INTEGER_OPS) + exclude_op_types,
        node_block_list=exclude_nodes)
    # The converter appends its Cast nodes at the end; the checker wants graph order.
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    onnx.save(wrapped.model, str(dst))


# Ops of an already-quantized model: their float inputs/outputs (scales, activations about to
# be quantized) must stay float32, or ORT rejects the graph (DynamicQuantizeLinear takes float).
INTEGER_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger",
               "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
               "QLinearConv", "QGemm", "MatMulNBits", "QLinearAdd", "QLinearMul")


def quantize_int4(stage: Staged, dst: Path, *, block_size: int, symmetric: bool,
                  accuracy_level: int | None, include_gather: bool,
                  exclude: Sequence[str]) -> None:
    """Weight-only 4-bit quantization of MatMul (and Gemm, rewritten to MatMul + Add first)
    and optionally Gather (embedding tables) weights, block-wise along the input axis."""
    run_quantizer(stage, dst, "4-bit", "try a smaller block_size, include_gather=false or "
                  "preprocess=false", _quantize_int4, stage.path, dst, block_size=block_size,
                  symmetric=symmetric, accuracy_level=accuracy_level,
                  include_gather=include_gather, exclude=list(exclude))


def _quantize_int4(src: Path, dst: Path, *, block_size: int, symmetric: bool,
                   accuracy_level: int | None, include_gather: bool, exclude: list[str]) -> None:
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    ops = ("MatMul", "Gather") if include_gather else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=block_size, is_symmetric=symmetric,
        accuracy_level=accuracy_level, nodes_to_exclude=exclude,
        op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst))


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, B const, C) with alpha=beta=1, transA=0 as MatMul(A, B') + C, in place.
    MatMulNBits only replaces MatMul, and torch.nn.Linear exports as Gemm. Returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    replaced = []
    for node in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.input[1] + "_matmul"
        graph.initializer.append(numpy_helper.from_array(weight, name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        new = [helper.make_node("MatMul", [node.input[0], name], [product], name=node.name)]
        if has_bias:
            new.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                        name=node.name + "_bias"))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, item in enumerate(new):
            graph.node.insert(position + offset, item)
        replaced.append(node.input[1])
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for name in set(replaced) - used:  # the transposed copy replaced it
        graph.initializer.remove(inits[name])
    return len(replaced)
