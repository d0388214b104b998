"""Technique ``quantize.static``: onnxruntime static INT8 (weights and activations), with
activation ranges calibrated on the job's dataset, then the shared parent vs result report.

Module top imports only pydantic/stdlib-level modules; onnxruntime inside ``run()``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from app.engine.params import Name
from app.engine.quantize.params import QuantParams
from app.engine.base import Context, Result, Technique, register


class StaticOptions(QuantParams):
    """Static quantization options (shared with quantize.auto's static candidates)."""

    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax",
        description="How activation ranges are chosen from the calibration samples: minmax "
        "(full observed range), entropy (KL-divergence optimal clipping), percentile "
        "(clip at the 99.999th percentile). entropy/percentile resist outliers but calibrate "
        "more slowly.",
        json_schema_extra={"examples": ["minmax"]},
    )
    samples: int = Field(
        default=128, ge=1, le=100_000,
        description="Dataset samples used for calibration (the first N).",
        json_schema_extra={"examples": [128]},
    )
    activation_type: Literal["uint8", "int8"] = Field(
        default="uint8",
        description="Activation type. uint8 is the fast path on x86 CPUs: onnxruntime fuses "
        "uint8 Q/DQ pairs into QLinearConv/QLinearMatMul, while int8 activations stay unfused "
        "on x86 and were measured slower than float32 here.",
        json_schema_extra={"examples": ["uint8"]},
    )


