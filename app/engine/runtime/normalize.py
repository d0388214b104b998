"""One input normalisation every technique shares: old-ecosystem ONNX files made modern.

Model-zoo files from the Caffe2 / early TensorFlow era (IR 3, opset 7-9) run in onnxruntime,
so benchmarks work on them, but tools written against modern exports break:

- IR < 4 lists every initializer as a graph input too. onnxruntime's quantizers replace a
  weight by its quantized form and leave the input entry behind, so the result demands the
  weight as a feed ("Invalid input name: conv3_w_0") or fails the checker.
- Weights computed by constant subgraphs (``Constant`` nodes, ``ConstantOfShape`` + ``Add``)
  instead of stored as initializers: onnx2torch (pruning, distillation) and the quantizers only
  see initializers as weights.

``normalize_onnx`` writes a copy with initializer-inputs removed, constant subgraphs folded
into initializers that keep the names their consumers read (``conv1_w_0`` stays
``conv1_w_0``; no other node, input or output is renamed), and the IR version raised to the
one its opset needs. It changes nothing else: an opset upgrade stays with the quantizers that
need one (``quantize.ort_tools.staged``'s ``min_opset``). Folding uses onnx's reference
implementation, node by node, in the bounded child (``run_bounded``) the pipeline starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engine.errors import TechniqueError

# Inputs of these ops are the layer's parameters: a Constant node feeding one is a weight
# that onnx2torch and the quantizers only recognise as an initializer.
LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
             "InstanceNormalization", "LayerNormalization", "PRelu", "LSTM", "GRU", "RNN"}
# Never folded: random ops change value per run; folding (de)quantization would turn a
# quantized model's int8 weights back into float ones.
KEEP_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
            "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear",
            "DynamicQuantizeLinear"}
# A folded tensor larger than this stays a subgraph: a hostile ConstantOfShape must not make
# the fold allocate gigabytes (nor the saved copy grow by them).
MAX_FOLD_ELEMENTS = 1 << 26
NORMALIZED_NAME = "input-normalized.onnx"


def normalized(path: Path, workdir: Path, deadline_s: float) -> tuple[Path, dict[str, Any] | None]:
    """The model every technique of the job should read, and what normalising changed (None
    when nothing needed changing). A file the normaliser cannot handle is used as it came,
    with the reason in the returned section; a normaliser past its deadline fails the job
    (``step_timeout``), as any native step does."""
    from app.engine.runtime.isolate import error_name, run_bounded

    dst = workdir / NORMALIZED_NAME
    try:
        info = run_bounded(normalize_onnx, str(path), str(dst), deadline_s=deadline_s,
                           step="ONNX input normalisation", cwd=workdir)
    except TechniqueError:
        dst.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the model still runs as it came
        dst.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())[:240]
        return path, {"changes": [], "error": f"not normalised ({error_name(exc)}: {reason}); "
                                              "the techniques read the model as uploaded"}
    if not info.pop("changed"):
        return path, None
    return dst, info


def normalize_onnx(src: str, dst: str) -> dict[str, Any]:
    """Write the normalised copy of ``src`` to ``dst`` when anything needs changing.

    Returns ``{"changed": bool, "changes": [text...], "ir_version": {...},
    "initializer_inputs_removed": n, "folded": [names], "constants_to_initializers": n}``;
    ``dst`` is written only when ``changed``. Run it through ``isolate.run_bounded``."""
    import onnx
    from onnx import helper

    model = onnx.load(src, load_external_data=False)
    graph = model.graph
    changes: list[str] = []
    initializers = {t.name for t in graph.initializer}

    listed = [v for v in graph.input if v.name in initializers]
    if listed:
        keep = [v for v in graph.input if v.name not in initializers]
        del graph.input[:]
        graph.input.extend(keep)
        changes.append(f"{len(listed)} initializer(s) removed from the graph inputs (IR < 4 "
                       "style); they are weights, not something to feed")

    folded, constants = _fold_constants(model)
    if constants:
        changes.append(f"{constants} Constant node(s) giving layer weights turned into "
                       "initializers")
    if folded:
        changes.append(f"{len(folded)} constant subgraph output(s) folded into initializers "
                       f"(e.g. {', '.join(repr(n) for n in folded[:3])})")

    ir_before = int(model.ir_version)
    if ir_before < 4:
        # IR 3 requires every initializer to be an input: without them the file must say
        # IR >= 4, the version its opsets came with (opset 9 -> 4). Newer files keep theirs.
        needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        model.ir_version = max(4, needed)
        changes.append(f"IR version {ir_before} -> {model.ir_version}")
    info = {"changed": bool(changes), "changes": changes,
            "ir_version": {"original": ir_before, "used": int(model.ir_version)},
            "initializer_inputs_removed": len(listed), "folded": folded,
            "constants_to_initializers": constants}
    if changes:
        onnx.checker.check_model(model)
        onnx.save(model, dst)
    return info


def _fold_constants(model: Any) -> tuple[list[str], int]:
    """Fold, in place, every node computed from constants alone whose value a node that stays
    reads, and Constant nodes feeding a layer's parameters. Returns (names of folded subgraph
    outputs, number of Constant nodes turned into initializers)."""
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    known = {t.name: t for t in graph.initializer}
    producer: dict[str, Any] = {}  # output name -> its node, for every foldable node
    for node in graph.node:
        if _foldable(node, known, producer):
            producer.update((out, node) for out in node.output if out)
    if not producer:
        return [], 0

    # Materialise a constant value where something that stays reads it: a node that is not
    # foldable, or a node of a subgraph (outer-scope reads). Graph outputs stay computed.
    readers: dict[str, bool] = {}  # name -> read as a layer's parameter?
    for node in graph.node:
        if _key(node) in producer:
            continue
        for name in node.input:
            if name in producer:
                readers[name] = readers.get(name, False) or node.op_type in LAYER_OPS
        for name in subgraph_reads(node) & producer.keys():
            readers.setdefault(name, False)
    outputs = {o.name for o in graph.output}
    # A lone Constant is folded only as a layer's weight: modern exports use Constant nodes
    # for shapes and scalars, and those are fine as they are.
    wanted = [n for n, layer in readers.items() if n not in outputs
              and (layer or producer[n].op_type != "Constant")]
    values: dict[str, Any] = {}
    computed = {n: v for n in wanted if (v := _evaluate(n, producer, known, values, opset)) is not None}
    # All of a node's outputs that stay read must fold together, or it would still be needed
    # and its output would have two producers.
    blocked = {_key(producer[n]) for n in readers if n not in computed}
    fold = [n for n in computed if _key(producer[n]) not in blocked]
    if not fold:
        return [], 0
    graph.initializer.extend(numpy_helper.from_array(computed[n], n) for n in fold)
    drop_dead(graph, set(producer))
    constants = [n for n in fold if producer[n].op_type == "Constant"]
    return [n for n in fold if producer[n].op_type != "Constant"], len(constants)


def _foldable(node: Any, known: dict[str, Any], constant_nodes: dict[str, Any]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in KEEP_OPS:
        return False
    if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
        return False
    if node.op_type == "Constant":
        return True
    if node.op_type in ("Shape", "Size") or not node.input:
        return False  # a source node other than Constant (e.g. a random generator)
    return all(n == "" or n in known or n in constant_nodes for n in node.input)


def subgraph_reads(node: Any) -> set[str]:
    """Every name the node's subgraphs (If/Loop/Scan bodies, nested) read."""
    names: set[str] = set()
    stack = [a.g for a in node.attribute if a.HasField("g")]
    stack += [g for a in node.attribute for g in a.graphs]
    while stack:
        g = stack.pop()
        for inner in g.node:
            names.update(inner.input)
            stack += [a.g for a in inner.attribute if a.HasField("g")]
            stack += [sg for a in inner.attribute for sg in a.graphs]
    return names


