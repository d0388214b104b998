"""Technique ``quantize.auto``: accuracy-driven (partial) INT8 quantization.

Whole-model candidates first, fastest expected first, each scored against the parent's outputs
computed once; the first that meets the tolerance ends the search of its tier and of slower
ones. Only when none does: per-layer sensitivity, then a bisection for the fewest
most-sensitive layers kept in float. Several finalists race alone, then the chosen one is
timed interleaved with the parent (see ``search``). With ``prune_ratios``, structured pruning
with recovery training is tried first, largest ratio first (see ``_pruned_search``). Module top:
pydantic/stdlib-level imports only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from app.engine.base import Context, Result, Technique, register
from app.engine.params import BatchSize
from app.engine.prune.structured import FineTune
from app.engine.quantize.params import measure_default
from app.engine.quantize.static import StaticOptions

Mode = Literal["dynamic", "static"]
SPLIT_FILES = ("prune-train.npz", "prune-holdout.npz")  # beside the output while the job runs


class QuantizeAutoParams(StaticOptions):
    """Tolerance (min_cosine / min_cosine_per_sample / max_accuracy_drop_pt), the variants to
    try, then the grid."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"min_cosine": 0.99, "batch_sizes": [1, 32]},
        {"max_accuracy_drop_pt": 0.5, "modes": ["static"], "per_channel": [True]},
        {"min_cosine": 0.99, "min_cosine_per_sample": 0.98},
    ]})

    # The finalists' timing is also the report's benchmark (one measurement, not two), and on
    # small models it was most of the search: a digits CNN at batch 1 (0.04 ms a run) needs
    # 0.5 s of runs per model, so every point ran into max_runs (1000 per model, 3 models).
    # Its interval comes from the interleaved rounds, not from the run count: 200 runs are 40
    # rounds of 5 on a fast model. 6 rounds, the fewest with an interval: on MiniLM at batch
    # 32 a round (parent and candidate) is a quarter of a second, and 10 rounds were a third
    # of the search. Raise min_rounds for a tighter interval. The two ends of the usual range
    # of batch sizes: on MiniLM the batch-8 point was a fifth of the search.
    batch_sizes: list[BatchSize] = measure_default("batch_sizes", [1, 32])
    warmup: int = measure_default("warmup", 2)
    min_rounds: int = measure_default("min_rounds", 6)
    min_runs: int = measure_default("min_runs", 6)
    max_runs: int = measure_default("max_runs", 200)
    min_seconds: float = measure_default("min_seconds", 0.1)
    modes: list[Mode] | None = Field(
        default=None, min_length=1, max_length=2,
        description="Quantization modes to try. null: static and dynamic for models with "
        "convolutions (dynamic ConvInteger is slow on CPU), dynamic only otherwise. 'static' "
        "on a model whose only compute layers are MatMuls (a transformer) is quantize.static's "
        "'integer' recipe (MatMulIntegerToFloat, padding left out of the ranges, per-channel "
        "only, an onnxruntime contrib op; its embeddings stay float): on MiniLM it measured "
        "0.96x-1.08x the dynamic graph at batch 1, 1.04x-1.07x at 32, and 2.5x its size.",
        json_schema_extra={"examples": [None, ["dynamic", "static"]]},
    )
    per_channel: list[bool] = Field(
        default=[False, True], min_length=1, max_length=2,
        description="Per-channel weight scales to try, off and/or on (on is tried first).",
        json_schema_extra={"examples": [[False, True]]},
    )
    reduce_range: bool = Field(
        default=False, description="7-bit weights in every candidate (see quantize.dynamic).",
        json_schema_extra={"examples": [False]},
    )
    fuse_attention: bool = Field(
        default=False,
        description="Before quantizing, rewrite each multi-head attention block (the per-head "
        "Reshape/Transpose/MatMul/Softmax subgraph exporters write) as onnxruntime's "
        "com.microsoft.MultiHeadAttention, kept only when the fused graph's outputs match the "
        "parent's on sample inputs (within 1e-4); the result then runs on onnxruntime only. "
        "On all-MiniLM-L6-v2 (sdpa export, which onnxruntime's own transformer optimizer does "
        "not fuse) it removes ~190 of the ~330 operators a run executes, but those are cheap: "
        "1.06x the unfused int8 graph at batch 1 and 0.96x at 32 (onnxruntime's CPU attention "
        "kernel is slower there than the unfused operators), so it is off by default.",
        json_schema_extra={"examples": [False, True]},
    )
    prune_ratios: list[Annotated[float, Field(gt=0.0, le=0.9)]] = Field(
        default=[], max_length=4,
        description="Also try structured pruning first (prune.structured's torch route: "
        "channels/neurons removed, then recovery training, see prune_fine_tune), largest ratio "
        "first: the pruned model is quantized by the same search, scored and timed against the "
        "unpruned parent, and kept only if it meets the tolerance; else the next ratio, else "
        "plain quantization. The dataset is split: recovery trains on the first part, every "
        "tolerance check of a pruned candidate (and the report's accuracy, if one is chosen) "
        "uses the held-out rest (prune_holdout). For CNNs and MLPs with labels; on the "
        "digits CNN, 0.3 gave 3.8x (b1) / 5.4x (b32) over FP32 where quantization alone "
        "gave 2.5x / 3.1x.",
        json_schema_extra={"examples": [[], [0.5, 0.3]]},
    )
    prune_fine_tune: FineTune | None = Field(
        default=None,
        description="Recovery training of the pruning candidates; null: 20 epochs on the "
        "dataset's labels, lr chosen automatically (on the digits CNN's 208 training samples, "
        "10 epochs left a 30%-pruned model at 83% where 20 reached 97%).",
        json_schema_extra={"examples": [None, {"epochs": 20, "lr": "auto"}]},
    )
    prune_holdout: float = Field(
        default=0.3, ge=0.1, le=0.9,
        description="Share of the dataset (its last samples) held out from recovery training: "
        "the pruning candidates' tolerance is checked on it.",
        json_schema_extra={"examples": [0.3]},
    )
    sensitivity_samples: int = Field(
        default=32, ge=1, le=10_000,
        description="Samples (the first of the fidelity samples, in whole fidelity batches) "
        "used to score each layer, or group of layers, quantized alone. Sensitivity runs only "
        "when no whole-model candidate meets the tolerance.",
        json_schema_extra={"examples": [32]},
    )


