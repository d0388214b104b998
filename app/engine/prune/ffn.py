"""Structured pruning of transformer feed-forward blocks, done on the ONNX graph itself.

Exporters write a transformer's linear layers as ``MatMul`` (+ ``Add``) on 3-D activations, not
as ``nn.Linear``/``Gemm``, so the torch route (onnx2torch -> Torch-Pruning) finds nothing to
prune. Here a feed-forward block is found as a pattern of the graph::

    x -> MatMul(W1[H, I]) (+ b1[I]) -> activation -> MatMul(W2[I, H]) (+ b2) -> ...

where "activation" is any region of element-wise nodes whose other inputs are scalars or
per-neuron vectors of width I (the Gelu op, the Erf and tanh GELU subgraphs, Relu, QuickGELU
x*sigmoid(1.702x)), and a second projection multiplied in (T5's gated FFN) joins the block as
another up-projection. Everything between the projections works neuron by neuron, so dropping
neuron j means dropping column j of every up weight, element j of every per-neuron vector and
row j of the down weight: the tensors physically shrink and the rest of the graph is untouched.
``Gemm`` projections and weights behind a ``Transpose`` are handled the same way.

Pure onnx + numpy; onnxruntime only for activation statistics and MAC counting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from app.engine.errors import InvalidParams, UnsupportedModel
from app.engine.runtime.sessions import create_session

# Ops that work element by element: inside an FFN they keep neuron j in position j.
ELEMENTWISE = {"Gelu", "Erf", "Div", "Mul", "Add", "Sub", "Tanh", "Sigmoid", "Relu", "Pow",
               "Sqrt", "Neg", "Cast", "Identity", "Clip", "LeakyRelu", "Elu", "Selu", "Celu",
               "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Exp", "Abs", "Mish",
               "Dropout", "Max", "Min", "FastGelu", "BiasGelu", "QuickGelu"}
FLOATS = {1, 10, 11, 16}  # float32, float16, double, bfloat16


@dataclass
class Proj:
    """A projection with a constant weight: ``node`` is MatMul or Gemm; the weight is the
    initializer ``weight`` (read through ``transpose`` when the graph transposes it);
    ``axis`` is the weight axis that indexes the FFN's intermediate neurons."""

    node: Any
    weight: str
    axis: int
    transpose: Any = None

    @property
    def holder(self) -> tuple[Any, int]:
        """(node, input index) that reads the weight initializer."""
        return (self.transpose, 0) if self.transpose is not None else (self.node, 1)


@dataclass
class Block:
    name: str                       # the first up-projection's node name
    ups: list[Proj]
    down: Proj
    width: int                      # intermediate neurons
    activation: str
    vectors: list[tuple[Any, int]] = field(default_factory=list)  # per-neuron consts (biases)
    tensors: set[str] = field(default_factory=set)  # every tensor with the neurons as last axis

    @property
    def node_names(self) -> set[str]:
        return {p.node.name for p in [*self.ups, self.down]} | {p.weight for p in [*self.ups, self.down]}

    def activation_tensor(self) -> str:
        return self.down.node.input[0]