def _evaluate(name: str, constant_nodes: dict[str, Any], known: dict[str, Any],
              values: dict[str, Any], opset: int) -> Any:
    """The value of ``name`` (None when too large or not computable), node by node with onnx's
    reference implementation. Iterative: a deep chain of nodes cannot exhaust the stack."""
    from onnx import numpy_helper

    stack = [name]
    while stack:
        current = stack[-1]
        if current in values:
            stack.pop()
            continue
        if current in known and current not in constant_nodes:
            values[current] = numpy_helper.to_array(known[current])
            stack.pop()
            continue
        node = constant_nodes.get(current)
        if node is None:
            return None
        missing = [n for n in node.input if n and n not in values]
        if missing:
            if any(m in stack for m in missing):
                return None  # a cycle: not a valid graph, leave it alone
            stack.extend(missing)
            continue
        stack.pop()
        if any(values[n] is None for n in node.input if n):
            return None  # an input could not be folded, so neither can this
        outputs = _run_node(node, [values[n] if n else None for n in node.input], opset)
        if outputs is None:
            values.update((out, None) for out in node.output if out)
            return None
        values.update(zip([o for o in node.output if o], outputs))
    return values[name]


def _run_node(node: Any, inputs: list[Any], opset: int) -> list[Any] | None:
    import numpy as np
    from onnx.reference import ReferenceEvaluator
    from onnx import helper

    if _predicted_elements(node, inputs) > MAX_FOLD_ELEMENTS:
        return None
    if node.op_type == "Cast" and inputs[0].dtype.kind == "f" and inputs[0].dtype.itemsize < 4:
        return None  # a half-precision model's weights stay half: folding would double them
    names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    outs = [f"out{i}" if out else "" for i, out in enumerate(node.output)]
    single = helper.make_node(node.op_type, names, outs, domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "fold", [],
                              [helper.make_empty_tensor_value_info(o) for o in outs if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(
            None, {n: v for n, v in zip(names, inputs) if n})
    except Exception:  # noqa: BLE001 - an op the reference cannot run: leave it unfolded
        return None
    results = [np.asarray(r) for r in results]
    if len(results) != len([o for o in outs if o]):
        return None
    if any(r.dtype == object or r.size > MAX_FOLD_ELEMENTS for r in results):
        return None
    return results


def _predicted_elements(node: Any, inputs: list[Any]) -> int:
    """Output size of the ops whose output size is set by an input's values, before running."""
    import numpy as np

    try:
        if node.op_type == "ConstantOfShape" and inputs and inputs[0] is not None:
            return int(np.prod(inputs[0].astype(np.float64)))
        if node.op_type == "Expand" and len(inputs) == 2:
            shape = np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1]))
            return int(np.prod(np.array(shape, dtype=np.float64)))
        if node.op_type == "Tile" and len(inputs) == 2:
            return int(inputs[0].size * np.prod(inputs[1].astype(np.float64)))
    except Exception:  # noqa: BLE001 - malformed: let the reference refuse it
        return 0
    return 0


def _key(node: Any) -> str:
    """A node's identity: its first output (protobuf wrappers are not stable objects)."""
    return next((o for o in node.output if o), "")


def drop_dead(graph: Any, removable: set[str] | None = None) -> None:
    """Remove the ``removable`` (by ``_key``; None: any) nodes whose outputs nothing reads any
    more, then the initializers nothing reads (a folded weight's shape and parts). Normalising
    passes the folded nodes: other nodes stay, even dead ones, as it changes only what it says
    it changes."""
    outputs = {o.name for o in graph.output}
    while True:
        read = set(outputs)
        for node in graph.node:
            read.update(node.input)
            read.update(subgraph_reads(node))
        initializers = {t.name for t in graph.initializer}
        dead = {_key(n) for n in graph.node if (removable is None or _key(n) in removable)
                and all(o not in read or o in initializers for o in n.output if o)}
        if not dead:
            break
        keep = [n for n in graph.node if _key(n) not in dead]
        del graph.node[:]
        graph.node.extend(keep)
    read = set(outputs) | {i.name for i in graph.input}
    for node in graph.node:
        read.update(node.input)
        read.update(subgraph_reads(node))
    keep_init = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
