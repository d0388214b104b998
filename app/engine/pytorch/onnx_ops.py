"""Converters onnx2torch lacks (or gets wrong) for real exports, added through its own registry.

onnx2torch looks a converter up by the operator's ``since_version`` at the model's opset, so a
model exported at a newer opset than onnx2torch knows (torch's ``dynamo=True`` exporter writes
opset 18-20) fails on ``Shape``/``Reshape``/``Cast`` although their meaning did not change.
``SAME_MEANING`` lists the newer versions whose changes are only wider type lists (float8, int4,
bfloat16, strings): they reuse onnx2torch's converter of the previous version, which still
refuses the new types it cannot represent. Ops onnx2torch has no converter for at all (``Gelu``,
``Trilu``) get one here, and a few of its converters are replaced: weights outside Conv/Gemm
become trainable (MatMul by a constant is an ``nn.Linear``), and converters that trusted shapes
shape inference left unknown no longer do. Everything is registered once, on first use
(``register``).
"""

from __future__ import annotations

from typing import Any

import torch
from onnx2torch.node_converters import registry
from onnx2torch.node_converters.global_average_pool import OnnxGlobalAveragePool
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.node_converters.split import OnnxSplit13
from onnx2torch.utils.custom_export_to_onnx import DefaultExportToOnnx
from onnx2torch.utils.common import (OnnxMapping, OnnxToTorchModule, OperationConverterResult,
                                     get_const_value, onnx_mapping_from_node)

_NEWER = (19, 21, 23, 24, 25)  # the opsets that only extended the tensor types of these ops
SAME_MEANING: dict[str, tuple[int, ...]] = {
    "GreaterOrEqual": (16,), "LessOrEqual": (16,),  # bfloat16
    "Equal": (19,),  # strings
    "IsNaN": (20,), "IsInf": (20,),  # float8
    "ConstantOfShape": (20, 21, 23, 24, 25),
    "Shape": _NEWER, "Identity": _NEWER, "Constant": _NEWER,
    "Cast": _NEWER,  # 19 also added `saturate`, which only applies to float8 targets
    "Unsqueeze": _NEWER[1:], "Transpose": _NEWER[1:], "Flatten": _NEWER[1:],
    "Squeeze": _NEWER[2:],
    # opset 22 added bfloat16 to the convolution, pooling and activation ops CNNs use
    **{op: (22,) for op in ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "GlobalAveragePool",
                            "GlobalMaxPool", "Dropout", "InstanceNormalization", "HardSigmoid",
                            "HardSwish", "Elu", "Selu", "Softplus", "Softsign", "Mish", "LpPool",
                            "Round", "Sin", "Cos")},
}
_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSumSquare")
_registered = False


def register() -> None:
    """Add the aliases and converters to onnx2torch's registry (idempotent)."""
    global _registered
    if _registered:
        return
    # Reshape: onnx2torch refuses allowzero=1 (the dynamo exporter writes it at opset 18 too).
    for version in (5, 13, 14):
        _replace("Reshape", version, _reshape)
    for version in _NEWER:
        _add("Reshape", version, registry.get_converter("Reshape", 14))
    # onnx2torch reads shapes from value_info, where an unknown dimension reads 0 and an unknown
    # rank reads []: GlobalAveragePool then averages over every axis, LayerNorm normalizes over
    # [0]. Both are built here from what is certain (the input at run time, the scale's shape).
    _replace("GlobalAveragePool", 1, lambda _original: _global_average_pool)
    _replace("LayerNormalization", 17, _layer_norm)
    # Flatten: onnx2torch's fails when the input has exactly `axis` dimensions (BERT's
    # TorchScript export flattens its 2-D mask with axis=2).
    for version in (9, 11, 13):
        _replace("Flatten", version, lambda _original: _flatten)
    for op, versions in SAME_MEANING.items():
        for version in versions:
            try:
                previous = registry.get_converter(op, version - 1)
            except NotImplementedError:
                continue
            _add(op, version, previous)
    # Slice-1 (starts/ends/axes attributes, opset <= 9): onnx2torch files its converter under
    # version 9, where no model looks, and that one fails on list attributes.
    _add("Slice", 1, _slice_1)
    _add("Split", 18, _split)
    for op in _REDUCE_18:  # axes moved from an attribute to an input
        _add(op, 18, _reduce)
    _add("ReduceMax", 20, _reduce)  # 20: bool inputs
    _add("ReduceMin", 20, _reduce)
    _add("Gelu", 20, _gelu)
    _add("Trilu", 14, _trilu)
    _register_weights()
    _registered = True


