"""onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``), run in a
killable child (it runs shape inference and an onnxruntime session inside, on an uploaded
graph), and the detection of what to ask it for.

onnx/onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

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
    import logging
    import os
    import sys

    import onnxruntime.transformers as package

    # Its modules import each other by bare name from the folder its __init__ puts on
    # sys.path; a fork server's child gets the parent's sys.path back, without that folder.
    if (folder := os.path.dirname(package.__file__)) not in sys.path:
        sys.path.append(folder)
    from onnxruntime.transformers import optimizer

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
