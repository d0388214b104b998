"""Accuracy-driven partial quantization: score candidate models against the parent on fixed
samples, rank layers (or groups of layers) by the error each introduces on its own, and find
the fewest layers to keep in float for a tolerance.

The parent's outputs on the evaluation samples are computed ONCE; each candidate then costs
one session and one pass over the first ``samples`` of them. numpy/onnxruntime inside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.base import Device, ProgressFn
from app.engine.errors import DatasetMismatch
from app.engine.data.datasets import load_labels
from app.engine.measure.accuracy import Scores, accuracy_drop, resolve_task
from app.engine.measure.fidelity import FidelityAccumulator
from app.engine.quantize.report import judge
from app.engine.runtime.inputs import input_specs
from app.engine.runtime.sessions import create_session, run_session

# More layers than this are scored in groups of consecutive layers: each score is one run of
# onnxruntime's quantizer (~2 s on MiniLM, most of it loading, shape inference and saving the
# model), so 39 layers alone cost 39 runs where 13 groups of 3 cost 13.
MAX_SCORED = 16


class Scorer:
    """Fidelity (and accuracy, with labels) of candidates against the parent on the first
    ``samples`` dataset samples, judged by the quantization report's own tolerance rule."""

    def __init__(self, parent: Path, feeds: Any, *, samples: int, batch_size: int,
                 threads: int, device: Device, task: str, tolerance: dict,
                 session: Any = None) -> None:
        """``session``: the parent's, already open with these threads and device."""
        self.threads, self.device, self.what = threads, device, feeds.what
        session = session or create_session(parent, threads, device)[0]
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
            self.batches.append((feed, out, part, n))
        self.samples = total
        self.label_error: str | None = None
        self.full: dict[Path, dict] = {}  # evaluations on every sample, by model path
        self.labelled = labels is not None
        self._parent_scores: dict[int, dict] = {}
        if self.labelled:
            try:
                self._parent_scores[len(self.batches)] = self._scores(
                    [b[1] for b in self.batches], len(self.batches))
            except DatasetMismatch as exc:  # reported as an accuracy error, as the report does
                self.labelled, self.label_error = False, exc.detail
        self.tolerance = {**tolerance, "max_accuracy_drop_pt": None} if not self.labelled \
            else tolerance

    def _scores(self, outputs: list, count: int) -> dict:
        scores = Scores(self.task)
        for (_, _, labels, _), out in zip(self.batches[:count], outputs, strict=True):
            scores.add(out[0], labels, self.names[0])
        return scores.result()

    def _count(self, samples: int | None) -> int:
        """How many cached batches cover the first ``samples`` (at least one)."""
        if samples is None:
            return len(self.batches)
        covered, count = 0, 0
        for *_, n in self.batches:
            if count and covered + n > samples:
                break
            covered, count = covered + n, count + 1
        return count

    def covered(self, samples: int | None) -> int:
        """The samples actually scored when ``samples`` are asked for (whole batches)."""
        return sum(b[3] for b in self.batches[:self._count(samples)])

    def evaluate(self, path: Path, samples: int | None = None) -> dict[str, Any]:
        """``path`` against the parent on the cached samples, in compare_models' shape."""
        count = self._count(samples)
        session, _ = create_session(path, self.threads, self.device)
        acc = FidelityAccumulator(self.names)
        outputs = []
        for feed, parent_out, _, n in self.batches[:count]:
            got = run_session(session, feed, self.what, self.names)
            acc.add(parent_out, got, n)
            outputs.append(got)
        accuracy: dict[str, Any] | None = None
        if self.label_error:
            accuracy = {"error": f"labels not used: {self.label_error}"}
        elif self.labelled:
            if count not in self._parent_scores:
                self._parent_scores[count] = self._scores([b[1] for b in self.batches[:count]],
                                                          count)
            reference, model = self._parent_scores[count], self._scores(outputs, count)
            accuracy = {"task": self.task, "output": self.names[0], "model": model,
                        "reference": reference,
                        "drop": accuracy_drop(reference, model, self.task)}
        return {"source": self.what, "samples": self.covered(samples),
                "fidelity": {"outputs": acc.result()}, "accuracy": accuracy}

    def figures(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """A candidates-table row's figures, judged by the report's tolerance rule."""
        verdict = judge(self.tolerance, evaluation)
        cosine = verdict["mean_cosine"]
        out: dict[str, Any] = {
            "samples": evaluation["samples"],
            "mean_cosine": None if cosine is None else round(cosine, 6),
            "cosine_min": verdict["worst_cosine"]}
        if self.labelled:
            out["accuracy_drop"] = verdict["accuracy_drop"]
        out["error"] = round(1.0 - (cosine if cosine is not None else 0.0), 8)
        out["meets_tolerance"] = verdict["within"]
        return out

    def score(self, path: Path, samples: int | None = None) -> dict[str, Any]:
        evaluation = self.evaluate(path, samples)
        if samples is None:  # on every sample: what the report shows if this one is chosen
            self.full[path] = evaluation
        return self.figures(evaluation)


def groups_of(layers: list[dict], limit: int = MAX_SCORED) -> list[list[dict]]:
    """Consecutive layers (graph order) in at most ``limit`` groups of equal size."""
    size = -(-len(layers) // limit)
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def layer_sensitivity(layers: list[dict], quantize_only: Callable[[Path, list[str]], None],
                      scratch: Path, scorer: Scorer, samples: int, progress: ProgressFn,
                      span: tuple[float, float]) -> tuple[list[dict[str, Any]], int]:
    """Quantize each layer (or group of consecutive layers, past MAX_SCORED layers) alone and
    score it on the first ``samples``: the error it introduces. Returns the layer rows with
    the most damaging first (a group's layers share its score, in graph order), and the group
    size."""
    groups = groups_of(layers)
    table = []
    for i, group in enumerate(groups):
        progress(span[0] + (span[1] - span[0]) * i / len(groups), "sensitivity")
        path = scratch / "single.onnx"
        quantize_only(path, [layer["name"] for layer in group])
        figures = scorer.score(path, samples)
        path.unlink(missing_ok=True)
        for layer in group:
            row = {"layer": layer["name"], "op_type": layer["op_type"],
                   "error": figures["error"], "mean_cosine": figures["mean_cosine"]}
            if len(groups) < len(layers):
                row["group"] = i
            if "accuracy_drop" in figures:
                row["accuracy_drop"] = figures["accuracy_drop"]
            table.append(row)
    key = (lambda r: (r.get("accuracy_drop") or 0.0, r["error"]))
    return sorted(table, key=key, reverse=True), len(groups[0])


def fewest_float_layers(ranking: list[str], build: Callable[[int], Path], scorer: Scorer,
                        ) -> tuple[int | None, list[dict[str, Any]]]:
    """Smallest k such that keeping ranking[:k] in float meets the tolerance, knowing k = 0 (the
    whole model quantized) does not: galloping (1, 2, 4...) then bisection, as the error
    shrinks with each layer returned to float. None if only k = len(ranking), no quantization
    at all, would. Returns (k, every evaluated step)."""
    tried: list[dict[str, Any]] = []

    def ok(k: int) -> bool:
        figures = scorer.score(build(k))
        tried.append({"float_layers": k, **figures})
        return figures["meets_tolerance"]

    lo, hi = 0, 1
    while hi < len(ranking) and not ok(hi):
        lo, hi = hi, min(hi * 2, len(ranking))
    if hi >= len(ranking):
        return None, tried
    while hi - lo > 1:  # invariant: lo fails, hi meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi, tried
