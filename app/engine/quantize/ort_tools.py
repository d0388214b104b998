"""Calling onnxruntime's quantization tools without side effects outside a scratch directory.

Every quantizer here runs on a *staged* copy of the parent: a link inside a private scratch
directory under the job's workdir (cwd included), upgraded to the opset the quantizer needs and
pre-processed. onnxruntime's tools write "<input>-inferred.onnx" next to their input and litter
the cwd, and the parent's directory may be shared or read-only.

Every call into onnx/onnxruntime tools here (version converter, pre-processing, the quantizers,
which all run shape inference inside) goes through ``isolate.run_bounded``: a hostile graph can
keep them in C for hours, so each runs in a child process killed at the stage's deadline.

onnxruntime/onnx are imported inside the functions (technique modules import this module; the
API must not load onnxruntime through them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import version_converter
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.registry import IntegerOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.engine.runtime.isolate import DEFAULT_DEADLINE_S, error_name, run_bounded
from app.engine.errors import StepTimeout, TechniqueError, UnsupportedModel
from app.engine.runtime.sessions import short_reason
from app.engine.quantize.fast_weights import vectorized_per_channel


@dataclass
class Staged:
    path: Path  # the model to hand to a quantizer
    scratch: Path  # private scratch directory; run tools with it as cwd
    preprocess: str  # what pre-processing did
    opset: dict  # {"original": n, "used": m}
    deadline_s: float = DEFAULT_DEADLINE_S  # for each native step run on it

    def run(self, fn, *args, step: str, **kw):
        """``fn(*args, **kw)`` in a killable child with the scratch dir as its cwd."""
        return run_bounded(fn, *args, deadline_s=self.deadline_s, step=step, cwd=self.scratch, **kw)


@contextlib.contextmanager
def staged(src: Path, workdir: Path, *, preprocess: bool, min_opset: int,
           deadline_s: float = DEFAULT_DEADLINE_S, shapes: bool = True) -> Iterator[Staged]:
    """Yield the staged parent; the scratch directory is deleted afterwards. ``deadline_s``
    bounds each native step (the technique passes ``ctx.native_step_timeout_s``).
    ``shapes=False``: pre-processing only optimises the graph (see ``_preprocess``)."""
    scratch = Path(tempfile.mkdtemp(prefix="quant-", dir=workdir))
    try:
        link = scratch / "parent.onnx"
        try:
            os.symlink(src.resolve(), link)
        except OSError:  # filesystems without symlinks
            shutil.copyfile(src, link)
        stage = Staged(link, scratch, "off", {}, deadline_s)
        stage.path, stage.opset = _ensure_opset(stage, min_opset)
        if preprocess and not shapes and needs_graph_optimisation(stage.path) is None:
            stage.preprocess = ("skipped: every layer's weights are initializers and there is no "
                                "BatchNormalization to fold (graph optimisation would change nothing "
                                "the quantizer reads)")
        elif preprocess:
            stage.path, stage.preprocess = _preprocess(stage, shapes)
        yield stage
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def default_dynamic_op_types() -> list[str]:
    """What quantize_dynamic quantizes when given no op types (this onnxruntime's registry)."""
    return list(IntegerOpsRegistry)


def dynamic(stage: Staged, dst: Path, *, op_types: list[str] | None, per_channel: bool,
            reduce_range: bool, weight_type: str, exclude: Sequence[str] = (),
            only: Sequence[str] | None = None) -> None:
    """Dynamic quantization of the staged model into ``dst``. ``only``: quantize just these
    nodes (per-layer sensitivity)."""
    # The dynamic quantizer first rewrites each Gemm "X" into MatMul "X_MatMul" + Add "X_Add",
    # then matches node names: name both, or a Gemm could never be excluded or singled out.
    exclude = [n for name in exclude for n in (name, f"{name}_MatMul")]
    only = [n for name in only for n in (name, f"{name}_MatMul")] if only else None
    run_quantizer(
        stage, dst, "dynamic", "try op_types=[\"MatMul\"], per_channel=false or preprocess=false",
        _quantize_dynamic, stage.path, dst, op_types=op_types, per_channel=per_channel,
        reduce_range=reduce_range, exclude=list(exclude), only=list(only) if only else None,
        weight_type=weight_type)


def _quantize_dynamic(src: Path, dst: Path, *, op_types: list[str] | None, per_channel: bool,
                      reduce_range: bool, exclude: list[str], only: list[str] | None,
                      weight_type: str) -> None:
    with vectorized_per_channel():
        quantize_dynamic(src, dst, op_types_to_quantize=_without_standard_namesakes(src, op_types),
                         per_channel=per_channel, reduce_range=reduce_range, nodes_to_exclude=exclude,
                         nodes_to_quantize=only,
                         weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8)


# ORT's quantizers rewrite these op types as their com.microsoft contrib ops; ONNX (opset 23)
# has a standard Attention of the same name, with no weights of its own, that they must not touch.
CONTRIB_OPS = frozenset({"Attention", "EmbedLayerNormalization"})


def _without_standard_namesakes(src: Path, op_types: list[str] | None) -> list[str] | None:
    """``op_types`` (None: the registry's) less the contrib op types this graph only has as
    standard ONNX ops: the dynamo exporter's Attention became an invalid QAttention."""
    graph = onnx.load(str(src), load_external_data=False).graph
    standard = {n.op_type for n in graph.node
                if n.op_type in CONTRIB_OPS and n.domain != "com.microsoft"}
    contrib = {n.op_type for n in graph.node if n.domain == "com.microsoft"}
    if not standard - contrib:
        return op_types
    return [t for t in (op_types or default_dynamic_op_types()) if t not in standard - contrib]


def run_quantizer(stage: Staged, dst: Path, what: str, advice: str, fn, *args, **kw):
    """``fn(*args, **kw)``, a module-level function writing ``dst``, in a killable child;
    returns what it returns."""
    try:
        return stage.run(fn, *args, step=f"onnxruntime's {what} quantizer", **kw)
    except TechniqueError:
        dst.unlink(missing_ok=True)
        raise
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise UnsupportedModel(
            f"onnxruntime's {what} quantizer failed on this model ({error_name(exc)}: "
            f"{short_reason(exc, stage.path)}); {advice}"
        ) from None


# What graph optimisation changes that a quantizer reads: weights computed by constant nodes
# (folded into initializers) and BatchNormalization after Conv (folded into its weights).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def needs_graph_optimisation(path: Path) -> str | None:
    """Why pre-processing's graph optimisation could change what the quantizer quantizes, or
    None when it could not: every Conv/Gemm/MatMul input that is constant is an initializer
    already (the pipeline's normalisation folds constant subgraphs into them) and there is no
    BatchNormalization to fold. Measured on the TorchScript MiniLM after normalisation: with and
    without it, dynamic per-channel quantization gives the same 36 MatMulInteger, outputs equal
    to the last bit and the same speed; it cost 1.2 s of a 7 s search."""
    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        return "BatchNormalization to fold"
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # topological order: constants feed forward
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)
            if any(consumers.get(out, set()) & WEIGHTED_OPS for out in node.output):
                return f"a weight computed by {node.op_type} {node.name!r}"
    return None


