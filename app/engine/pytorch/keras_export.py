"""A Keras model (.keras or full-model .h5) → ONNX, through Keras 3 on its torch backend.

``convert_keras`` runs only in the confined child that ``convert.onnx`` starts (no network,
read-only filesystem but its folder, HOME and TMPDIR there): it sets the resource limits, checks
the file against the allow-list again (``app.engine.runtime.keras_archive``: the API checked it
at upload; this is defence in depth, before Keras sees a byte), imports Keras with
``KERAS_BACKEND=torch`` (never in the API nor at a worker module's top), loads with
``safe_mode=True, compile=False``, exports with a symbolic batch and verifies the ONNX in
onnxruntime against the Keras model's own outputs on generated inputs.
"""

from __future__ import annotations

import os
import resource
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.errors import UnsupportedModel
from app.engine.pytorch.export import compare_export, sample_feed
from app.engine.runtime.keras_archive import UnsafeKerasModel, read_manifest

KERAS_SUFFIX = {"keras": ".keras", "h5": ".h5"}
# Generous for the models Lathe converts, small beside a host: a hostile file can't fill the
# disk, allocate the machine or spin forever even if the deadline were lifted.
MEMORY_LIMIT_BYTES = 16 << 30
MIN_FILE_LIMIT_BYTES = 512 << 20


def limit_resources(source_bytes: int, cpu_seconds: float) -> dict[str, int]:
    """RLIMIT_FSIZE / RLIMIT_AS / RLIMIT_CPU on this process; what was set."""
    limits = {"file_size_bytes": max(MIN_FILE_LIMIT_BYTES, 8 * source_bytes),
              "address_space_bytes": MEMORY_LIMIT_BYTES, "cpu_seconds": max(30, int(cpu_seconds))}
    for which, value in ((resource.RLIMIT_FSIZE, limits["file_size_bytes"]),
                         (resource.RLIMIT_AS, limits["address_space_bytes"]),
                         (resource.RLIMIT_CPU, limits["cpu_seconds"])):
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))
    return limits


def _export(model: Any, output: Path, opset: int) -> None:
    """torch.onnx's dynamo exporter with a symbolic batch: a Keras 3 model on the torch backend
    is a ``torch.nn.Module``. (``model.export(format="onnx")`` falls back to the TorchScript
    exporter when a dimension is dynamic, which fails on LayerNormalization.)"""
    import torch

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    args = tuple(torch.zeros((2, *t.shape[1:]), dtype=getattr(torch, t.dtype)) for t in model.inputs)
    # The Keras input names, so a dataset's arrays keep the names its users know.
    names = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(model.inputs)]
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        names = [f"input_{i}" for i in range(len(args))]
    if any(d is None for t in model.inputs for d in t.shape[1:]):
        raise UnsupportedModel("the model has an input dimension other than the batch left open; "
                               "save it with a fixed shape (keras.Input(shape=(...)))")
    torch.onnx.export(Flat().eval(), args, str(output), input_names=names,
                      dynamic_shapes=(tuple({0: torch.export.Dim("batch")} for _ in args),),
                      opset_version=opset, dynamo=True, verbose=False, external_data=False,
                      artifacts_dir=str(output.parent))


def convert_keras(source: str, target: str, opset: int, atol: float, cpu_seconds: float,
                  confinement: dict) -> dict:
    """Check, load, export and verify (cwd = the child's folder); the report as JSON-able data."""
    source_path, output = Path(source).resolve(), Path(target).resolve()
    limits = limit_resources(source_path.stat().st_size, cpu_seconds)
    try:
        manifest = read_manifest(source_path)
    except UnsafeKerasModel as exc:
        raise UnsupportedModel(f"refused: {exc}") from None
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ["KERAS_HOME"] = str(Path.cwd() / ".keras")
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import keras

        if keras.backend.backend() != "torch":
            raise UnsupportedModel(f"Keras runs on its {keras.backend.backend()} backend here, not torch")
        # Keras picks the loader by the file's name: give it the one its content says.
        named = source_path.with_suffix(KERAS_SUFFIX[manifest.kind])
        source_path.rename(named)
        try:
            model = keras.models.load_model(named, safe_mode=True, compile=False)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:240] or type(exc).__name__
            raise UnsupportedModel(f"Keras could not load this model ({reason})") from None
        try:
            _export(model, output, opset)
        except UnsupportedModel:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:240] or type(exc).__name__
            raise UnsupportedModel(f"Keras could not export this model to ONNX ({reason})") from None
    return _verify(model, output, atol, opset, manifest, {**confinement, "limits": limits},
                   torch.__version__, keras.__version__, np)


def _verify(model: Any, output: Path, atol: float, opset: int, manifest: Any, sandbox: dict,
            torch_version: str, keras_version: str, np: Any) -> dict:
    feed = sample_feed(output)
    args = list(feed.values())
    expected = model(args[0] if len(args) == 1 else args, training=False)
    expected = [expected] if not isinstance(expected, (list, tuple, dict)) else \
        list(expected.values()) if isinstance(expected, dict) else list(expected)
    expected = [np.asarray(e.detach().cpu().numpy() if hasattr(e, "detach") else e) for e in expected]
    checked_export = compare_export(output, feed, expected, atol, "the Keras model", opset)
    return {
        "parent": {"format": manifest.kind, "keras_classes": list(manifest.classes)}, **checked_export,
        "torch": torch_version, "keras": keras_version,
        "notes": [] if checked_export["symbolic_batch"] else ["the ONNX model has a fixed batch size"],
        "sandbox": sandbox,
    }
