"""Technique ``quantize.int4``: weight-only 4-bit block quantization of MatMul/Gemm weights
(and embedding tables) with onnxruntime's MatMulNBits quantizer, then the shared report.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.quantize.params import QuantParams
from app.engine.base import Context, Result, Technique, register


class QuantizeInt4Params(QuantParams):
    """4-bit weight-only options, then the measurement grid."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"block_size": 32, "symmetric": True, "batch_sizes": [1, 32]},
        {"block_size": 128, "include_gather": False},
    ]})

    block_size: Literal[16, 32, 64, 128, 256] = Field(
        default=32,
        description="Weights per block sharing one scale (along the input axis). Smaller "
        "blocks: better accuracy, slightly larger file.",
        json_schema_extra={"examples": [32]},
    )
    symmetric: bool = Field(
        default=True,
        description="Symmetric blocks (no zero point). false stores a zero point per block: "
        "better for skewed weights, a little larger.",
        json_schema_extra={"examples": [True]},
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4,
        description="MatMulNBits compute type: 4 = int8 activations (fastest on CPU), 1 = "
        "float32, 0 = the kernel's default.",
        json_schema_extra={"examples": [4]},
    )
    include_gather: bool = Field(
        default=True,
        description="Also store embedding tables (Gather with a constant table) in 4 bits. "
        "Needs opset 21; the model is upgraded, or Gather is left alone with a note if the "
        "upgrade fails.",
        json_schema_extra={"examples": [True]},
    )


@register
class QuantizeInt4(Technique):
    name = "quantize.int4"
    description = (
        "Weight-only 4-bit quantization of MatMul/Gemm weights (and embedding tables) with "
        "onnxruntime's MatMulNBits; then parent vs result latency, size and fidelity."
    )
    Params = QuantizeInt4Params
    needs_dataset = False
    produces_model = True

    def run(self, ctx: Context) -> Result:
        from app.engine.quantize.lowbit import INT4_GATHER_OPSET, quantize_int4
        from app.engine.quantize.ort_tools import staged
        from app.engine.quantize.exclusions import nothing_to_quantize, resolve_exclusions
        from app.engine.quantize.analysis import op_counts
        from app.engine.quantize.report import build_report
        from app.engine.errors import UnsupportedModel

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        looked_for = ["MatMul", "Gather"] if params.include_gather else ["MatMul"]
        output, notes = ctx.workdir / "model.onnx", []
        ctx.progress(0.05, "quantizing")
        gather = params.include_gather and "Gather" in op_counts(ctx.model_path)
        with contextlib.ExitStack() as stack:
            try:
                stage = stack.enter_context(staged(
                    ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                    min_opset=INT4_GATHER_OPSET if gather else 1,
                    deadline_s=ctx.native_step_timeout_s))
            except UnsupportedModel as exc:  # the opset upgrade failed: MatMul only
                notes.append(f"embedding tables left in float: {exc.detail}")
                gather = False
                stage = stack.enter_context(staged(
                    ctx.model_path, ctx.workdir, preprocess=params.preprocess, min_opset=1,
                    deadline_s=ctx.native_step_timeout_s))
            exclude = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes,
                                         params.exclude_op_types)
            quantize_int4(stage, output, block_size=params.block_size,
                          symmetric=params.symmetric,
                          accuracy_level=params.accuracy_level or None,
                          include_gather=gather, exclude=exclude)
        if not set(op_counts(output)) & {"MatMulNBits", "GatherBlockQuantized"}:
            output.unlink(missing_ok=True)
            raise nothing_to_quantize(ctx.model_path, looked_for, "4-bit quantization",
                                      params.preprocess)
        quantization = {"mode": "int4 weight-only", "block_size": params.block_size,
                        "symmetric": params.symmetric, "accuracy_level": params.accuracy_level,
                        "gather_quantized": gather, "preprocess": stage.preprocess,
                        "opset": stage.opset, "excluded_nodes": exclude}
        report = build_report(ctx, params, technique=self.name, output=output,
                              quantization=quantization, looked_for=looked_for, notes=notes,
                              mode="int4")
        return Result(report=report, output_path=output)
