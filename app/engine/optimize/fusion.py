"""onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``), run in a
killable child (it runs shape inference and an onnxruntime session inside, on an uploaded
graph), and the detection of what to ask it for.

onnx/onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime.transformers as package
from onnx import numpy_helper
from onnxruntime.transformers import optimizer

from app.engine.errors import TechniqueError, UnsupportedModel
from app.engine.runtime.isolate import error_name, run_bounded
from app.engine.runtime.sessions import short_reason

# A graph with these (unfused) is a transformer block the "bert" fusions understand: layer
# normalisation (as the op, or the ReduceMean/Sub/Pow/Sqrt chain older exports write) and
# attention's Softmax over MatMul scores.
LAYER_NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "ReduceMean")
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention")


def detect_model_type(ops: Counter[str]) -> str | None:
    """"bert" for an encoder-style block (layer norm + softmax attention over MatMul), None for
    a graph with no transformer pattern (only onnxruntime's generic fusions apply)."""
    if (any(ops.get(o) for o in LAYER_NORM_OPS) and any(ops.get(o) for o in ATTENTION_OPS)
            and ops.get("MatMul")):
        return "bert"
    return None


def attention_shape(path: Path) -> tuple[int, int] | None:
    """(num_heads, hidden_size) read from the graph, or None: hidden_size is the most common
    LayerNormalization scale length; the head size d an integer constant dividing it (the
    per-head Reshape's target writes it, with the head count or -1), preferring the d whose
    sqrt (or 1/sqrt) scales the scores, then one whose partner h = hidden / d is a constant
    too, then h <= d; num_heads = hidden / d. onnxruntime's own
    detection reads only Reshape initializers, which TorchScript exports compute instead (it
    failed on MiniLM, and fusing Attention there needs both given)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = {t.name: t for t in graph.initializer}
    arrays = []
    for node in graph.node:
        if node.op_type == "Constant":
            arrays += [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    arrays += [numpy_helper.to_array(t) for t in graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL and math.prod(t.dims) <= 8]
    widths = Counter(math.prod(tensors[n.input[1]].dims) for n in graph.node
                     if n.op_type == "LayerNormalization" and n.input[1] in tensors)
    if not widths:
        return None
    hidden = widths.most_common(1)[0][0]
    small = [a for a in arrays if a.size <= 8]
    ints = {int(v) for a in small if a.dtype.kind in "iu" for v in a.ravel()}
    floats = [float(v) for a in small if a.dtype.kind == "f" for v in a.ravel()]
    # head sizes under 8 do not occur; 2 would also match GELU's sqrt(2)
    pairs = [(hidden // d, d) for d in ints if 8 <= d < hidden and hidden % d == 0]
    if not pairs:
        return None

    def scales(d: int) -> bool:
        return any(math.isclose(f, math.sqrt(d), rel_tol=1e-3)
                   or math.isclose(f, 1 / math.sqrt(d), rel_tol=1e-3) for f in floats)

    best = min(pairs, key=lambda p: (not scales(p[1]), p[0] not in ints, p[0] > p[1], p[0]))
    return best[0], hidden


def fuse(src: Path, dst: Path, scratch: Path, *, model_type: str | None, num_heads: int,
         hidden_size: int, opt_level: int | None, use_gpu: bool, float16: bool,
         deadline_s: float) -> dict[str, Any]:
    """Run the optimizer on ``src`` into ``dst`` in a bounded child; returns what it fused.
    ``model_type`` None: onnxruntime's own graph optimizations only (no transformer
    fusions)."""
    try:
        return run_bounded(_fuse, str(src), str(dst), model_type=model_type, num_heads=num_heads,
                           hidden_size=hidden_size, opt_level=opt_level, use_gpu=use_gpu,
                           float16=float16, deadline_s=deadline_s,
                           step="onnxruntime's transformer optimizer", cwd=scratch)
    except TechniqueError:
        dst.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the optimizer raises anything
        dst.unlink(missing_ok=True)
        raise UnsupportedModel(
            f"onnxruntime's transformer optimizer failed on this model ({error_name(exc)}: "
            f"{short_reason(exc, src)}); try model_type, num_heads/hidden_size, or opt_level=0"
        ) from None


def _fuse(src: str, dst: str, *, model_type: str | None, num_heads: int, hidden_size: int,
          opt_level: int | None, use_gpu: bool, float16: bool) -> dict[str, Any]:
    # Its modules import each other by bare name from the folder its __init__ puts on
    # sys.path; a fork server's child gets the parent's sys.path back, without that folder.
    if (folder := os.path.dirname(package.__file__)) not in sys.path:
        sys.path.append(folder)

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    if model_type is None:
        optimized = optimizer.optimize_model(src, "bert", opt_level=opt_level or 1,
                                             use_gpu=use_gpu, only_onnxruntime=True)
        fused = {}
    else:
        optimized = optimizer.optimize_model(src, model_type, num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=opt_level,
                                             use_gpu=use_gpu)
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    if float16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.topological_sort()
    optimized.save_model_to_file(dst)
    return {"fused_operators": dict(sorted(fused.items()))}
