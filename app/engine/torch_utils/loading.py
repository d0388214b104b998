"""Getting a trainable ``torch.nn.Module`` from an uploaded model.

ONNX → torch goes through onnx2torch. A ``.pt2`` (torch.export) archive is only ever loaded
after the static pickle scan: ``torch.export.load`` falls back to full unpickling, so the scan
runs again here in the worker even though the API already ran it (defence in depth).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from app.engine.registry import UnsupportedModel

PT2_MAGIC = b"PK\x03\x04"


def is_pt2(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PT2_MAGIC


def require_onnx(path: Path, technique: str) -> None:
    """The torch techniques start from ONNX; a .pt2 gets its ONNX child from convert.onnx."""
    if is_pt2(path):
        raise UnsupportedModel(
            f"{technique} works on ONNX models and this is a torch.export (.pt2) archive; "
            "convert it to ONNX first (technique convert.onnx) and run this job on its output "
            "model")


def _import_onnx2torch() -> Any:
    """onnx2torch imports torchvision at module top for two converters (NonMaxSuppression,
    RoiAlign). torchvision cannot be installed beside this torch build, so when it is absent a
    placeholder stands in during the import only; those two ops then fail clearly on use."""
    import importlib.util

    if "onnx2torch" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return onnx2torch
    missing = "this operator needs torchvision, which this worker does not have"

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise UnsupportedModel(missing)

    stub = types.ModuleType("torchvision")
    stub.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
    stub.ops.roi_align = stub.ops.nms = stub.ops.box_convert = unavailable  # type: ignore
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops")}
    sys.modules.update({"torchvision": stub, "torchvision.ops": stub.ops})
    try:
        import onnx2torch
    finally:  # nothing else in the process may mistake the stub for torchvision
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return onnx2torch


def onnx_to_torch(path: Path) -> Any:
    """A trainable fx.GraphModule equivalent to the ONNX model (weights as parameters)."""
    import onnx

    onnx2torch = _import_onnx2torch()
    model = onnx.load(str(path), load_external_data=False)
    try:
        try:
            module = onnx2torch.convert(model)
        except NotImplementedError:
            # onnx2torch knows operator versions up to about opset 17; current exporters write
            # 18-20, where e.g. Constant gained a version. Down-converting is exact for them.
            from onnx import version_converter

            module = onnx2torch.convert(version_converter.convert_version(model, 17))
    except UnsupportedModel:
        raise
    except Exception as exc:  # an operator or attribute onnx2torch has no converter for
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise UnsupportedModel(
            f"this ONNX model cannot be turned into a trainable torch module ({reason}); "
            "the torch techniques support the common CNN/MLP operators") from None
    return module.train(False)


def load_pt2(path: Path) -> Any:
    """The ExportedProgram in a .pt2, after the allow-list scan has passed."""
    import torch

    from app.engine.pickle_scan import UnsafeArchive, scan_archive

    try:
        scan_archive(path)
    except UnsafeArchive as exc:
        raise UnsupportedModel(f"refused to load the archive: {exc}") from None
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise UnsupportedModel(
            f"torch {torch.__version__} cannot load this torch.export archive ({reason}); "
            "save it with torch.export.save from a compatible torch version") from None
