"""ONNX rewrites that make a graph prunable, applied to a copy before onnx2torch converts it.

Torch-Pruning removes channels from the converted module and then runs it again: every shape
written into the graph as a constant must still hold with fewer channels. Exporters write such
constants where a flatten or a padding was meant:

- a classifier head ``x.view(-1, C)`` / ``x.view(N, -1)`` after pooling becomes a Reshape to a
  constant ``[-1, C]`` (the dynamo exporter folds every shape): with fewer channels it no longer
  divides. When shape inference shows the Reshape merges every dimension after the batch, it is a
  Flatten(axis=1), which follows the channel count.
- ``auto_pad=SAME_UPPER/SAME_LOWER`` (Keras/TF-style convolutions, EfficientNet): onnx2torch has
  no converter for it; from the inferred input size (or any size, when the stride is 1) it is
  explicit ``pads``.
- a pool whose one window covers the whole last feature map (a ceil-mode AvgPool at opset 9,
  with uneven pads onnx2torch refuses) is the global pool it means.
- Identity nodes that rename a weight (TorchScript's deduplicated initializers) are folded, so
  onnx2torch finds the weight among the initializers.
- Reshape targets computed from ``Shape`` (TorchScript's ``x.view(x.size(0), -1)``, attention's
  head split) become constants measured at two batch sizes (the batch as 0 or -1): onnx2torch's
  shape operators re-export with the sizes they were traced at, batch included.
- a channel shuffle's reshapes, (N, C, H, W) -> (N, g, C/g, H, W) and back, take C/g and C
  from the input's shape at run time instead, so they follow the channels pruning leaves.

The rewrite runs in a bounded child (shape inference and the two measuring runs are native code
on an uploaded graph).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import AttributeProto, TensorProto, helper, numpy_helper, shape_inference

from app.engine.base import DEFAULT_NATIVE_STEP_TIMEOUT_S
from app.engine.runtime.inputs import generate_feed
from app.engine.runtime.isolate import run_bounded

_POOLS_AND_CONVS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def prunable_copy(path: Path, workdir: Path, deadline_s: float = DEFAULT_NATIVE_STEP_TIMEOUT_S) -> Path:
    """The model rewritten for pruning (``path`` itself when no rewrite applies)."""
    target = workdir / "prunable.onnx"
    changed = run_bounded(_rewrite_file, str(path), str(target), deadline_s=deadline_s,
                          step="ONNX rewrites before pruning", cwd=workdir)
    return target if changed else path


def _rewrite_file(source: str, target: str) -> list[str]:
    model = onnx.load(source, load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return []  # its weights stay beside the original: converted from there, unchanged
    changes = _constant_reshape_targets(model, source)
    changes += canonicalize(model)
    if changes:
        onnx.save(model, target)
    return changes


def canonicalize(model: Any) -> list[str]:
    """Rewrite ``model`` (an onnx.ModelProto) in place; returns what was changed."""
    inferred = shape_inference.infer_shapes(model)
    shapes = _shapes(inferred.graph)
    constants = _constants(model.graph)
    changes = _fold_identities(model.graph)
    nodes = []
    made_by = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type in _POOLS_AND_CONVS and _explicit_same_pads(node, shapes):
            changes.append(f"{node.name or node.output[0]}: auto_pad to explicit pads")
        elif node.op_type in ("AveragePool", "MaxPool") and _global_pool(node, shapes):
            changes.append(f"{node.name or node.output[0]}: {node.op_type}")
        elif node.op_type == "Reshape" and _flatten_head(node, shapes, constants):
            changes.append(f"{node.name or node.output[0]}: Reshape to Flatten(axis=1)")
        elif node.op_type == "Reshape":
            computed = _channel_groups_reshape(node, shapes, constants, model.graph, made_by)
            if computed:
                nodes.extend(computed)
                changes.append(f"{node.name or node.output[0]}: channel groups from the input's shape")
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changes


def _fold_identities(graph: Any) -> list[str]:
    """Identity nodes that only rename an initializer (the TorchScript exporter writes them for
    weights it deduplicated) are removed: onnx2torch looks weights up among initializers."""
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return []  # a subgraph may read the renamed value: leave the names alone
    weights = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    renamed = {n.output[0]: n.input[0] for n in graph.node
               if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs}
    if not renamed:
        return []
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in renamed)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)
    return [f"{len(renamed)} Identity nodes of initializers removed"]


def _shapes(graph: Any) -> dict[str, list[int | str | None]]:
    """Name -> dims (an int, a symbol, or None when unknown) of every typed value."""
    out = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            out[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in t.shape.dim]
    return out


def _constants(graph: Any) -> dict[str, list[int]]:
    """Integer tensors known without running the graph (initializers, Constant nodes)."""
    out = {}
    for init in graph.initializer:
        if init.data_type in (TensorProto.INT32, TensorProto.INT64):
            out[init.name] = numpy_helper.to_array(init).reshape(-1).tolist()
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type in (TensorProto.INT32, TensorProto.INT64):
                out[node.output[0]] = numpy_helper.to_array(t).reshape(-1).tolist()
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: Any, name: str, value: Any) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def _explicit_same_pads(node: Any, shapes: dict) -> bool:
    """SAME_UPPER / SAME_LOWER as pads: output = ceil(input / stride), the odd pixel at the end
    (UPPER) or the start (LOWER). Needs the input's spatial size unless every stride is 1."""
    mode = _attr(node, "auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("SAME_UPPER", "SAME_LOWER") or node.op_type == "ConvTranspose":
        return False
    kernel = _attr(node, "kernel_shape")
    if kernel is None:  # Conv may leave it to the weight's shape
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        kernel = weight[2:] if weight else None
    if not kernel or not all(isinstance(k, int) and k > 0 for k in kernel):
        return False
    rank = len(kernel)
    strides = _attr(node, "strides") or [1] * rank
    dilations = _attr(node, "dilations") or [1] * rank
    size = (shapes.get(node.input[0]) or [None] * (rank + 2))[2:]
    begin, end = [], []
    for k, s, d, n in zip(kernel, strides, dilations, size):
        reach = (k - 1) * d + 1
        if s == 1:
            total = reach - 1
        elif isinstance(n, int) and n > 0:
            total = max((math.ceil(n / s) - 1) * s + reach - n, 0)
        else:
            return False  # depends on a size only known at run time
        small, large = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    _set_attr(node, "auto_pad", None)
    _set_attr(node, "pads", begin + end)
    return True


def _global_pool(node: Any, shapes: dict) -> bool:
    """A pool whose one window covers the whole input is a global pool (a ceil_mode pool over
    the last feature map, written at opset 9 as a kernel larger than the input with uneven pads,
    which onnx2torch refuses). Averages must exclude the padding (count_include_pad=0)."""
    size = (shapes.get(node.input[0]) or [])[2:]
    out = (shapes.get(node.output[0]) or [])[2:]
    kernel = _attr(node, "kernel_shape") or []
    if (not size or len(kernel) != len(size) or out != [1] * len(size)
            or not all(isinstance(n, int) and n > 0 for n in size)
            or (node.op_type == "AveragePool" and _attr(node, "count_include_pad", 0))
            or len(node.output) > 1 or (_attr(node, "dilations") or [1] * len(size)) != [1] * len(size)):
        return False
    pads = _attr(node, "pads") or [0] * 2 * len(size)
    if any(p > k - 1 or p + n > k for p, n, k in zip(pads, size, kernel)):
        return False  # the window starts inside the input or stops before its end
    node.op_type = "Global" + node.op_type
    del node.attribute[:]
    return True


def _flatten_head(node: Any, shapes: dict, constants: dict) -> bool:
    """A Reshape to a constant 2-D shape that keeps dimension 0 and merges all the others is
    Flatten(axis=1): rewritten so the merged size follows the channels pruning leaves."""
    source = shapes.get(node.input[0])
    target = constants.get(node.input[1]) if len(node.input) > 1 else None
    if not source or len(source) < 2 or target is None or len(target) != 2:
        return False
    rest = source[1:]
    merged = math.prod(rest) if all(isinstance(n, int) and n > 0 for n in rest) else None
    first, second = target
    keeps_first = (first == 0 and not _attr(node, "allowzero", 0)) or (
        isinstance(source[0], int) and source[0] > 0 and first == source[0])
    if keeps_first:
        ok = second == -1 or (merged is not None and second == merged)
    else:  # [-1, C]: the batch is inferred from C = everything after it
        ok = first == -1 and merged is not None and second == merged
    if not ok:
        return False
    data = node.input[0]
    del node.input[:]
    node.input.append(data)
    node.op_type = "Flatten"
    del node.attribute[:]
    _set_attr(node, "axis", 1)
    return True


def _channel_groups_reshape(node: Any, shapes: dict, constants: dict, graph: Any,
                            made_by: dict) -> list[Any]:
    """A channel shuffle's constant reshapes, x: (N, C, H, W) -> (N, g, C/g, H, W), a
    Transpose, then back to (N, C, H, W), rewritten to take C/g and C from x's shape at run time
    (as the TorchScript exporter writes them), so they follow a pruned C. Returns the nodes
    computing the new shape (to insert before ``node``), or [] when not such a reshape."""
    from onnx import helper, numpy_helper

    source = shapes.get(node.input[0])
    target = constants.get(node.input[1]) if len(node.input) > 1 else None
    if not source or target is None or {len(source), len(target)} != {4, 5}:
        return []
    copies = 0 if not _attr(node, "allowzero", 0) else -1  # a 0 copies the input's dimension
    if not all(isinstance(n, int) and n > 0 for n in source[1:]) or target[0] not in (-1, copies, source[0]):
        return []
    split = len(source) == 4
    if split:
        x = node.input[0]
        if list(target[3:]) != source[2:] or target[1] * target[2] != source[1]:
            return []
    else:  # the merge reads the shape of the tensor the split took (a traced shape otherwise)
        shuffle = made_by.get(node.input[0])
        before = made_by.get(shuffle.input[0]) if shuffle is not None and shuffle.op_type == "Transpose" else None
        if before is None or before.op_type != "Reshape" or \
                shapes.get(before.input[0], [None])[1:] != list(target[1:]):
            return []
        x = before.input[0]
    base = f"{node.output[0]}__lathe_shape"
    made = [helper.make_node("Shape", [x], [f"{base}_all"])]
    if split:  # (N, g, C/g, H, W): g stays, C/g follows C

        def const(name: str, values: list[int]) -> str:
            graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}_{name}"))
            return f"{base}_{name}"

        def dims(start: int, end: int) -> str:  # Gather: the same at every opset
            made.append(helper.make_node("Gather", [f"{base}_all", const(f"i{start}", list(range(start, end)))],
                                         [f"{base}_dims{start}"], axis=0))
            return f"{base}_dims{start}"

        batch, channels, rest = dims(0, 1), dims(1, 2), dims(2, 4)
        made.append(helper.make_node("Div", [channels, const("groups", [target[1]])], [f"{base}_per_group"]))
        made.append(helper.make_node("Concat", [batch, const("g", [target[1]]), f"{base}_per_group", rest],
                                     [f"{base}_shape"], axis=0))
        node.input[1] = f"{base}_shape"
    else:
        node.input[1] = f"{base}_all"
    _set_attr(node, "allowzero", None)
    for k, new in enumerate(made):  # unique names: onnx2torch keys its nodes by name
        new.name = f"{base}_{k}"
    return made