def _replace(op: str, version: int, wrap: Any) -> None:
    """Replace onnx2torch's converter in place (its registry has no replace): ``wrap`` gets the
    original and returns the converter to use."""
    key = registry.OperationDescription(domain="", operation_type=op, version=version)
    table = registry._CONVERTER_REGISTRY  # noqa: SLF001
    if key in table:
        table[key] = wrap(table[key])


def _add(op: str, version: int, converter: Any) -> None:
    try:
        registry.add_converter(operation_type=op, version=version)(converter)
    except ValueError:  # a newer onnx2torch has its own: keep it
        pass


def _result(node: Any, module: Any) -> Any:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _gelu(node: Any, graph: Any) -> Any:  # noqa: ARG001 - onnx2torch's converter signature
    approximate = node.attributes.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    # torch's own module: pruning sees an element-wise activation it knows.
    return _result(node, torch.nn.GELU(approximate=approximate))


class OnnxTrilu(torch.nn.Module, OnnxToTorchModule):
    def __init__(self, upper: bool) -> None:
        super().__init__()
        self.upper = upper

    def forward(self, x: Any, k: Any = None) -> Any:
        diagonal = 0 if k is None else int(k)
        return torch.triu(x, diagonal) if self.upper else torch.tril(x, diagonal)


def _trilu(node: Any, graph: Any) -> Any:  # noqa: ARG001
    return _result(node, OnnxTrilu(bool(node.attributes.get("upper", 1))))


class OnnxReshapeAllowZero(OnnxReshape):
    """Reshape with allowzero=1 (the dynamo exporter writes it): a 0 in the shape is an empty
    dimension, not "copy the input's", exactly torch.reshape's meaning."""

    def forward(self, input_tensor: Any, shape: Any) -> Any:
        def _forward() -> Any:
            return torch.reshape(input_tensor, torch.Size(shape))

        if torch.onnx.is_in_onnx_export():
            return DefaultExportToOnnx.export(_forward, "Reshape", input_tensor, shape,
                                              {"allowzero_i": 1})
        return _forward()


def _reshape(original: Any) -> Any:
    def convert(node: Any, graph: Any) -> Any:
        if node.attributes.get("allowzero", 0) == 1:
            return _result(node, OnnxReshapeAllowZero())
        return original(node, graph)

    return convert


class OnnxSplit18(OnnxSplit13):
    """Split-18: with ``num_outputs`` an uneven axis gives equal chunks and a smaller last one."""

    def forward(self, input_tensor: Any, split: Any = None) -> Any:
        if split is not None:
            return torch.split(input_tensor, split.tolist(), dim=self.axis)
        size = -(-input_tensor.shape[self.axis] // self.num_splits)
        return torch.split(input_tensor, size, dim=self.axis)


def _split(node: Any, graph: Any) -> Any:  # noqa: ARG001
    return _result(node, OnnxSplit18(len(node.output_values), node.attributes.get("axis", 0)))


class OnnxFlatten(torch.nn.Module, OnnxToTorchModule):
    """ONNX Flatten: (d0 x ... x d[axis-1], d[axis] x ... x dn), for any axis in [-r, r]."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Any) -> Any:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if axis == 0:
            return torch.flatten(x).unsqueeze(0)
        tail = torch.flatten(x, start_dim=axis) if axis < x.dim() else x.unsqueeze(-1)
        return torch.flatten(tail, end_dim=axis - 1)


def _flatten(node: Any, graph: Any) -> Any:  # noqa: ARG001
    return _result(node, OnnxFlatten(node.attributes.get("axis", 1)))


def _global_average_pool(node: Any, graph: Any) -> Any:  # noqa: ARG001
    return _result(node, OnnxGlobalAveragePool())


def _layer_norm(original: Any) -> Any:
    def convert(node: Any, graph: Any) -> Any:
        scale = node.input_values[1]
        bias = node.input_values[2] if len(node.input_values) > 2 and node.input_values[2] else None
        if scale not in graph.initializers or (bias is not None and bias not in graph.initializers):
            return original(node, graph)
        weight = graph.initializers[scale].to_torch()
        module = torch.nn.LayerNorm(tuple(weight.shape), eps=node.attributes.get("epsilon", 1e-5))
        with torch.no_grad():
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(graph.initializers[bias].to_torch())
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    return convert


class OnnxSliceAttributes(torch.nn.Module, OnnxToTorchModule):
    """Slice-1: fixed starts/ends per axis, step 1 (Python slicing clamps as ONNX does)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int]) -> None:
        super().__init__()
        self.starts, self.ends, self.axes = starts, ends, axes

    def forward(self, x: Any) -> Any:
        for start, end, axis in zip(self.starts, self.ends, self.axes):
            axis = axis + x.dim() if axis < 0 else axis
            x = x[(slice(None),) * axis + (slice(start, end),)]
        return x


