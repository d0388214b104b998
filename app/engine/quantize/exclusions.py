"""Partial quantization: which nodes a quantizer may touch, and which the user keeps in float.

Pure Python over onnx protobufs (onnx imported inside functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from app.engine.errors import InvalidParams, TechniqueError, NotApplicable, UnsupportedModel
from app.engine.quantize.analysis import candidate_ops, op_counts

# Ops whose weight (second input, or first for Gather) is what quantization shrinks.
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1, "Gather": 0,
                "Attention": 1, "LSTM": 1, "GRU": 1}


def node_names(path: Path) -> dict[str, str]:
    """{node name: op type} of the top-level graph (unnamed nodes cannot be excluded)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.name: n.op_type for n in graph.node if n.name}


def resolve_exclusions(uploaded: Path, staged: Path, exclude_nodes: Sequence[str],
                       exclude_op_types: Sequence[str]) -> list[str]:
    """Node names to keep in float: the user's names (checked against the uploaded graph) plus
    every staged node of an excluded op type."""
    if not exclude_nodes and not exclude_op_types:
        return []
    known = node_names(uploaded)
    unknown = [n for n in exclude_nodes if n not in known]
    if unknown:
        sample = sorted(n for n, op in known.items() if op in WEIGHT_INPUT)[:10]
        raise InvalidParams(
            f"exclude_nodes {unknown[:5]} are not node names of this model; quantizable nodes "
            f"include {sample or sorted(known)[:10]}")
    staged_nodes = node_names(staged)
    by_type = [n for n, op in staged_nodes.items() if op in set(exclude_op_types)]
    return sorted(set(exclude_nodes) | set(by_type))


def weighted_nodes(path: Path, op_types: Sequence[str]) -> list[dict[str, Any]]:
    """Nodes of ``op_types`` whose weight is a constant: what a quantizer would change, in
    graph order, with their weight's element count."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    consts = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(op_types) | ({"Gemm"} if "MatMul" in op_types else set())
    out = []
    for node in graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if node.op_type not in wanted or index is None or len(node.input) <= index:
            continue
        weight = node.input[index]
        if weight in inits or weight in consts:
            numel = 1
            for d in (inits[weight].dims if weight in inits else []):
                numel *= int(d)
            out.append({"name": node.name, "op_type": node.op_type, "weight": weight,
                        "weight_elements": numel if weight in inits else None})
    return [n for n in out if n["name"]]


def constant_subgraph_weights(path: Path, op_types: Sequence[str]) -> list[str]:
    """Nodes of ``op_types`` whose weight is computed at run time from constants only (e.g.
    Constant -> Transpose): quantizers skip them unless the graph is constant-folded first."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # graph order is topological
        if node.op_type == "Constant" or (node.input and all(i in constant for i in node.input
                                                             if i)):
            constant.update(node.output)
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    out = []
    for node in graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if node.op_type in op_types and index is not None and len(node.input) > index:
            weight = node.input[index]
            if weight in constant and weight not in {t.name for t in graph.initializer} \
                    and weight not in inputs:
                out.append(node.name or node.op_type)
    return out


def nothing_to_quantize(model: Path, looked_for: Sequence[str], what: str,
                        preprocess: bool) -> TechniqueError:
    """The refusal when a quantizer found (or would find) nothing to change, with the reason."""
    ops = op_counts(model)
    candidates = candidate_ops(list(looked_for))
    present = sorted(op for op in ops if op in candidates)
    folded = constant_subgraph_weights(model, sorted(candidates))
    if folded and not preprocess:
        why = (f"the weights of {folded[:3]} are computed by constant subgraphs, not stored "
               "as initializers; set preprocess=true so they are folded first")
    elif present:
        why = (f"its {present} nodes have no constant weights the quantizer could use (or "
               "all of them were excluded)")
    else:
        why = f"it has none of them (its op types: {sorted(ops)})"
    error = UnsupportedModel if folded or present else NotApplicable
    if "Conv" in ops and "Conv" not in candidates:
        advice = "its convolutions are quantized by quantize.static (8-bit integer kernels)"
    else:
        advice = "it helps models dominated by MatMul/Gemm/Conv with constant weights"
    return error(f"nothing to quantize: {what} looks for {sorted(candidates)} nodes and {why}; "
                 f"{advice}")
