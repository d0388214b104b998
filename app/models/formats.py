"""Detect a model file's format by its content (never by its name) and inspect it.

An uploaded file is data, never code: a pickle is recognised by its opcodes and refused, never
loaded. ONNX is parsed as protobuf and checked with ``onnx.checker``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from app.errors import InvalidModel, UnsupportedFormat

ACCEPTED = ("Accepted formats: ONNX (.onnx, a single file with weights inside), torch.export "
            "programs (.pt2, from torch.export.save) and Keras models (.keras, or a full-model .h5 "
            "from model.save).")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise UnsupportedFormat(f"This looks like a zip archive but can't be read. {ACCEPTED}") from None
        if any(n.endswith("archive_format") for n in names):
            return "pt2"
        if "config.json" in names:
            return "keras"
        if any(n == "saved_model.pb" or n.endswith("/saved_model.pb") for n in names):
            raise InvalidModel(
                "This is a TensorFlow SavedModel. Loading one runs the graph's ops (they can read and "
                "write files), so Lathe does not accept SavedModel: save the Keras model with "
                f"model.save('model.keras'), or export it to ONNX. {ACCEPTED}")
        if any(n.endswith(".pkl") for n in names):
            raise UnsupportedFormat(
                "This is a torch.save checkpoint (pickles, no program): Lathe never unpickles "
                f"uploads. Save the model with torch.export.save or export it to ONNX. {ACCEPTED}")
        raise UnsupportedFormat(f"This is a zip archive, not a model Lathe recognises. {ACCEPTED}")
    if head == HDF5_MAGIC:
        return "keras"
    # An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08. Exporters
    # write fields in order, so this is how every ONNX file seen in practice begins.
    if head[0] == 0x08:
        return "onnx"
    raise UnsupportedFormat(f"Lathe does not recognise this file's format. {ACCEPTED}")


def inspect_pt2(path: Path) -> dict[str, Any]:
    """Check a torch.export archive statically (every member, config and the program JSON; nothing
    unpickled or evaluated); its signature is known once converted to ONNX."""
    from app.engine.runtime.pt2_archive import UnsafeArchive, read_manifest

    try:
        manifest = read_manifest(path)
    except UnsafeArchive as exc:
        raise InvalidModel(f"Refused: {exc}.") from None
    return {"inputs": [], "outputs": [], "parameter_count": manifest.parameter_count,
            "tensors_checked": len(manifest.weights) + len(manifest.constants)}


def inspect_keras(path: Path) -> dict[str, Any]:
    """Check a Keras model statically against the allow-list (no Keras import: the API never
    loads it); its signature is known once converted to ONNX."""
    from app.engine.runtime.keras_archive import UnsafeKerasModel, read_manifest

    try:
        manifest = read_manifest(path)
    except UnsafeKerasModel as exc:
        raise InvalidModel(f"Refused: {exc}.") from None
    return {"inputs": [], "outputs": [], "parameter_count": manifest.parameter_count,
            "keras_file": manifest.kind}


def inspect_model(path: Path, *, max_nodes: int | None = None,
                  max_depth: int | None = None) -> dict[str, Any]:
    """Return format, inputs, outputs, parameter_count and extra metadata, or raise a 4xx error.
    ``max_nodes`` / ``max_depth``: an ONNX graph's size limits (uploads pass the settings)."""
    fmt = _sniff(path)
    if fmt == "pt2":
        try:
            return {"format": fmt, **inspect_pt2(path)}
        except (zipfile.BadZipFile, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModel(f"The torch.export archive could not be read ({type(exc).__name__}).") from None
    if fmt == "keras":
        return {"format": fmt, **inspect_keras(path)}
    from app.engine.runtime.model_info import inspect_onnx
    from app.engine.errors import TechniqueError

    try:
        info = inspect_onnx(path, max_nodes=max_nodes, max_depth=max_depth)
    except TechniqueError as exc:
        raise InvalidModel(exc.detail) from None
    except Exception as exc:  # protobuf decode errors and the like: the file is not valid ONNX
        raise InvalidModel(f"The file starts like ONNX but could not be parsed as an ONNX model ({type(exc).__name__}).") from None
    return {"format": fmt, **info}
