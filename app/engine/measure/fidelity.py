"""Output comparison between a parent model and a derived one, accumulated over batches.

Each output is split into samples along axis 0 (when axis 0 is the batch) and each sample is
flattened, so "cosine" is per-sample similarity, not one number over the whole dataset that a
few large samples could dominate. numpy is imported inside methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GENERATED_FIDELITY_SAMPLES = 64  # random inputs say little more with more samples
# Nearest-neighbour agreement keeps the rows of 2-D outputs: an N x N similarity matrix.
NN_MAX_SAMPLES = 2048


class FidelityAccumulator:
    """Feed it (parent outputs, result outputs) batch by batch, then read ``result()``."""

    def __init__(self, output_names: Sequence[str]) -> None:
        self.names = list(output_names)
        self.state: dict[str, dict[str, Any]] = {
            n: {"cos": [], "max_abs": 0.0, "sum_abs": 0.0, "elems": 0, "top1": 0,
                "top1_n": 0, "exact": 0, "samples": 0, "non_finite": 0, "error": None,
                "is_float": True, "rows_p": [], "rows_r": [], "kept": 0}
            for n in self.names
        }

    def add(self, parent: Sequence[Any], result: Sequence[Any], batch: int) -> None:
        for name, p, r in zip(self.names, parent, result, strict=True):
            st = self.state[name]
            p, r = np.asarray(p), np.asarray(r)
            if p.shape != r.shape:
                st["error"] = f"shape differs: parent {list(p.shape)} vs result {list(r.shape)}"
                continue
            per_sample = p.ndim >= 1 and p.shape[0] == batch
            rows = batch if per_sample else 1
            p2, r2 = p.reshape(rows, -1), r.reshape(rows, -1)
            st["samples"] += rows
            if p.dtype.kind != "f":  # ints, bools (argmax, ids...): exact match only
                st["is_float"] = False
                st["exact"] += int((p2 == r2).all(axis=1).sum())
                continue
            p2, r2 = p2.astype(np.float64), r2.astype(np.float64)
            finite = np.isfinite(p2).all(axis=1) & np.isfinite(r2).all(axis=1)
            st["non_finite"] += int((~finite).sum())
            p2, r2 = p2[finite], r2[finite]
            if not len(p2):
                continue
            diff = np.abs(p2 - r2)
            st["max_abs"] = max(st["max_abs"], float(diff.max(initial=0.0)))
            st["sum_abs"] += float(diff.sum())
            st["elems"] += int(diff.size)
            st["cos"].extend(_cosine_rows(p2, r2))
            if per_sample and p.ndim == 2 and p.shape[1] > 1:
                # Classification-like output: does the decision (arg max) survive?
                st["top1"] += int((p2.argmax(axis=1) == r2.argmax(axis=1)).sum())
                st["top1_n"] += len(p2)
            if per_sample and p.ndim == 2 and p.shape[1] > 1 and st["kept"] < NN_MAX_SAMPLES:
                take = NN_MAX_SAMPLES - st["kept"]
                st["rows_p"].append(p2[:take].astype(np.float32))
                st["rows_r"].append(r2[:take].astype(np.float32))
                st["kept"] += len(p2[:take])

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, st in self.state.items():
            item: dict[str, Any] = {"samples": st["samples"]}
            if st["error"]:
                item["error"] = st["error"]
            elif not st["is_float"]:
                item["exact_match"] = round(st["exact"] / max(st["samples"], 1), 6)
            else:
                cos = st["cos"]
                item.update({
                    "cosine_mean": round(sum(cos) / len(cos), 6) if cos else None,
                    "cosine_min": round(min(cos), 6) if cos else None,
                    "max_abs_error": round(st["max_abs"], 6),
                    "mean_abs_error": round(st["sum_abs"] / max(st["elems"], 1), 8),
                })
                if st["top1_n"]:
                    item["top1_agreement"] = round(st["top1"] / st["top1_n"], 6)
                if st["kept"] >= 3:
                    item["nearest_neighbour_agreement"] = _nn_agreement(st["rows_p"],
                                                                        st["rows_r"])
                    item["nearest_neighbour_samples"] = st["kept"]
                if st["non_finite"]:
                    item["non_finite_samples"] = st["non_finite"]
            out[name] = item
        return out


def worst_cosine(outputs: dict[str, Any]) -> float | None:
    """Lowest per-sample cosine over all float outputs, for a one-line summary."""
    values = [o["cosine_min"] for o in outputs.values() if o.get("cosine_min") is not None]
    return min(values) if values else None


def worst_mean_cosine(outputs: dict[str, Any]) -> float | None:
    """Lowest mean per-sample cosine over all float outputs: what ``min_cosine`` checks."""
    values = [o["cosine_mean"] for o in outputs.values() if o.get("cosine_mean") is not None]
    return min(values) if values else None


def _nn_agreement(rows_p: list[Any], rows_r: list[Any]) -> float:
    """Share of samples whose nearest other sample (cosine) is the same under both models:
    for embeddings, whether retrieval within the dataset still returns the same neighbour."""
    def nearest(rows: list[Any]) -> Any:
        x = np.concatenate(rows).astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return round(float((nearest(rows_p) == nearest(rows_r)).mean()), 6)


def _cosine_rows(a: Any, b: Any) -> list[float]:
    dot = (a * b).sum(axis=1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, np.finfo(np.float64).tiny))
    return [float(min(1.0, max(-1.0, c))) for c in cos]
