"""Static description of an ONNX file: inputs, outputs, size, opset.

Used by the API at upload time and by the worker when it registers a produced model, so it
imports onnx (pure protobuf + checker) but never onnxruntime or torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import Message
from onnx import TensorProto, helper

from app.engine.errors import UnsupportedModel


def inspect_onnx(path: str | Path, *, max_nodes: int | None = None,
                 max_depth: int | None = None) -> dict[str, Any]:
    """Validate ``path`` and describe it; raise UnsupportedModel with advice when unusable.
    ``max_nodes`` / ``max_depth``: refuse absurd graphs (see ``check_graph_size``); the API
    passes its settings at upload, produced models are not limited."""
    path = Path(path)
    try:
        # Never follow external-data references: they could point anywhere on the worker's disk.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated file, >2 GiB...
        raise UnsupportedModel(
            f"the file is not a readable ONNX model ({type(exc).__name__}); upload a single "
            ".onnx file exported by torch.onnx, tf2onnx or similar"
        ) from None

    external = [t.name for t in _all_tensors(model) if _is_external(t)]
    if external:
        raise UnsupportedModel(
            f"{len(external)} tensor(s) (e.g. {external[0][:100]!r}) are stored as external data; "
            "external-data models are not supported, save the model as one file "
            "(onnx.save_model(model, path, save_as_external_data=False), < 2 GiB)"
        )

    check_graph_size(model, max_nodes=max_nodes, max_depth=max_depth)  # before the checker
    try:
        # The path form also works for models close to the 2 GiB protobuf limit.
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedModel(f"the ONNX checker rejected the model: {first}") from None

    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    init_names.update(s.values.name for s in graph.sparse_initializer)
    params = sum(_numel(t.dims) for t in graph.initializer)
    params += sum(_numel(s.dims) for s in graph.sparse_initializer)
    opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return {
        # Old exporters list weights as graph inputs too; they are not something to feed.
        "inputs": [_value_info(v) for v in graph.input if v.name not in init_names],
        "outputs": [_value_info(v) for v in graph.output],
        "parameter_count": int(params),
        "opset": opset,
        "producer": producer,
        "ir_version": int(model.ir_version),
        # Top-level graph only; used to explain what a technique can or cannot do.
        "op_types": dict(sorted(Counter(n.op_type for n in graph.node).items())),
    }


def check_graph_size(model: onnx.ModelProto, *, max_nodes: int | None,
                     max_depth: int | None) -> None:
    """Refuse graphs no real model has: subgraphs (If/Loop/Scan bodies) nested deeper than
    ``max_depth``, or more than ``max_nodes`` nodes counting subgraphs and functions. A few KB
    of nested If kept onnxruntime's shape inference busy for hours; torch exports nest 0-2
    deep. Iterative, and stops at the first limit, so the check itself stays cheap."""
    nodes, deepest = 0, 0
    stack: list[tuple[onnx.GraphProto | onnx.FunctionProto, int]] = [(model.graph, 0)]
    stack += [(f, 0) for f in model.functions]
    while stack:
        graph, depth = stack.pop()
        deepest = max(deepest, depth)
        nodes += len(graph.node)
        if max_depth is not None and deepest > max_depth:
            raise UnsupportedModel(
                f"subgraphs (If/Loop/Scan bodies) are nested more than {max_depth} deep (found "
                f"{deepest}); this service refuses such graphs (LATHE_MAX_SUBGRAPH_DEPTH)")
        if max_nodes is not None and nodes > max_nodes:
            raise UnsupportedModel(
                f"the model has more than {max_nodes} nodes, counting subgraphs and functions; "
                "this service refuses such graphs (LATHE_MAX_GRAPH_NODES)")
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append((attr.g, depth + 1))
                stack.extend((sub, depth + 1) for sub in attr.graphs)


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _is_external(tensor: TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def _all_tensors(message: Message) -> Iterator[TensorProto]:
    """Every TensorProto anywhere in ``message``: graph initializers, sparse tensors, attribute
    values (Constant nodes), subgraphs, functions and their attribute defaults, training info.

    Walks the protobuf generically rather than listing fields, so a place a tensor can live is
    never missed (external data hidden in a FunctionProto's Constant once was). Iterative, so
    deeply nested subgraphs cannot exhaust Python's stack.
    """
    stack = [message]
    while stack:
        current = stack.pop()
        if isinstance(current, TensorProto):
            yield current
            continue  # a tensor holds no other tensor
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if isinstance(value, Message):
                stack.append(value)
            else:  # a repeated field
                stack.extend(value)


def _value_info(info: onnx.ValueInfoProto) -> dict[str, Any]:
    kind = info.type.WhichOneof("value")
    if kind != "tensor_type":
        # Sequences, maps, optionals: described by kind only; techniques refuse them as inputs.
        return {"name": info.name, "shape": None, "dtype": kind or "unknown"}
    ttype = info.type.tensor_type
    shape: list[int | str | None] | None = None
    if ttype.HasField("shape"):
        shape = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return {"name": info.name, "shape": shape, "dtype": _dtype_name(ttype.elem_type)}


def _dtype_name(elem_type: int) -> str:
    if elem_type == TensorProto.STRING:
        return "string"
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except Exception:  # a type this numpy/onnx pair cannot map: the ONNX name is clear enough
        return TensorProto.DataType.Name(elem_type).lower()
