"""Technique ``quantize.auto``: accuracy-driven partial INT8 quantization.

Per-layer sensitivity (each layer quantized alone, scored against the parent), then for each
variant (dynamic/static x per-channel off/on) the fewest most-sensitive layers kept in float
for the tolerance; the variants that meet it are timed against the parent in one grid and the
fastest one is the result. Module top: pydantic/stdlib-level imports only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.base import Context, Result, Technique, register
from app.engine.quantize.static import StaticOptions

Mode = Literal["dynamic", "static"]


class QuantizeAutoParams(StaticOptions):
    """Tolerance (min_cosine / max_accuracy_drop), the variants to try, then the grid."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"min_cosine": 0.99, "batch_sizes": [1, 32]},
        {"max_accuracy_drop": 0.5, "modes": ["static"], "per_channel": [True]},
    ]})

    modes: list[Mode] | None = Field(
        default=None, min_length=1, max_length=2,
        description="Quantization modes to try. null: static and dynamic for models with "
        "convolutions (dynamic ConvInteger is slow on CPU), dynamic only otherwise.",
        json_schema_extra={"examples": [None, ["dynamic", "static"]]},
    )
    per_channel: list[bool] = Field(
        default=[False, True], min_length=1, max_length=2,
        description="Per-channel weight scales to try, off and/or on.",
        json_schema_extra={"examples": [[False, True]]},
    )
    reduce_range: bool = Field(
        default=False, description="7-bit weights in every candidate (see quantize.dynamic).",
        json_schema_extra={"examples": [False]},
    )
    sensitivity_samples: int = Field(
        default=64, ge=1, le=10_000,
        description="Dataset samples used to score each layer quantized alone.",
        json_schema_extra={"examples": [64]},
    )


@register
class QuantizeAuto(Technique):
    name = "quantize.auto"
    description = (
        "Accuracy-driven partial int8 quantization: measures each layer's sensitivity, keeps "
        "the most sensitive layers in float until the tolerance (min_cosine or "
        "max_accuracy_drop) holds, tries dynamic/static and per-channel variants and returns "
        "the fastest one that meets it, with the sensitivity table and every candidate."
    )
    Params = QuantizeAutoParams
    needs_dataset = True
    produces_model = True

    def run(self, ctx: Context) -> Result:
        import shutil
        import tempfile
        from pathlib import Path

        from app.engine.quantize.search import search
        from app.engine.quantize.report import build_report, evaluate_result
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
        evaluation = evaluate_result(ctx, params, output, found["feeds"], span=(0.95, 0.97))
        quantization = {"mode": chosen["mode"], "per_channel": chosen["per_channel"],
                        "reduce_range": params.reduce_range, "float_layers": chosen["excluded"],
                        "preprocess": found["preprocess"], "opset": found["opset"],
                        "excluded_nodes": found["base_exclude"] + chosen["excluded"]}
        if chosen["mode"] == "static":
            quantization.update(calibration=params.calibration, format="qdq",
                                activation_type=params.activation_type)
        report = build_report(
            ctx, params, technique=self.name, output=output, quantization=quantization,
            looked_for=found["op_types"], notes=found["notes"], feeds=found["feeds"],
            evaluation=evaluation, grid=found["grid"],
            extra={"sensitivity": found["sensitivity"], "candidates": found["candidates"]})
        return Result(report=report, output_path=output)
