"""Technique ``quantize.auto``: accuracy-driven (partial) INT8 quantization.

Whole-model candidates first, fastest expected first, each scored against the parent's outputs
computed once; the first that meets the tolerance ends the search of its tier and of slower
ones. Only when none does: per-layer sensitivity, then a bisection for the fewest
most-sensitive layers kept in float. Several finalists race alone, then the chosen one is
timed interleaved with the parent (see ``search``). Module top: pydantic/stdlib-level imports only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.base import Context, Result, Technique, register
from app.engine.params import BatchSize
from app.engine.quantize.params import measure_default
from app.engine.quantize.static import StaticOptions

Mode = Literal["dynamic", "static"]


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
        try:
            found = search(ctx, params, scratch)
            output = ctx.workdir / "model.onnx"
            shutil.copyfile(found["chosen_path"], output)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
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
                   "search": found["search"]})
        return Result(report=report, output_path=output)