class Graph:
    """Look-ups over one ONNX graph: producers, consumers, constants."""

    def __init__(self, model: Any) -> None:
        self.model, g = model, model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.constants: dict[str, Any] = {}
        for node in g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
        for node in g.node:
            for i, name in enumerate(node.input):
                self.consumers[name].append((node, i))
        self.outputs = {o.name for o in g.output}
        self.uses = _name_uses(g)

    def source(self, name: str) -> str:
        """``name`` with Identity nodes followed back (exporters tie equal weights that way)."""
        seen = 0
        while name not in self.inits and seen < 64:
            prod = self.producer.get(name)
            if prod is None or prod.op_type != "Identity":
                break
            name, seen = prod.input[0], seen + 1
        return name

    def shape(self, name: str) -> list[int] | None:
        name = self.source(name)
        if name in self.inits:
            return list(self.inits[name].dims)
        if name in self.constants:
            return list(self.constants[name].shape)
        return None

    def array(self, name: str) -> Any:
        name = self.source(name)
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else self.constants[name]

    def is_scalar(self, name: str) -> bool:
        shape = self.shape(name)
        return shape is not None and int(_prod(shape)) == 1

    def is_vector(self, name: str, width: int) -> bool:
        shape = self.shape(name)
        return bool(shape) and shape[-1] == width and _prod(shape) == width

    def projection(self, node: Any) -> tuple[Proj, Proj] | None:
        """(as up, as down) views of a MatMul/Gemm with a constant 2-D float weight, else None.
        Up: the weight axis of its outputs; down: the weight axis of its inputs."""
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            return None
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            return None
        name, transpose, flip = self.source(node.input[1]), None, bool(attrs.get("transB", 0))
        prod = self.producer.get(name)
        if name not in self.inits and prod is not None and prod.op_type == "Transpose":
            perm = [list(a.ints) for a in prod.attribute if a.name == "perm"]
            if perm in ([], [[1, 0]]) and len(self.consumers[name]) == 1 and name not in self.outputs:
                transpose, name, flip = prod, self.source(prod.input[0]), not flip
        tensor = self.inits.get(name)
        if tensor is None or len(tensor.dims) != 2 or tensor.data_type not in FLOATS:
            return None
        if self.source(node.input[0]) in self.inits or node.input[0] in self.constants:
            return None
        out_axis, in_axis = (0, 1) if flip else (1, 0)
        return Proj(node, name, out_axis, transpose), Proj(node, name, in_axis, transpose)

    def width(self, proj: Proj) -> int:
        return int(self.inits[proj.weight].dims[proj.axis])


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _name_uses(graph: Any) -> dict[str, int]:
    """How often each name is read, subgraphs (If/Loop bodies) included."""
    uses: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            uses[name] += 1
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                for name, n in _name_uses(sub).items():
                    uses[name] += n
    for out in graph.output:
        uses[out.name] += 1
    return uses


def find_blocks(model: Any) -> list[Block]:
    """Every feed-forward block of ``model`` (an onnx.ModelProto), in graph order."""
    graph = Graph(model)
    blocks, taken = [], set()
    for node in model.graph.node:
        views = graph.projection(node)
        if views is None or id(node) in taken:
            continue
        block = _grow(graph, views[0])
        if block is not None and not taken & {id(p.node) for p in [*block.ups, block.down]}:
            blocks.append(block)
            taken |= {id(p.node) for p in [*block.ups, block.down]}
    return blocks


def _grow(graph: Graph, start: Proj) -> Block | None:
    """The block whose up-projection is ``start``, or None when the neurons leave the
    element-wise region anywhere but through one down-projection."""
    width = graph.width(start)
    ups, region, tensors = [start], {}, set()
    vectors: list[tuple[Any, int]] = []
    down: Proj | None = None
    queue = [start.node]
    while queue:
        while queue:
            node = queue.pop()
            for out in node.output:
                if not out:
                    continue
                if out in graph.outputs:
                    return None
                tensors.add(out)
                for user, index in graph.consumers[out]:
                    if id(user) in region or any(user is p.node for p in ups):
                        continue
                    views = graph.projection(user)
                    if views is not None and index == 0 and graph.width(views[1]) == width:
                        if down is not None and down.node is not user:
                            return None
                        down = views[1]
                    elif user.op_type in ELEMENTWISE and user.domain in ("", "com.microsoft"):
                        region[id(user)] = user
                        queue.append(user)
                    else:
                        return None
        # Inputs from outside the region: scalars, per-neuron vectors, or a gate projection.
        vectors = []
        for up in ups:  # a Gemm's C is the up-projection's bias
            bias = up.node.input[2] if up.node.op_type == "Gemm" and len(up.node.input) > 2 else ""
            if bias and graph.is_vector(bias, width):
                vectors.append((up.node, 2))
            elif bias and not graph.is_scalar(bias):
                return None
        for user in region.values():
            for index, name in enumerate(user.input):
                if not name or name in tensors or graph.is_scalar(name):
                    continue
                if graph.is_vector(name, width):
                    vectors.append((user, index))
                    continue
                prod = graph.producer.get(name)
                if any(prod is p.node for p in ups):
                    continue  # a gate found earlier in this pass
                views = graph.projection(prod) if prod is not None else None
                if views is None or graph.width(views[0]) != width or down is not None and \
                        prod is down.node:
                    return None
                ups.append(views[0])
                queue.append(prod)
    if down is None or not region:
        return None
    ops = {n.op_type for n in region.values()}
    return Block(start.node.name, ups, down, width, _activation_name(ops, len(ups) > 1),
                 [v for v in vectors if v[0].input[v[1]]], tensors)


