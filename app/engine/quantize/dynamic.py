"""Technique ``quantize.dynamic``: onnxruntime dynamic (weight int8, activations quantized at
run time) quantization, then an in-process parent vs result comparison: same inputs, same
timing function, interleaved per point, plus output fidelity.

Module top imports only pydantic/stdlib-level modules (the API imports this to list techniques);
onnxruntime and onnx are imported inside ``run()``.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import ConfigDict, Field

from app.engine.quantize.params import QuantParams
from app.engine.base import Context, Result, Technique, register

# The op types onnxruntime 1.32's dynamic quantizer handles (its IntegerOpsRegistry). Gemm is
# rewritten to MatMul + Add first, so "MatMul" covers Gemm too.
OpType = Literal["MatMul", "Conv", "Attention", "LSTM", "Gather", "Transpose",
                 "EmbedLayerNormalization"]


class QuantizeDynamicParams(QuantParams):
    """Dynamic quantization options, then the measurement grid used for parent vs result."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"weight_type": "int8", "per_channel": False, "batch_sizes": [1, 8, 32]},
        {"weight_type": "int8", "op_types": ["MatMul"], "threads": [1, 4]},
        {"per_channel": True, "exclude_op_types": ["Gather"], "min_cosine": 0.99},
    ]})

    per_channel: bool = Field(
        default=False,
        description="One scale per output channel instead of per tensor: usually better "
        "accuracy, slightly larger model.",
        json_schema_extra={"examples": [False]},
    )
    weight_type: Literal["int8", "uint8"] = Field(
        default="int8",
        description="Storage type of quantized weights. int8 is the usual choice on x86/ARM.",
        json_schema_extra={"examples": ["int8"]},
    )
    op_types: list[OpType] | None = Field(
        default=None, min_length=1, max_length=len(get_args(OpType)),
        description="Op types to quantize; null = onnxruntime's default (all of MatMul, Conv, "
        "Attention, LSTM, Gather, Transpose, EmbedLayerNormalization). 'MatMul' also covers "
        "Gemm. Use [\"MatMul\"] to leave convolutions in float.",
        json_schema_extra={"examples": [None, ["MatMul"]]},
    )
    reduce_range: bool = Field(
        default=False,
        description="Quantize weights to 7 bits. On x86 CPUs without VNNI (AVX2-only) this "
        "avoids int16 saturation in onnxruntime's int8 kernels, which can badly hurt accuracy "
        "for some weight distributions; elsewhere it costs a little accuracy. The report's "
        "notes say when fidelity suggests turning it on.",
        json_schema_extra={"examples": [False]},
    )


@register
class QuantizeDynamic(Technique):
    name = "quantize.dynamic"
    description = (
        "Dynamic int8 quantization with onnxruntime (weights int8, activations quantized at "
        "run time), then parent vs result latency, size and output fidelity."
    )
    Params = QuantizeDynamicParams
    needs_dataset = False
    produces_model = True

    def run(self, ctx: Context) -> Result:
        from app.engine.quantize import ort_tools as ort_quant
        from app.engine.quantize.exclusions import nothing_to_quantize, resolve_exclusions
        from app.engine.quantize.analysis import candidate_ops, op_counts
        from app.engine.quantize.report import build_report

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        looked_for = list(params.op_types or ort_quant.default_dynamic_op_types())
        what = "dynamic quantization"
        if not set(op_counts(ctx.model_path)) & candidate_ops(looked_for):
            raise nothing_to_quantize(ctx.model_path, looked_for, what, params.preprocess)

        ctx.progress(0.05, "quantizing")
        output = ctx.workdir / "model.onnx"
        with ort_quant.staged(ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                              min_opset=11, deadline_s=ctx.native_step_timeout_s) as stage:
            exclude = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes,
                                         params.exclude_op_types)
            ort_quant.dynamic(stage, output, op_types=params.op_types,
                              per_channel=params.per_channel, reduce_range=params.reduce_range,
                              weight_type=params.weight_type, exclude=exclude)
        quantized = op_counts(output)
        if not _added(op_counts(ctx.model_path), quantized):
            output.unlink(missing_ok=True)
            raise nothing_to_quantize(ctx.model_path, looked_for, what, params.preprocess)

        notes = []
        if stage.preprocess.startswith("skipped"):
            notes.append(f"pre-processing {stage.preprocess}; quantized the model as uploaded")
        quantization = {"weight_type": params.weight_type, "per_channel": params.per_channel,
                        "reduce_range": params.reduce_range, "op_types": looked_for,
                        "preprocess": stage.preprocess, "opset": stage.opset,
                        "excluded_nodes": exclude}
        report = build_report(ctx, params, technique=self.name, output=output,
                              quantization=quantization, looked_for=looked_for, notes=notes)
        return Result(report=report, output_path=output)


def _added(parent, result) -> bool:
    from app.engine.quantize.analysis import is_quant_op

    count = lambda ops: sum(n for op, n in ops.items() if is_quant_op(op))  # noqa: E731
    return count(result) > count(parent)
