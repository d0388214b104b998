"""Lathe's own attention fusion: the per-head subgraph an exporter writes for multi-head
attention, rewritten as onnxruntime's ``com.microsoft.MultiHeadAttention``.

What it matches, per ``Softmax`` (the shape of both transformers' "eager" and "sdpa"
attention as TorchScript and dynamo export them, and of most hand-written encoders)::

    q4 = Transpose<0,2,1,3>(Reshape(q3, [., ., -1|N, D]))          [* scalar]
    k4 = Transpose<0,2,3,1>(Reshape(k3, ...))  or  Transpose<0,1,3,2>(Transpose<0,2,1,3>(...))
                                                                    [* scalar]
    v4 = Transpose<0,2,1,3>(Reshape(v3, ...))
    s  = MatMul(q4, k4) [* or / scalar] [+ bias]
    p  = Softmax(s, axis=-1)  [then Where(IsNaN(p), 0, p)]
    y  = Reshape(Transpose<0,2,1,3>(MatMul(p, v4) [then a Reshape to 4-D]), [., ., -1|N*D])

and writes ``y = MultiHeadAttention(q3, k3, v3, attention_bias=bias, num_heads=N,
scale=product of the scalars)``. onnxruntime's transformer optimizer fuses only the patterns
it knows (on all-MiniLM-L6-v2 exported with transformers' default sdpa attention it fused
none); unfused, each attention costs ~20 small operators whose per-call overhead dominates
at batch 1.

The rewrite only adds the new node and points ``y``'s consumers at it; the nodes it
replaces are removed when nothing else reads them. Whether the result computes what the
parent did is not assumed from the match: ``fuse_attention_file`` runs both on the caller's
sample inputs and keeps the fused graph only when every output agrees (the one semantic
difference: a query row whose keys are *all* masked gets NaN where the sdpa export's
``Where(IsNaN)`` wrote 0; no real input has an empty sequence).

numpy/onnx are imported at the top (helper module; the technique imports it inside run()).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from app.engine.runtime.normalize import drop_dead

MS_DOMAIN = "com.microsoft"
LARGE_MODEL_BYTES = 1_800_000_000


@dataclass
class _Graph:
    """Producer / consumer / constant lookups over one graph."""

    graph: onnx.GraphProto

    def __post_init__(self) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.array(helper.get_attribute_value(attr))
                if attr.name in ("value_floats", "value_ints"):
                    return np.array(list(helper.get_attribute_value(attr)))
        return None

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.ravel()[0])

    def op(self, name: str, *types: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type in types else None


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [])


def _shape_entries(g: _Graph, name: str) -> list[Any] | None:
    """A Reshape target as a list (ints where constant, None where computed), or None."""
    value = g.const(name)
    if value is not None:
        return [int(v) for v in value.ravel()]
    concat = g.op(name, "Concat")
    if concat is None:
        return None
    entries: list[Any] = []
    for part in concat.input:
        piece = g.const(part)
        if piece is None:
            entries.append(None)  # one computed dimension (Unsqueeze of a Gather of a Shape)
        else:
            entries += [int(v) for v in piece.ravel()]
    return entries


def _scaled(g: _Graph, name: str) -> tuple[str, float]:
    """Through an optional Mul/Div by a scalar constant: (the unscaled tensor, the factor)."""
    node = g.op(name, "Mul", "Div")
    if node is None:
        return name, 1.0
    a, b = node.input
    if node.op_type == "Mul":
        for tensor, other in ((a, b), (b, a)):
            if (s := g.scalar(other)) is not None:
                return tensor, s
    elif (s := g.scalar(b)) is not None and s != 0:
        return a, 1.0 / s
    return name, 1.0


def _heads(g: _Graph, name: str, perm: list[int]) -> tuple[str, int, int | None] | None:
    """``name`` = Transpose<perm>(Reshape(x3, [., ., -1|N, D])): (x3, D, N or None)."""
    transpose = g.op(name, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.op(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    entries = _shape_entries(g, reshape.input[1])
    if not entries or len(entries) != 4 or not isinstance(entries[3], int) or entries[3] <= 0:
        return None
    heads = entries[2]
    if heads is None or (heads != -1 and heads <= 0):
        return None
    return reshape.input[0], entries[3], (None if heads == -1 else heads)


def _key(g: _Graph, name: str) -> tuple[str, int, int | None] | None:
    """K^T per head: Transpose<0,2,3,1>(Reshape(k3)) or Transpose<0,1,3,2> of the usual split."""
    direct = _heads(g, name, [0, 2, 3, 1])
    if direct is not None:
        return direct
    outer = g.op(name, "Transpose")
    if outer is not None and _perm(outer) == [0, 1, 3, 2]:
        return _heads(g, outer.input[0], [0, 2, 1, 3])
    return None


@dataclass
class _Match:
    q: str
    k: str
    v: str
    bias: str | None
    scale: float
    head_size: int
    heads: int | None
    output: str        # the 3-D tensor the block's final Reshape writes
    name: str


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Match | None:
    axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    probs = softmax.output[0]
    readers = [n for n in g.consumers[probs] if n.op_type != "IsNaN"]
    if len(readers) == 1 and readers[0].op_type == "Where":  # sdpa's Where(IsNaN(p), 0, p)
        where = readers[0]
        cond = g.op(where.input[0], "IsNaN")
        zero = g.const(where.input[1])
        if cond is None or cond.input[0] != probs or where.input[2] != probs or zero is None \
                or zero.size != 1 or float(zero.ravel()[0]) != 0.0:
            return None
        probs = where.output[0]
        readers = g.consumers[probs]
    if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[0] != probs:
        return None
    pv = readers[0]
    value = _heads(g, pv.input[1], [0, 2, 1, 3])
    merge = [n for n in g.consumers[pv.output[0]] if n.op_type != "Shape"]
    if len(merge) == 1 and merge[0].op_type == "Reshape":  # sdpa's no-op Reshape to [B, -1, S, D]
        entries = _shape_entries(g, merge[0].input[1])
        if not entries or len(entries) != 4:
            return None
        merge = [n for n in g.consumers[merge[0].output[0]] if n.op_type != "Shape"]
    if value is None or len(merge) != 1 or merge[0].op_type != "Transpose" or _perm(merge[0]) != [0, 2, 1, 3]:
        return None
    out = [n for n in g.consumers[merge[0].output[0]] if n.op_type != "Shape"]
    if len(out) != 1 or out[0].op_type != "Reshape":
        return None
    entries = _shape_entries(g, out[0].input[1])
    if not entries or len(entries) != 3 or entries[2] is None:
        return None

    scores, bias = softmax.input[0], None
    add = g.op(scores, "Add")
    if add is not None:
        for s_in, b_in in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            if g.op(_scaled(g, s_in)[0], "MatMul") is not None:
                scores, bias = s_in, b_in
                break
        else:
            return None
    scores, scale = _scaled(g, scores)
    qk = g.op(scores, "MatMul")
    if qk is None:
        return None
    q_in, q_scale = _scaled(g, qk.input[0])
    k_in, k_scale = _scaled(g, qk.input[1])
    query, key = _heads(g, q_in, [0, 2, 1, 3]), _key(g, k_in)
    if query is None or key is None:
        return None
    sizes = {query[1], key[1], value[1]}
    counts = {h for h in (query[2], key[2], value[2]) if h is not None}
    if len(sizes) != 1 or len(counts) > 1:
        return None
    head_size = sizes.pop()
    width = entries[2]
    if width != -1 and (width <= 0 or width % head_size):
        return None
    heads = counts.pop() if counts else (width // head_size if width > 0 else None)
    return _Match(q=query[0], k=key[0], v=value[0], bias=bias, scale=scale * q_scale * k_scale,
                  head_size=head_size, heads=heads, output=out[0].output[0], name=softmax.name)


def _last_dim(model: onnx.ModelProto, g: _Graph, name: str) -> int | None:
    """The static last dimension of ``name``: from shape inference, else from the constant
    weight of a MatMul (+ bias) that produces it."""
    for vi in model.graph.value_info:
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value"):
                return int(dims[-1].dim_value)
    node = g.op(name, "Add")
    if node is not None:
        name = next((i for i in node.input if g.op(i, "MatMul")), name)
    matmul = g.op(name, "MatMul")
    if matmul is not None and (w := g.const(matmul.input[1])) is not None and w.ndim == 2:
        return int(w.shape[1])
    return None


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every matched attention block of ``model`` (in place) as MultiHeadAttention;
    returns how many. Unused nodes are removed afterwards."""
    g = _Graph(model.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    except Exception:  # noqa: BLE001 - shape inference is only a hint here
        inferred = model
    fused = 0
    value_info = []
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        match = _match(g, softmax)
        if match is None:
            continue
        heads = match.heads
        if heads is None:
            width = _last_dim(inferred, g, match.q)
            if not width or width % match.head_size:
                continue
            heads = width // match.head_size
        if not math.isfinite(match.scale) or match.scale <= 0:
            continue
        inputs = [match.q, match.k, match.v, "", "", match.bias or ""]
        while inputs and not inputs[-1]:
            inputs.pop()
        out = f"{match.output}/lathe_mha"
        model.graph.node.append(helper.make_node(
            "MultiHeadAttention", inputs, [out], name=f"{match.name}/lathe_mha", domain=MS_DOMAIN,
            num_heads=int(heads), scale=float(match.scale)))
        for node in g.consumers[match.output]:
            node.input[:] = [out if i == match.output else i for i in node.input]
        for graph_out in model.graph.output:
            if graph_out.name == match.output:  # keep the graph's output name
                model.graph.node.append(helper.make_node("Identity", [out], [match.output]))
        # the fused output's type, so quantizers' shape inference can type what reads it
        value_info.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
        fused += 1
    if fused:
        model.graph.value_info.extend(value_info)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        _topological_sort(model)
        _remove_unused(model)
    return fused


def _remove_unused(model: onnx.ModelProto) -> None:
    """The replaced nodes and weights nothing reads any more, and their shape annotations."""
    graph = model.graph
    drop_dead(graph)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    hints = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(hints)


def _topological_sort(model: onnx.ModelProto) -> None:
    """Kahn's algorithm over the top-level graph (linear in nodes + edges; a node whose
    input comes from nowhere, e.g. an outer-scope name, keeps its place after the rest)."""
    graph = model.graph
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in set(node.input):
            if name in producer and producer[name] != i:
                waiting[i] += 1
                readers[producer[name]].append(i)
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    ordered = []
    while ready:
        i = ready.pop()
        ordered.append(i)
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    placed = set(ordered)
    ordered += [i for i in range(len(nodes)) if i not in placed]  # a cycle: leave as it was
    del graph.node[:]
    graph.node.extend(nodes[i] for i in ordered)


def fuse_attention_file(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]],
                        *, atol: float = 1e-4) -> dict[str, Any]:
    """Fuse ``src`` into ``dst`` and check it on ``feeds`` against ``src`` with onnxruntime.
    Returns {"fused": n, "max_abs_diff": d} when the fused graph was written, or
    {"fused": 0, "reason": ...} when nothing matched or the check failed (``dst`` not written)."""
    model = onnx.load(str(src))
    count = fuse_attention(model)
    if not count:
        return {"fused": 0, "reason": "no attention block matched"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > LARGE_MODEL_BYTES  # protobuf's 2 GiB limit: weights beside it
    onnx.save(model, str(dst), save_as_external_data=large, location=f"{dst.name}.data" if large else None)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        parent = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        fused = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])
        worst = 0.0
        for feed in feeds:
            for a, b in zip(parent.run(None, feed), fused.run(None, feed)):
                a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
                if a.shape != b.shape:
                    raise ValueError(f"output shape {b.shape} where the parent gave {a.shape}")
                scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
                worst = max(worst, float(np.max(np.abs(a - b))) / scale if a.size else 0.0)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises anything on a bad rewrite
        dst.unlink(missing_ok=True)
        return {"fused": 0, "reason": f"the fused graph did not run: {str(exc).splitlines()[0][:200]}"}
    if worst > atol:
        dst.unlink(missing_ok=True)
        return {"fused": 0, "reason": f"the fused graph differs from the parent by {worst:.2g} (> {atol:g})"}
    return {"fused": count, "max_abs_diff": worst}