def _activation_name(ops: set[str], gated: bool) -> str:
    if ops & {"Gelu", "FastGelu", "BiasGelu"}:
        name = "gelu"
    elif "Erf" in ops:
        name = "gelu (erf subgraph)"
    elif "Tanh" in ops and "Pow" in ops:
        name = "gelu (tanh approximation)"
    elif "Sigmoid" in ops or "QuickGelu" in ops:
        name = "quick_gelu / silu (x*sigmoid)"
    elif "Relu" in ops:
        name = "relu"
    else:
        name = "+".join(sorted(ops - {"Add"})) or "linear"
    return f"gated {name}" if gated else name


# --- importance ---------------------------------------------------------------------------

def neuron_norms(graph: Graph, proj: Proj, p: int) -> Any:
    """L_p norm of each neuron's slice of ``proj``'s weight."""
    w = np.abs(graph.array(proj.weight).astype(np.float64)) ** p
    return w.sum(axis=1 - proj.axis) ** (1 / p)


def magnitude(graph: Graph, block: Block, p: int) -> Any:
    """Per neuron: (sum over up weights of the column's L_p norm) x the down row's L_p norm."""
    return sum(neuron_norms(graph, u, p) for u in block.ups) * neuron_norms(graph, block.down, p)


def activation_means(path: Path, blocks: Sequence[Block], feeds: Iterable[dict[str, Any]],
                     workdir: Path) -> list[Any]:
    """Mean |activation| per neuron at each block's down-projection input, over ``feeds``,
    run in onnxruntime on the parent with those tensors exposed as outputs."""
    names = [b.activation_tensor() for b in blocks]
    session = _session_with_outputs(path, names, workdir / "ffn-activations.onnx")
    sums = [np.zeros(b.width) for b in blocks]
    count = 0
    for feed in feeds:
        outs = session.run(names, feed)
        for i, a in enumerate(outs):
            flat = np.abs(a.astype(np.float64)).reshape(-1, a.shape[-1])
            sums[i] += flat.sum(axis=0)
        count += int(_prod(outs[0].shape[:-1])) if outs else 0
    return [s / max(count, 1) for s in sums]


def _session_with_outputs(path: Path, names: Sequence[str], scratch: Path) -> Any:
    model = onnx.load(str(path), load_external_data=False)
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in have:
            model.graph.output.append(helper.ValueInfoProto(name=name))
    onnx.save(model, str(scratch))
    try:
        return create_session(scratch, 1)[0]
    finally:
        scratch.unlink(missing_ok=True)


# --- pruning ------------------------------------------------------------------------------