def _slice_1(node: Any, graph: Any) -> Any:  # noqa: ARG001
    starts, ends = list(node.attributes["starts"]), list(node.attributes["ends"])
    axes = list(node.attributes.get("axes", range(len(starts))))
    return _result(node, OnnxSliceAttributes(starts, ends, axes))


def _reduce(node: Any, graph: Any) -> Any:
    """Reduce-18: the axes input must be a constant (a computed one is refused, as before)."""
    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with computed axes") from None
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        module: Any = torch.nn.Identity()
    else:
        module = OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1))
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


# ---------------------------------------------------------------- weights outside Conv/Gemm
# onnx2torch keeps every initializer as a buffer and converts MatMul to torch.matmul: a linear
# layer applied to a 3-D/4-D tensor (ConvNeXt's point-wise MLP, transformer FFNs: MatMul + Add),
# a layer scale or a decomposed LayerNorm's weight (Mul/Add by a constant) then neither trains
# nor shrinks with the channels Torch-Pruning removes. A MatMul by a constant matrix becomes an
# nn.Linear, and a constant tensor operand of Add/Sub/Mul/Div an nn.Parameter (pruning treats
# it as an unwrapped parameter along its channel dimension).


def _register_weights() -> None:
    for version in (1, 9, 13):
        _replace("MatMul", version, _matmul)
    for op in _ARITHMETIC:
        for version in (7, 13, 14):
            _replace(op, version, _arithmetic)


_ARITHMETIC = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


def _weight(name: str, graph: Any) -> Any:
    """The float initializer called ``name`` as a tensor, or None."""
    if name not in graph.initializers:
        return None
    tensor = graph.initializers[name].to_torch()
    return tensor if tensor.is_floating_point() else None


def _matmul(original: Any) -> Any:
    def convert(node: Any, graph: Any) -> Any:
        x, w = node.input_values
        weight = _weight(w, graph)
        if weight is None or weight.dim() != 2 or x in graph.initializers:
            return original(node, graph)
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
        mapping = OnnxMapping(inputs=(x,), outputs=node.output_values)
        return OperationConverterResult(torch_module=linear, onnx_mapping=mapping)

    return convert


class OnnxConstantOperand(torch.nn.Module, OnnxToTorchModule):
    """``x op weight`` (or ``weight op x``) with the constant as a trainable parameter."""

    def __init__(self, op: str, weight: Any, weight_first: bool) -> None:
        super().__init__()
        self.op, self.weight_first = op, weight_first
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: Any) -> Any:
        a, b = (self.weight, x) if self.weight_first else (x, self.weight)
        return _ARITHMETIC[self.op](a, b)


def _arithmetic(original: Any) -> Any:
    def convert(node: Any, graph: Any) -> Any:
        first, second = node.input_values
        weights = [_weight(first, graph), _weight(second, graph)]
        if (weights[0] is None) == (weights[1] is None):  # none constant, or both
            return original(node, graph)
        position = 0 if weights[0] is not None else 1
        weight = weights[position]
        if weight.numel() < 2:  # a scalar (an epsilon, a scale): stays a constant
            return original(node, graph)
        module = OnnxConstantOperand(node.operation_type, weight, position == 0)
        mapping = OnnxMapping(inputs=(node.input_values[1 - position],), outputs=node.output_values)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    return convert