def model_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _ensure_opset(stage: Staged, minimum: int) -> tuple[Path, dict]:
    """Convert older models with onnx's version converter. onnxruntime's quantizers would only
    rewrite the opset number, which silently changes the meaning of ops whose attributes became
    inputs (Slice, Upsample, ReduceL2...) and yields an invalid model."""
    src = stage.path
    original = model_opset(src)
    if original >= minimum:
        return src, {"original": original, "used": original}
    out = stage.scratch / f"opset{minimum}.onnx"
    try:
        stage.run(convert_opset, src, out, minimum, step="onnx's version converter")
    except TechniqueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises anything
        raise UnsupportedModel(
            f"the model uses opset {original} and this quantization needs opset {minimum}; "
            f"onnx's version converter could not upgrade it ({short_reason(exc, src)}). "
            f"Re-export the model with opset {minimum} or newer"
        ) from None
    return out, {"original": original, "used": minimum}


def convert_opset(src: Path, dst: Path, opset: int) -> None:
    """onnx's version converter, checked (run it through ``run_bounded``)."""
    model = version_converter.convert_version(onnx.load(str(src)), opset)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _preprocess(stage: Staged, shapes: bool = True) -> tuple[Path, str]:
    """onnxruntime's recommended pre-processing: constant folding / basic graph optimisation
    and shape inference. Measured on a TorchScript-exported transformer encoder: without it
    only 4 of 12 MatMul/Gemm were quantized and the file grew 1.25x; with it the file was
    3.8x smaller. Symbolic shape inference fails on many exports, hence the second try; one
    that runs out of time is not retried (the job fails step_timeout: preprocess=false skips
    it), so a hostile graph costs one deadline, not two.

    ``shapes=False`` keeps only the graph optimisation (the constant folding that exposes the
    weights) and leaves shape inference to the quantizers, which run onnx's again on their
    input anyway. Measured on the TorchScript MiniLM: 1.2 s instead of 10 s (symbolic shape
    inference is most of it), the same 36 MatMulInteger and 24 DynamicQuantizeLinear after
    dynamic quantization, the same outputs (mean cosine 0.99008 at batch 1, 0.99241 at 32)
    and the same speed once both are stripped of value_info."""
    out = stage.scratch / "preprocessed.onnx"
    # auto_merge: symbolic shape inference otherwise fails on transformers (measured here).
    attempts = ((("full", {"auto_merge": True}),
                 ("without symbolic shape inference", {"skip_symbolic_shape": True})) if shapes
                else (("graph optimisation only (shapes inferred by the quantizer)",
                       {"skip_symbolic_shape": True, "skip_onnx_shape": True}),))
    for label, kwargs in attempts:
        try:
            stage.run(quant_pre_process, str(stage.path), str(out), **kwargs,
                      step="onnxruntime's pre-processing (shape inference)")
            return out, label
        except StepTimeout as exc:
            raise StepTimeout(exc.step, exc.deadline_s, "set preprocess=false to skip it") from None
        except Exception:  # noqa: BLE001 - any failure: try the lighter variant, then none
            out.unlink(missing_ok=True)
    return stage.path, "skipped (onnxruntime's pre-processing failed on this model)"