@register
class QuantizeAuto(Technique):
    name = "quantize.auto"
    description = (
        "Accuracy-driven int8 quantization: tries whole-model dynamic/static and per-channel "
        "variants fastest-expected first and stops at the first that meets the tolerance "
        "(min_cosine, min_cosine_per_sample, max_accuracy_drop_pt); only if none does, ranks "
        "layers by sensitivity and bisects for the fewest kept in float. Several finalists race "
        "alone; the chosen one is timed interleaved with the parent; the report has every "
        "candidate, what was skipped and why, and the wall time of each phase."
    )
    Params = QuantizeAutoParams
    needs_dataset = True
    produces_model = True

    @classmethod
    def trains_on_dataset(cls, params: QuantizeAutoParams) -> bool:
        return bool(params.prune_ratios)  # recovery training of the pruning candidates

    def run(self, ctx: Context) -> Result:
        import shutil
        import tempfile
        from pathlib import Path

        from app.engine.quantize.search import search
        from app.engine.quantize.report import build_report
        from app.engine.errors import DatasetMismatch

        params = self.params_of(ctx)
        if ctx.dataset_path is None:
            raise DatasetMismatch("quantize.auto scores candidates on real inputs: add a "
                                  "dataset_id to the job")
        ctx.progress(0.0, "loading")
        scratch = Path(tempfile.mkdtemp(prefix="auto-", dir=ctx.workdir))
        pruning: dict[str, Any] | None = None
        try:
            found = None
            if params.prune_ratios:
                found, pruning = _pruned_search(ctx, params, scratch)
            if found is None:
                found = search(ctx, params, scratch)
            output = ctx.workdir / "model.onnx"
            shutil.copyfile(found["chosen_path"], output)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if pruning and pruning["chosen_ratio"] is not None:
            found["notes"].append(
                f"pruned {pruning['chosen_ratio']:.0%} of the prunable channels with recovery "
                f"training on the first {pruning['train_samples']} samples, then quantized; "
                f"accuracy and fidelity are measured on the {pruning['holdout_samples']} held-out "
                "samples, against the unpruned parent")
        chosen = found["chosen"]
        quantization = {"mode": chosen["mode"], "per_channel": chosen["per_channel"],
                        "reduce_range": params.reduce_range, "float_layers": chosen["excluded"],
                        "preprocess": found["preprocess"], "opset": found["opset"],
                        "excluded_nodes": found["base_exclude"] + chosen["excluded"]}
        if chosen["mode"] == "static" and found["integer_static"]:
            quantization.update(calibration="minmax", format="integer", activation_type="uint8",
                                mask_padding=True)
            found["notes"].append("static INT8 without convolutions uses the transformer recipe "
                                  "(quantize.static format 'integer'): MatMulIntegerToFloat, an "
                                  "onnxruntime contrib op, so the file needs onnxruntime to run")
        elif chosen["mode"] == "static":
            quantization.update(calibration=params.calibration, format="qdq",
                                activation_type=params.activation_type)
        report = build_report(
            ctx, params, technique=self.name, output=output, quantization=quantization,
            looked_for=found["op_types"], notes=found["notes"], feeds=found["feeds"],
            evaluation=found["evaluation"], grid=found["grid"],
            extra={"sensitivity": found["sensitivity"], "candidates": found["candidates"],
                   "search": found["search"], "pruning": pruning})
        for part in SPLIT_FILES:  # read until the report was built
            (ctx.workdir / part).unlink(missing_ok=True)
        return Result(report=report, output_path=output)