def kept_count(width: int, ratio: float, round_to: int | None) -> int:
    keep = width - int(width * ratio)
    if round_to:
        keep = -(-keep // round_to) * round_to
    return max(1, min(width, keep))


def check_keep(blocks: Sequence[Block], keep: Sequence[str]) -> set[str]:
    """The names of the blocks ``keep`` protects; unknown names are refused."""
    known = set().union(*(b.node_names for b in blocks)) if blocks else set()
    unknown = sorted(set(keep) - known)
    if unknown:
        raise InvalidParams(f"keep_layers {unknown} are not feed-forward projections of this "
                            f"model; its FFN blocks are (up-projection node names) "
                            f"{[b.name for b in blocks][:40]}")
    return {b.name for b in blocks if b.node_names & set(keep)}


def prune_blocks(model: Any, blocks: Sequence[Block], scores: Sequence[Any], ratio: float,
                 round_to: int | None, protected: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Slice every unprotected block of ``model`` in place to its best-scoring neurons; returns
    one report entry per block and the names of the sliced initializers (each read by one
    node). Initializers another node also reads get a pruned copy."""
    graph = Graph(model)
    out, sliced, stale = [], [], set()
    for block, score in zip(blocks, scores):
        entry = {"name": block.name, "activation": block.activation,
                 "up": [u.node.name for u in block.ups], "down": block.down.node.name,
                 "neurons_before": block.width, "neurons_after": block.width,
                 "protected": block.name in protected}
        out.append(entry)
        if block.name in protected:
            continue
        n = kept_count(block.width, ratio, round_to)
        keep = np.sort(np.argsort(-np.asarray(score), kind="stable")[:n])
        for proj in [*block.ups, block.down]:
            holder, index = proj.holder
            _rewrite(graph, holder, index, np.take(graph.array(proj.weight), keep, axis=proj.axis))
            sliced.append(holder.input[index])
            if proj.transpose is not None:
                stale.add(proj.transpose.output[0])
        for node, index in block.vectors:
            value = graph.array(node.input[index])
            _rewrite(graph, node, index, np.take(value, keep, axis=-1))
            sliced.append(node.input[index])
        entry["neurons_after"] = int(n)
        stale |= block.tensors
    # Recorded shapes of the shrunk tensors are wrong now: onnxruntime infers them again.
    stale |= set(sliced)
    kept = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    _drop_unused(model)
    return out, sliced


def _rewrite(graph: Graph, node: Any, index: int, value: Any) -> None:
    """Point ``node.input[index]`` at ``value``: in place when nothing else reads the
    initializer, else as a new initializer."""
    name = node.input[index]
    if name in graph.inits and graph.uses[name] == 1:
        graph.inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return
    graph.uses[name] -= 1
    new, k = f"{name}.pruned", 1
    while new in graph.inits or new in graph.producer:
        k += 1
        new = f"{name}.pruned{k}"
    tensor = numpy_helper.from_array(value, new)
    graph.model.graph.initializer.append(tensor)
    graph.inits[new] = graph.model.graph.initializer[-1]
    graph.uses[new] = 1
    node.input[index] = new


def _drop_unused(model: Any) -> None:
    """Remove the Identity / Transpose / Constant nodes and initializers pruning orphaned."""
    g = model.graph
    while True:
        uses = _name_uses(g)
        dead = [n for n in g.node if n.op_type in ("Identity", "Transpose", "Constant")
                and not any(uses.get(o) for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    uses = _name_uses(model.graph)
    keep = [t for t in model.graph.initializer if uses.get(t.name)]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def has_attention(model: Any) -> bool:
    """A MatMul of two computed tensors (scores = Q K^T, or scores x V): a transformer."""
    graph = Graph(model)
    const = set(graph.inits) | set(graph.constants)
    return any(n.op_type == "MatMul" and not const & set(n.input) for n in model.graph.node)


def conv_parameters(model: Any) -> int:
    graph = Graph(model)
    return sum(_prod(graph.inits[n.input[1]].dims) for n in model.graph.node
               if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1
               and n.input[1] in graph.inits)


def block_parameters(model: Any, blocks: Sequence[Block]) -> int:
    graph = Graph(model)
    return sum(_prod(graph.inits[p.weight].dims) for b in blocks for p in [*b.ups, b.down])


# --- MACs -----------------------------------------------------------------------------------

def onnx_macs(path: Path, feed: dict[str, Any], workdir: Path) -> int | None:
    """Multiply-accumulates of MatMul / Gemm / Conv for one sample of ``feed`` (batch 1),
    shapes read from a run with those nodes' inputs and outputs exposed. None when it fails."""
    model = onnx.load(str(path), load_external_data=False)
    graph = Graph(model)
    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose")]
    names = list(dict.fromkeys(x for n in nodes for x in (n.input[0], n.output[0])
                               if x not in graph.inits and x not in graph.constants))
    try:
        session = _session_with_outputs(path, names, workdir / "ffn-macs.onnx")
        shapes = dict(zip(names, (o.shape for o in session.run(names, feed))))
    except Exception:  # noqa: BLE001 - MACs are informative; the report says when unknown
        return None
    total = 0
    for n in nodes:
        a = shapes.get(n.input[0]) if n.input[0] in shapes else graph.shape(n.input[0])
        y = shapes.get(n.output[0])
        if a is None or y is None or not len(a):
            continue
        if n.op_type == "MatMul":
            total += _prod(y) * int(a[-1])
        elif n.op_type == "Gemm":
            trans_a = any(x.name == "transA" and x.i for x in n.attribute)
            total += _prod(y) * int(a[0] if trans_a else a[-1])
        else:
            w = graph.shape(n.input[1])
            if w:
                total += _prod(y) * _prod(w[1:]) if n.op_type == "Conv" else _prod(a) * _prod(w[1:])
    return int(total)


def require_blocks(model: Any) -> list[Block]:
    blocks = find_blocks(model)
    if not blocks:
        raise UnsupportedModel(
            "no transformer feed-forward block found (MatMul/Gemm with a constant weight, an "
            "element-wise activation, then a second MatMul/Gemm back to the model width); the "
            "ONNX route prunes FFN neurons only")
    return blocks
