"""Detect a model file's format by its content (never by its name) and inspect it.

An uploaded file is data, never code: a pickle is recognised by its opcodes and refused, never
loaded. ONNX is parsed as protobuf and checked with ``onnx.checker``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from app.errors import InvalidModel, UnsupportedFormat

ACCEPTED = "Accepted formats: ONNX (.onnx, a single file with weights inside)."


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        raise UnsupportedFormat(f"The file is empty. {ACCEPTED}")
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        raise UnsupportedFormat(
            "This is a Python pickle (e.g. torch.save / pickle.dump). Pickles can run code when "
            f"loaded, so Lathe never loads them. Export the model to ONNX instead. {ACCEPTED}")
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(".pkl") for n in names):
            raise UnsupportedFormat(
                "This is a PyTorch archive containing pickles (torch.save or torch.export). "
                f"Export the model to ONNX instead (torch.onnx.export). {ACCEPTED}")
        raise UnsupportedFormat(f"This is a zip archive, not a model Lathe recognises. {ACCEPTED}")
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08. Exporters
    # write fields in order, so this is how every ONNX file seen in practice begins.
    if head[0] == 0x08:
        return "onnx"
    raise UnsupportedFormat(f"Lathe does not recognise this file's format. {ACCEPTED}")


def inspect_model(path: Path) -> dict[str, Any]:
    """Return format, inputs, outputs, parameter_count and extra metadata, or raise a 4xx error."""
    fmt = _sniff(path)
    from app.engine.inspect import inspect_onnx
    from app.engine.registry import TechniqueError

    try:
        info = inspect_onnx(path)
    except TechniqueError as exc:
        raise InvalidModel(exc.detail) from None
    except Exception as exc:  # protobuf decode errors and the like: the file is not valid ONNX
        raise InvalidModel(f"The file starts like ONNX but could not be parsed as an ONNX model ({type(exc).__name__}).") from None
    return {"format": fmt, **info}
