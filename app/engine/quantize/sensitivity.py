"""Accuracy-driven partial quantization: score candidate models against the parent on fixed
samples, measure the error each quantized layer introduces on its own, and find the fewest
layers to keep in float for a tolerance.

The parent's outputs are computed once; each candidate costs one session and one pass.
numpy/onnxruntime are imported inside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.measure.accuracy import Scores, accuracy_drop, resolve_task
from app.engine.measure.fidelity import FidelityAccumulator, worst_mean_cosine
from app.engine.base import Device, ProgressFn


class Scorer:
    """Fidelity (and accuracy, with labels) of candidate models on the first ``samples``."""

    def __init__(self, parent: Path, feeds: Any, *, samples: int, batch_size: int,
                 threads: int, device: Device, task: str, tolerance: dict) -> None:
        import numpy as np

        from app.engine.data.datasets import load_labels
        from app.engine.runtime.inputs import input_specs
        from app.engine.runtime.sessions import create_session, run_session

        self.threads, self.device, self.what = threads, device, feeds.what
        session, _ = create_session(parent, threads, device)
        specs = input_specs(session)
        self.names = [o.name for o in session.get_outputs()]
        total = min(samples, feeds.samples(specs))
        labels = load_labels(feeds.dataset_path, feeds.samples(specs))
        self.task = resolve_task(task, labels)
        # A model with a fixed first dimension can only be fed batches of exactly that size.
        fixed = next((s["shape"][0] for s in specs if s["shape"]
                      and isinstance(s["shape"][0], int) and s["shape"][0] > 0), None)
        self.batches = []
        for start in range(0, total, fixed or batch_size):
            n = fixed or min(batch_size, total - start)
            feed = feeds(specs, n, start)
            out = run_session(session, feed, feeds.what, self.names)
            part = None if labels is None else labels[(start + np.arange(n)) % len(labels)]
            self.batches.append((feed, out, part))
        self.samples = total
        self.tolerance = tolerance if labels is not None else {**tolerance,
                                                               "max_accuracy_drop": None}
        self.parent_scores = self._scores([b[1] for b in self.batches]) if labels is not None \
            else None

    def _scores(self, outputs: list) -> dict | None:
        scores = Scores(self.task)
        for (_, _, labels), out in zip(self.batches, outputs, strict=True):
            scores.add(out[0], labels, self.names[0])
        return scores.result()

    def score(self, path: Path) -> dict[str, Any]:
        """mean_cosine (worst output), accuracy_drop (with labels), error, meets_tolerance."""
        from app.engine.runtime.sessions import create_session, run_session

        session, _ = create_session(path, self.threads, self.device)
        acc = FidelityAccumulator(self.names)
        outputs = []
        for feed, parent_out, _ in self.batches:
            got = run_session(session, feed, self.what, self.names)
            acc.add(parent_out, got, len(next(iter(feed.values()))))
            outputs.append(got)
        cosine = worst_mean_cosine(acc.result())
        out: dict[str, Any] = {"mean_cosine": None if cosine is None else round(cosine, 6)}
        if self.parent_scores is not None:
            out["accuracy_drop"] = accuracy_drop(self.parent_scores, self._scores(outputs),
                                                 self.task)
        out["error"] = round(1.0 - (cosine if cosine is not None else 0.0), 8)
        out["meets_tolerance"] = self.meets(out)
        return out

    def meets(self, figures: dict) -> bool:
        tol = self.tolerance
        if tol["min_cosine"] is not None and (figures["mean_cosine"] is None
                                              or figures["mean_cosine"] < tol["min_cosine"]):
            return False
        drop = figures.get("accuracy_drop")
        return tol["max_accuracy_drop"] is None or (drop is not None
                                                    and drop <= tol["max_accuracy_drop"])


def layer_sensitivity(layers: list[dict], quantize_only: Callable[[Path, str], None],
                      scratch: Path, scorer: Scorer, progress: ProgressFn,
                      span: tuple[float, float]) -> list[dict[str, Any]]:
    """Quantize each layer alone and score it: the error that layer introduces. Sorted with
    the most damaging first."""
    table = []
    for i, layer in enumerate(layers):
        progress(span[0] + (span[1] - span[0]) * i / max(len(layers), 1), "sensitivity")
        path = scratch / "single.onnx"
        quantize_only(path, layer["name"])
        figures = scorer.score(path)
        path.unlink(missing_ok=True)
        row = {"layer": layer["name"], "op_type": layer["op_type"], "error": figures["error"],
               "mean_cosine": figures["mean_cosine"]}
        if "accuracy_drop" in figures:
            row["accuracy_drop"] = figures["accuracy_drop"]
        table.append(row)
    key = (lambda r: (r.get("accuracy_drop", 0.0), r["error"]))
    return sorted(table, key=key, reverse=True)


def fewest_float_layers(ranking: list[str], build: Callable[[int], Path], scorer: Scorer,
                        ) -> tuple[int | None, list[dict[str, Any]]]:
    """Smallest k such that keeping ranking[:k] in float meets the tolerance (exponential then
    binary search; error shrinks as layers return to float). None if only k = len(ranking),
    i.e. no quantization at all, would. Returns (k, every evaluated step)."""
    tried: list[dict[str, Any]] = []

    def ok(k: int) -> bool:
        figures = scorer.score(build(k))
        tried.append({"float_layers": k, **figures})
        return figures["meets_tolerance"]

    if ok(0):
        return 0, tried
    lo, hi = 0, 1
    while hi < len(ranking) and not ok(hi):
        lo, hi = hi, min(hi * 2, len(ranking))
    if hi >= len(ranking) and not any(t["float_layers"] == hi and t["meets_tolerance"]
                                      for t in tried):
        return None, tried
    while hi - lo > 1:  # invariant: lo fails, hi meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return (hi if hi < len(ranking) else None), tried