def _pruned_search(ctx: Context, params: QuantizeAutoParams, scratch: Any) -> tuple[Any, dict[str, Any]]:
    """Pruning candidates, largest ratio first: prune.structured with recovery training on
    the dataset's first part; the pruned model alone must meet the tolerance against the
    parent on the held-out part, then the quantization search runs on it, scored and timed
    against the parent on the held-out part. Returns (the first search that succeeds, or None,
    and what was tried)."""
    import dataclasses
    import time

    import numpy as np

    from app.engine.data.feeds import FeedSource
    from app.engine.errors import TechniqueError, ToleranceNotMet
    from app.engine.prune.structured import PruneStructured, PruneStructuredParams
    from app.engine.quantize.report import evaluate_result, tolerance_check
    from app.engine.quantize.search import search

    with np.load(str(ctx.dataset_path), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n = min((len(a) for a in arrays.values() if a.ndim), default=0)
    cut = int(round(n * (1 - params.prune_holdout)))
    info: dict[str, Any] = {"chosen_ratio": None, "train_samples": cut, "holdout_samples": n - cut,
                            "tried": []}
    if cut < 8 or n - cut < 8:
        info["reason"] = f"the dataset's {n} samples are too few to train on and hold out 8+ each"
        return None, info
    # beside the output, not in scratch: the report reads the held-out samples after the search
    train, held = (ctx.workdir / part for part in SPLIT_FILES)
    np.savez(train, **{k: v[:cut] if v.ndim else v for k, v in arrays.items()})
    np.savez(held, **{k: v[cut:] if v.ndim else v for k, v in arrays.items()})
    fine_tune = params.prune_fine_tune or FineTune(epochs=20, lr="auto")
    quick = {"batch_sizes": [1], "warmup": 1, "min_runs": 3, "min_rounds": 6, "min_seconds": 0.0,
             "max_seconds": 1.0, "threads": params.threads[:1]}
    for i, ratio in enumerate(sorted(set(params.prune_ratios), reverse=True)):
        started = time.monotonic()
        row: dict[str, Any] = {"ratio": ratio}
        info["tried"].append(row)
        folder = scratch / f"prune-{i}"
        folder.mkdir()
        ctx.progress(0.02, f"pruning {ratio:.0%} with recovery training")
        try:
            pruned = PruneStructured().run(dataclasses.replace(
                ctx, params=PruneStructuredParams(ratio=ratio, method="torch", fine_tune=fine_tune, **quick),
                workdir=folder, dataset_path=train, progress=lambda fraction, stage: None)).output_path
            assert pruned is not None
            held_ctx = dataclasses.replace(ctx, dataset_path=held)
            alone = tolerance_check(params, evaluate_result(held_ctx, params, pruned,
                                                            FeedSource(params, held)))
            row.update(pruned_alone={k: v for k, v in alone.items() if k != "text"})
            if not alone["within"]:
                row["result"] = f"pruned alone is outside the tolerance: {alone['text']}"
                continue
            (folder / "search").mkdir()
            found = search(dataclasses.replace(held_ctx, model_path=pruned), params,
                           folder / "search", reference=ctx.model_path)
        except ToleranceNotMet as exc:
            row["result"] = f"no quantized variant of the pruned model meets the tolerance: {exc}"
            continue
        except TechniqueError as exc:
            row["result"] = f"pruning failed: {exc}"
            continue
        finally:
            row["seconds"] = round(time.monotonic() - started, 2)
        row["result"] = "chosen"
        info["chosen_ratio"] = ratio
        return found, info
    return None, info