"""Shared by the peer drivers (each runs in its own venv with only numpy guaranteed).

A driver is run as ``python <driver>.py '<json job>'``; the job names the model kind
("minilm" or "cnn"), the recipe, the FP32 ``onnx`` file, ``model_dir`` (the ONNX file beside
the Hugging Face config, for Optimum), the ``tuning`` .npz (one array per input, plus
``labels`` for the CNN), the ``out`` folder and the tolerances. It writes ``out/result.json``:
``{"path": artifact, "runtime": "onnxruntime" | "openvino", "note": str}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def job() -> dict:
    return json.loads(sys.argv[1])


def done(job: dict, path: str | Path, runtime: str = "onnxruntime", note: str = "") -> None:
    Path(job["out"], "result.json").write_text(json.dumps({"path": str(path), "runtime": runtime, "note": note}))


def tuning(job: dict) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(job["tuning"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = arrays.pop("labels", None)
    return arrays, labels


def batches(feeds: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    return [{k: v[i:i + size] for k, v in feeds.items()} for i in range(0, n, size)]


def samples(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per sample (batch 1), as calibration readers want them."""
    return batches(feeds, 1)


def score(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    """Higher is better: top-1 accuracy in % with labels, else mean per-sample cosine vs FP32."""
    if labels is not None:
        return float((outputs.argmax(-1) == labels).mean() * 100.0)
    return float(cosines(outputs, reference).mean())


def cosines(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two output batches."""
    a, b = outputs.reshape(len(outputs), -1), reference.reshape(len(reference), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def ort_outputs(model, feeds: dict[str, np.ndarray], size: int = 32) -> np.ndarray:
    """First output of an ONNX file (path or bytes) over all samples, onnxruntime, 1 thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in b.items() if k in names})[0]
                           for b in batches(feeds, size)])


class Reader:
    """onnxruntime's CalibrationDataReader protocol over the tuning samples (no base class needed)."""

    def __init__(self, feeds: dict[str, np.ndarray], size: int = 1) -> None:
        self.items = batches(feeds, size)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self) -> None:
        self.i = 0
