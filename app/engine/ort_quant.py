"""Calling onnxruntime's quantization tools without side effects outside a scratch directory.

onnxruntime is imported inside the functions (technique modules import this module; the API
must not load onnxruntime through them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from app.engine.registry import TechniqueError, UnsupportedModel
from app.engine.session import short_reason


def default_dynamic_op_types() -> list[str]:
    """What quantize_dynamic quantizes when given no op types (this onnxruntime's registry)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return list(IntegerOpsRegistry)


def quantize_dynamic_file(
    src: Path,
    dst: Path,
    workdir: Path,
    *,
    op_types: list[str] | None,
    per_channel: bool,
    reduce_range: bool,
    weight_type: str,
    preprocess: bool,
) -> str:
    """Write the dynamically quantized ``src`` to ``dst``; return what pre-processing did.
    ``op_types`` None means onnxruntime's default set.

    onnxruntime's quantizer writes "<input>-inferred.onnx" next to its input and its
    pre-processor uses scratch files, so both run on a link to the parent inside a private
    scratch directory under ``workdir`` (cwd included), deleted afterwards: the parent's
    directory may be shared or read-only, and nothing may land in the process CWD.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if dst.resolve() == src.resolve():
        raise TechniqueError("internal: the output path would overwrite the input model")
    scratch = Path(tempfile.mkdtemp(prefix="quant-", dir=workdir))
    try:
        link = scratch / "parent.onnx"
        try:
            os.symlink(src.resolve(), link)
        except OSError:  # filesystems without symlinks
            shutil.copyfile(src, link)
        source, status = (_preprocess(link, scratch) if preprocess else (link, "off"))
        try:
            with contextlib.chdir(scratch):
                quantize_dynamic(
                    source, dst, op_types_to_quantize=op_types, per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                )
        except Exception as exc:
            dst.unlink(missing_ok=True)
            raise UnsupportedModel(
                f"onnxruntime's dynamic quantizer failed on this model ({type(exc).__name__}: "
                f"{short_reason(exc, src)}); try op_types=[\"MatMul\"], per_channel=false or "
                "preprocess=false"
            ) from None
        return status
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _preprocess(src: Path, scratch: Path) -> tuple[Path, str]:
    """onnxruntime's recommended pre-processing: constant folding / basic graph optimisation
    and shape inference. Measured on a TorchScript-exported transformer encoder: without it
    only 4 of 12 MatMul/Gemm were quantized and the file grew 1.25x; with it the file was
    3.8x smaller. Symbolic shape inference fails on many exports, hence the second try."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = scratch / "preprocessed.onnx"
    # auto_merge: symbolic shape inference otherwise fails on transformers (measured here).
    attempts = (("full", {"auto_merge": True}), ("without symbolic shape inference", {"skip_symbolic_shape": True}))
    for label, kwargs in attempts:
        try:
            with contextlib.chdir(scratch):
                quant_pre_process(str(src), str(out), **kwargs)
            return out, label
        except Exception:  # noqa: BLE001 - any failure: try the lighter variant, then none
            out.unlink(missing_ok=True)
    return src, "skipped (onnxruntime's pre-processing failed on this model)"
