"""Training data for the torch techniques: the job's .npz read through the same validation as
every other technique, split into train / held-out, and the teacher's logits computed once in
onnxruntime (the teacher exactly as it is deployed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.engine.errors import DatasetMismatch, UnsupportedModel
from app.engine.data.datasets import dataset_samples, load_dataset, load_labels
from app.engine.pytorch.export import io_specs
from app.engine.runtime.sessions import create_session, run_session


def load_arrays(dataset: Path, model: Path, *, need_labels: bool, why: str) -> dict[str, Any]:
    """``{"inputs": [...], "labels": array | None, "names": [...]}`` for ``model``'s inputs."""
    specs, _ = io_specs(model)
    arrays = load_dataset(dataset, specs)
    labels = load_labels(dataset, dataset_samples(arrays))
    if labels is not None and labels.dtype.kind not in "iub":
        if need_labels:
            raise DatasetMismatch(f"{why} needs integer class labels; the dataset's 'labels' are "
                                  f"{labels.dtype} (regression targets are not supported)")
        labels = None
    if labels is None and need_labels:
        raise DatasetMismatch(f"{why} needs a dataset with a 'labels' array (one integer class "
                              "id per sample) next to the input arrays")
    names = [s["name"] for s in specs]
    return {"inputs": [arrays[n] for n in names], "names": names,
            "labels": None if labels is None else labels.astype(np.int64)}


def split(data: dict[str, Any], val_fraction: float, seed: int) -> tuple[dict, dict | None]:
    """A seeded random split; None for the held-out part when it would be empty."""
    n = len(data["inputs"][0])
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n - n_val < 1:
        raise DatasetMismatch(f"the dataset has {n} samples: too few to train on")

    def take(index: Any) -> dict[str, Any]:
        out = {"inputs": [a[index] for a in data["inputs"]], "names": data["names"]}
        for key in ("labels", "teacher"):
            out[key] = None if data.get(key) is None else data[key][index]
        return out

    return take(order[n_val:]), (take(order[:n_val]) if n_val else None)


def teacher_outputs(model: Path, data: dict[str, Any], device: str = "cpu",
                    batch: int = 256) -> Any:
    """The first output of ``model`` on every sample, float32, whatever its shape."""
    session = create_session(model, 1, device)[0]  # type: ignore[arg-type]
    outs = []
    for start in range(0, len(data["inputs"][0]), batch):
        feed = {n: a[start:start + batch] for n, a in zip(data["names"], data["inputs"])}
        outs.append(run_session(session, feed, "dataset")[0])
    return np.concatenate(outs).astype(np.float32)


def teacher_logits(model: Path, data: dict[str, Any], device: str = "cpu",
                   batch: int = 256) -> Any:
    """The first output of ``model`` on every sample, [N, classes] float32."""
    logits = teacher_outputs(model, data, device, batch)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise UnsupportedModel(f"the model's first output has shape {list(logits.shape)}; "
                               "training needs classification logits [batch, classes]")
    return logits


def check_labels(data: dict[str, Any], classes: int) -> None:
    labels = data.get("labels")
    if labels is not None and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetMismatch(f"labels range over {labels.min()}..{labels.max()} but the model "
                              f"outputs {classes} classes")


def save_heldout(data: dict[str, Any], path: Path) -> Path:
    """The held-out split as an .npz the ONNX evaluation code reads like any dataset."""
    arrays = dict(zip(data["names"], data["inputs"]))
    if data.get("labels") is not None:
        arrays["labels"] = data["labels"]
    np.savez(path, **arrays)
    return path
