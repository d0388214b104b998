"""One pass over the evaluation samples: a model's accuracy against the dataset's labels and
its fidelity to a reference model, with the same inputs fed to both.

Used by ``evaluate`` and by every quantization report (reference = the parent), so accuracy
and fidelity are always computed the same way. numpy/onnxruntime are imported inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.engine.measure.fidelity import GENERATED_FIDELITY_SAMPLES, FidelityAccumulator
from app.engine.base import Device, ProgressFn
from app.engine.errors import DatasetMismatch
from app.engine.data.datasets import load_labels
from app.engine.runtime.inputs import input_specs
from app.engine.runtime.sessions import create_session, run_session


def compare_models(model_path: Path, reference_path: Path | None, feeds: Any, *,
                   samples: int, batch_size: int, threads: int, device: Device,
                   progress: ProgressFn, span: tuple[float, float] = (0.0, 1.0),
                   task: str = "auto", use_labels: bool = True,
                   stage: str = "evaluation", strict_labels: bool = True) -> dict[str, Any]:
    """Accuracy of ``model_path`` (and of the reference) on the dataset's labels, and fidelity
    of the model's outputs to the reference's. ``feeds`` is an ``app.engine.data.feeds.FeedSource``;
    generated inputs give fidelity only (min(samples, 64) of them). ``strict_labels`` False:
    labels that do not fit the output are reported as an accuracy error, not raised."""
    model, _ = create_session(model_path, threads, device)
    ref = create_session(reference_path, threads, device)[0] if reference_path else None
    specs = input_specs(model)
    names = [o.name for o in model.get_outputs()]
    if feeds.what == "dataset":
        available = feeds.samples(specs)
        labels = load_labels(feeds.dataset_path, available) if use_labels else None
    else:
        available, labels = GENERATED_FIDELITY_SAMPLES, None
    total = min(samples, available)
    # A model with a fixed first dimension can only be fed batches of exactly that size.
    fixed = next((s["shape"][0] for s in specs
                  if s["shape"] and isinstance(s["shape"][0], int) and s["shape"][0] > 0), None)
    step = fixed or min(batch_size, total)
    fidelity = FidelityAccumulator(names) if ref is not None else None
    label_error = None
    scores = {k: Scores(resolve_task(task, labels)) for k in ("model", "reference")}
    for start in range(0, total, step):
        progress(span[0] + (span[1] - span[0]) * start / total, stage)
        batch = fixed or min(step, total - start)
        feed = feeds(specs, batch, start)
        got = run_session(model, feed, feeds.what, names)
        want = run_session(ref, feed, feeds.what, names) if ref is not None else None
        if fidelity is not None:
            fidelity.add(want, got, batch)
        if labels is not None:
            index = [(start + i) % available for i in range(batch)]
            try:
                scores["model"].add(got[0], labels[index], names[0])
                if want is not None:
                    scores["reference"].add(want[0], labels[index], names[0])
            except DatasetMismatch as exc:
                if strict_labels:
                    raise
                labels, label_error = None, exc.detail
    out: dict[str, Any] = {"source": feeds.what, "samples": total,
                           "fidelity": {"outputs": fidelity.result()} if fidelity else None,
                           "accuracy": None}
    if label_error:
        out["accuracy"] = {"error": f"labels not used: {label_error}"}
    elif labels is not None:
        acc = {"task": scores["model"].task, "output": names[0],
               "model": scores["model"].result()}
        if ref is not None:
            acc["reference"] = scores["reference"].result()
            acc["drop"] = accuracy_drop(acc["reference"], acc["model"], acc["task"])
        out["accuracy"] = acc
    return out


def accuracy_drop(reference: dict, model: dict, task: str) -> float:
    """Classification: top-1 points lost. Regression: MSE increase in percent."""
    if task == "classification":
        return round((reference["top1"] - model["top1"]) * 100.0, 4)
    base = max(reference["mse"], 1e-30)
    return round((model["mse"] - reference["mse"]) / base * 100.0, 4)


def resolve_task(task: str, labels: Any) -> str:
    if task != "auto" or labels is None:
        return task
    return "classification" if labels.dtype.kind in "iub" else "regression"


class Scores:
    """Top-1/top-5 (classification) or MSE/MAE (regression), accumulated over batches."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.n = self.top1 = self.top5 = 0
        self.sq = self.ab = 0.0
        self.elems = 0
        self.classes = 0

    def add(self, output: Any, labels: Any, name: str) -> None:
        output = np.asarray(output)
        if self.task == "classification":
            self._classify(output, np.asarray(labels).reshape(len(labels), -1), name)
            return
        pred = output.reshape(len(labels), -1).astype(np.float64)
        target = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
        if pred.shape != target.shape:
            raise DatasetMismatch(
                f"regression labels have {target.shape[1]} value(s) per sample but output "
                f"{name!r} has {pred.shape[1]}; store one target row per sample")
        diff = pred - target
        self.sq += float((diff**2).sum())
        self.ab += float(np.abs(diff).sum())
        self.elems += diff.size
        self.n += len(target)

    def _classify(self, output: Any, labels: Any, name: str) -> None:
        if labels.shape[1] != 1:
            raise DatasetMismatch("classification labels must hold one class index per "
                                  f"sample; got {labels.shape[1]} values per sample")
        labels = labels[:, 0].astype(np.int64)
        if output.ndim == 1 and output.dtype.kind in "iu":  # the model already outputs classes
            self.top1 += int((output == labels).sum())
            self.n += len(labels)
            return
        if output.ndim != 2:
            raise DatasetMismatch(
                f"output {name!r} has shape {list(output.shape)}; classification scoring needs "
                "[batch, classes] scores (or set task='regression')")
        self.classes = output.shape[1]
        if labels.min() < 0 or labels.max() >= self.classes:
            raise DatasetMismatch(f"labels range over {labels.min()}..{labels.max()} but "
                                  f"output {name!r} has {self.classes} classes")
        order = np.argsort(-output, axis=1, kind="stable")
        self.top1 += int((order[:, 0] == labels).sum())
        self.top5 += int((order[:, :5] == labels[:, None]).any(axis=1).sum())
        self.n += len(labels)

    def result(self) -> dict[str, Any]:
        n = max(self.n, 1)
        if self.task == "classification":
            out: dict[str, Any] = {"samples": self.n, "top1": round(self.top1 / n, 6)}
            if self.classes > 5:
                out["top5"] = round(self.top5 / n, 6)
            return out
        e = max(self.elems, 1)
        return {"samples": self.n, "mse": round(self.sq / e, 8), "mae": round(self.ab / e, 8)}