def _constant_reshape_targets(model: Any, source: str) -> list[str]:
    """Reshape targets computed from ``Shape`` (TorchScript writes ``x.view(x.size(0), -1)``
    and attention's head split so) become constants, measured by running the model at batch 2
    and 3: a dimension that follows the batch is 0 (copy) or -1, and one copying the input's
    channels (dimension 1) stays a copy, so it follows pruning. onnx2torch's shape operators
    export with the sizes they were traced at, so a computed target would come back with the
    batch baked in. Only for inputs whose dimensions other than the first are fixed (images)."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    graph = model.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if not inputs or any(not d.HasField("dim_value") for i in inputs
                         for d in i.type.tensor_type.shape.dim[1:]):
        return []
    constants = _constants(graph)
    reshapes = [n for n in graph.node if n.op_type == "Reshape" and n.input[1] not in constants]
    if not reshapes:
        return []
    probe = _copy(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             (*shape_inference.infer_shapes(model).graph.value_info, *graph.input)}
    known = {o.name for o in probe.graph.output}
    for n in reshapes:
        for name, kind in ((n.input[1], TensorProto.INT64), (n.input[0], types.get(n.input[0]))):
            if name not in known and kind:
                probe.graph.output.append(helper.make_tensor_value_info(name, kind, None))
                known.add(name)
    specs = [{"name": i.name, "dtype": helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
              "shape": [d.dim_value or d.dim_param or None for d in i.type.tensor_type.shape.dim]}
             for i in inputs]
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        runs = [dict(zip(names, session.run(None, generate_feed(specs, b, dims={}, default_dim=8,
                                                                 int_high=10, seed=0))))
                for b in (2, 3)]
    except Exception:  # noqa: BLE001 - leave the graph as it is: onnx2torch may still manage
        return []
    changes = []
    for n in reshapes:
        two, three = ([int(v) for v in run[n.input[1]].reshape(-1)] for run in runs)
        dims = [run[n.input[0]].shape if n.input[0] in run else () for run in runs]
        zero_copies = not _attr(n, "allowzero", 0)
        target = []
        for i, (a, b) in enumerate(zip(two, three)):
            copy = zero_copies and i < min(len(d) for d in dims) and (a, b) == (dims[0][i], dims[1][i])
            if copy and (a != b or i == 1):  # the batch, or the channels: kept following
                target.append(0)
            elif a == b:
                target.append(a)
            else:
                target.append(-1)
        if target.count(-1) > 1 or len(two) != len(three):
            continue
        name = f"{n.output[0]}__lathe_target"
        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        n.input[1] = name
        changes.append(f"{n.name or n.output[0]}: target {target}")
    return changes


def _copy(model: Any) -> Any:
    return onnx.ModelProto.FromString(model.SerializeToString())