class QuantizeStaticParams(StaticOptions):
    """Static INT8 quantization, then parent vs result latency, size, accuracy/fidelity."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"calibration": "minmax", "per_channel": True, "batch_sizes": [1, 32]},
        {"calibration": "entropy", "format": "qoperator", "exclude_op_types": ["Add"]},
    ]})

    per_channel: bool = Field(
        default=True,
        description="One weight scale per output channel: usually needed for convolutions.",
        json_schema_extra={"examples": [True]},
    )
    format: Literal["qdq", "qoperator", "integer"] = Field(
        default="qdq",
        description="qdq: QuantizeLinear/DequantizeLinear around float ops, fused by "
        "onnxruntime at load time (portable, recommended). qoperator: QLinearConv/"
        "QLinearMatMul written into the file. integer: the transformer recipe written as the "
        "kernels onnxruntime runs (MatMulIntegerToFloat, an onnxruntime contrib op, with the "
        "bias Add folded in; one QuantizeLinear per activation; no shape annotations, which "
        "made onnxruntime pick a slower fused LayerNorm): only MatMuls with constant weights, "
        "per-channel int8 weights, uint8 activations, minmax; fastest on MiniLM-like encoders.",
        json_schema_extra={"examples": ["qdq"]},
    )
    reduce_range: bool = Field(
        default=False,
        description="7-bit weights: avoids int16 saturation in int8 kernels of x86 CPUs "
        "without VNNI at a small accuracy cost.",
        json_schema_extra={"examples": [False]},
    )
    op_types: list[Name] | None = Field(
        default=None, min_length=1, max_length=64,
        description="Op types to quantize; null = everything onnxruntime's static quantizer "
        "supports (Conv, MatMul, Gemm, Add, Mul, pooling, Gather...), or only MatMul with "
        "smooth_alpha / mask_padding.",
        json_schema_extra={"examples": [None, ["Conv", "MatMul", "Gemm"]]},
    )
    smooth_alpha: float | None = Field(
        default=None, ge=0.05, le=0.95,
        description="SmoothQuant: before quantizing, divide each MatMul input channel by "
        "s = max|x|^alpha / max|w|^(1-alpha) and multiply the weight rows by s (the float "
        "model is unchanged), so activation outlier channels (transformers' LayerNorm outputs) "
        "stop crushing the other channels' int8 levels. Higher alpha moves more of the range "
        "into the weights; 0.75 suited all-MiniLM-L6-v2. Implies the transformer recipe: only "
        "MatMuls with constant weights are quantized (their outputs stay float, so onnxruntime "
        "runs MatMulIntegerToFloat), minmax calibration, uint8 activations. null = off.",
        json_schema_extra={"examples": [None, 0.75]},
    )
    mask_padding: bool = Field(
        default=False,
        description="Calibrate activation ranges on real tokens only: rows of [batch, "
        "sequence, ...] activations at positions where the model's attention-mask input is 0 "
        "(padding) are left out. Implies the same transformer recipe as smooth_alpha.",
        json_schema_extra={"examples": [True]},
    )

    @model_validator(mode="after")
    def _transformer_recipe(self) -> QuantizeStaticParams:
        what = "format 'integer'" if self.format == "integer" else "smooth_alpha and mask_padding"
        if self.smooth_alpha is not None or self.mask_padding or self.format == "integer":
            if self.calibration != "minmax":
                raise ValueError(f"{what} calibrate with minmax: set calibration to 'minmax'")
            if self.activation_type != "uint8":
                raise ValueError(f"{what} quantize activations to uint8: set activation_type "
                                 "to 'uint8'")
        if self.format == "integer":
            if self.op_types not in (None, ["MatMul"]):
                raise ValueError("format 'integer' quantizes MatMuls only: leave op_types null")
            if self.reduce_range or not self.per_channel:
                raise ValueError("format 'integer' writes per-channel 8-bit weights: set "
                                 "per_channel true and reduce_range false")
        return self


@register
class QuantizeStatic(Technique):
    name = "quantize.static"
    description = (
        "Static int8 quantization with onnxruntime: activation ranges calibrated on the job's "
        "dataset (minmax, entropy or percentile), QDQ or QOperator format; then parent vs "
        "result latency, size, accuracy (with labels) and fidelity, with a verdict."
    )
    Params = QuantizeStaticParams
    needs_dataset = True
    produces_model = True

    def run(self, ctx: Context) -> Result:
        from app.engine.data.feeds import FeedSource
        from app.engine.runtime.inputs import input_specs
        from app.engine.quantize.ort_tools import staged
        from app.engine.quantize.calibration import (STATIC_MIN_OPSET, calibration_reader,
                                           default_static_op_types, smooth_static, static)
        from app.engine.quantize.exclusions import nothing_to_quantize, resolve_exclusions
        from app.engine.quantize.analysis import candidate_ops, op_counts
        from app.engine.quantize.report import build_report
        from app.engine.runtime.sessions import create_session

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        looked_for = list(params.op_types or default_static_op_types())
        what = "static quantization"
        compute = {"Conv", "MatMul", "Gemm", "Gather", "ConvTranspose", "Attention"}
        if not set(op_counts(ctx.model_path)) & candidate_ops(looked_for) & compute:
            raise nothing_to_quantize(ctx.model_path, sorted(compute & set(looked_for)), what,
                                      params.preprocess)
        feeds = FeedSource(params, ctx.dataset_path)
        specs = input_specs(create_session(ctx.model_path, 1, "cpu")[0])
        output = ctx.workdir / "model.onnx"
        ctx.progress(0.05, "calibrating")
        with staged(ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                    min_opset=STATIC_MIN_OPSET,
                    deadline_s=ctx.native_step_timeout_s) as stage:
            exclude = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes,
                                         params.exclude_op_types)
            reader = calibration_reader(feeds, specs, params.samples)
            smoothing = None
            if params.smooth_alpha is not None or params.mask_padding or params.format == "integer":
                looked_for = list(params.op_types or ["MatMul"])
                smoothing = smooth_static(stage, output, reader=reader, alpha=params.smooth_alpha,
                                          mask_padding=params.mask_padding,
                                          per_channel=params.per_channel, fmt=params.format,
                                          op_types=looked_for, exclude=exclude)
                mask_nodes = smoothing["float_nodes"]
            else:
                mask_nodes = static(stage, output, reader=reader,
                       calibration=params.calibration, per_channel=params.per_channel,
                       fmt=params.format, activation_type=params.activation_type,
                       weight_type="int8", reduce_range=params.reduce_range,
                       op_types=params.op_types, exclude=exclude)
        if not (set(op_counts(output)) & {"QuantizeLinear", "QLinearConv", "QLinearMatMul"}):
            output.unlink(missing_ok=True)
            raise nothing_to_quantize(ctx.model_path, looked_for, what, params.preprocess)
        quantization: dict[str, Any] = {
            "mode": "static", "format": params.format, "calibration": params.calibration,
            "calibration_samples": min(params.samples, feeds.samples(specs) or 0),
            "per_channel": params.per_channel, "reduce_range": params.reduce_range,
            "activation_type": params.activation_type, "weight_type": "int8",
            "op_types": looked_for, "preprocess": stage.preprocess, "opset": stage.opset,
            "excluded_nodes": exclude, "mask_nodes": mask_nodes,
        }
        if smoothing is not None:
            quantization.update(smooth_alpha=params.smooth_alpha, mask_padding=params.mask_padding,
                                smoothed_tensors=len(smoothing["smoothed"]),
                                mask_input=smoothing["mask_input"])
        notes = []
        if params.mask_padding and smoothing is not None and smoothing["mask_input"] is None:
            notes.append("mask_padding: the model has no [batch, sequence] input named like an "
                         "attention mask; every position was calibrated")
        if params.format == "integer":
            notes.append("format 'integer': MatMulIntegerToFloat is an onnxruntime contrib "
                         "operator (com.microsoft); other runtimes cannot load this file")
        if mask_nodes:
            notes.append(f"{len(mask_nodes)} nodes around attention masks (values of -inf or "
                         "float32's lowest) stay float: quantizing them would clip the mask")
        if params.activation_type == "int8":
            notes.append("int8 activations: onnxruntime's x86 CPU kernels do not fuse int8 "
                         "Q/DQ pairs; expect it slower than activation_type=uint8")
        if stage.preprocess.startswith("skipped"):
            notes.append(f"pre-processing {stage.preprocess}; quantized the model as uploaded")
        report = build_report(ctx, params, technique=self.name, output=output,
                              quantization=quantization, looked_for=looked_for, notes=notes,
                              feeds=feeds)
        return Result(report=report, output_path=output)
