"""Technique ``quantize.dynamic``: onnxruntime dynamic (weight int8, activations quantized at
run time) quantization, then an in-process parent vs result comparison: same inputs, same
timing function, interleaved per point, plus output fidelity.

Module top imports only pydantic/stdlib-level modules (the API imports this to list techniques);
onnxruntime and onnx are imported inside ``run()``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.fields import FieldInfo

from app.engine.feeds import FeedSource
from app.engine.measure import measure_grid
from app.engine.params import MeasureParams
from app.engine.registry import Context, Result, Technique, UnsupportedModel, register

SCHEMA_VERSION = 1
# The op types onnxruntime 1.32's dynamic quantizer handles (its IntegerOpsRegistry). Gemm is
# rewritten to MatMul + Add first, so "MatMul" covers Gemm too.
OpType = Literal["MatMul", "Conv", "Attention", "LSTM", "Gather", "Transpose",
                 "EmbedLayerNormalization"]


def _default(name: str, value: Any) -> Any:
    # Same field as MeasureParams (bounds, description) with a smaller default budget: this
    # technique times two models and also runs fidelity.
    base = MeasureParams.model_fields[name]
    return FieldInfo.merge_field_infos(base, default=value, json_schema_extra={"examples": [value]})


class QuantizeDynamicParams(MeasureParams):
    """Dynamic quantization options, then the measurement grid used for parent vs result."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"weight_type": "int8", "per_channel": False, "batch_sizes": [1, 8, 32]},
        {"weight_type": "int8", "op_types": ["MatMul"], "threads": [1, 4]},
    ]})

    min_runs: int = _default("min_runs", 20)
    min_seconds: float = _default("min_seconds", 0.5)
    max_seconds: float = _default("max_seconds", 10.0)
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
        default=None, min_length=1,
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
    preprocess: bool = Field(
        default=True,
        description="Run onnxruntime's quantization pre-processing (constant folding, shape "
        "inference) first, as onnxruntime recommends; it lets more MatMuls be quantized in "
        "exported transformers. Skipped automatically if it fails on the model.",
        json_schema_extra={"examples": [True]},
    )
    fidelity_samples: int = Field(
        default=256, ge=1, le=100_000,
        description="Samples compared between parent and result: the first N of the dataset, "
        "or min(N, 64) generated samples when there is no dataset.",
        json_schema_extra={"examples": [256]},
    )
    fidelity_batch_size: int = Field(
        default=32, ge=1, le=4096,
        description="Batch size used while computing fidelity.",
        json_schema_extra={"examples": [32]},
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
        from app.engine.environment import describe_environment
        from app.engine.inspect import inspect_onnx
        from app.engine.fidelity import measure_fidelity, worst_cosine
        from app.engine.quant_analysis import (
            candidate_ops,
            node_summary,
            op_counts,
            saturation_note,
            verdict,
        )
        from app.engine.ort_quant import default_dynamic_op_types, quantize_dynamic_file
        from app.engine.session import providers_for

        params = ctx.params
        if not isinstance(params, QuantizeDynamicParams):
            params = QuantizeDynamicParams.model_validate(params)
        ctx.progress(0.0, "loading")
        parent_info = inspect_onnx(ctx.model_path)
        parent_ops = op_counts(ctx.model_path)
        looked_for = list(params.op_types or default_dynamic_op_types())
        if not set(parent_ops) & candidate_ops(looked_for):
            raise _nothing_to_quantize(parent_ops, looked_for)

        ctx.progress(0.05, "quantizing")
        output = ctx.workdir / "model.onnx"
        preprocess = quantize_dynamic_file(
            ctx.model_path, output, ctx.workdir, op_types=params.op_types,
            per_channel=params.per_channel, reduce_range=params.reduce_range,
            weight_type=params.weight_type, preprocess=params.preprocess)
        result_info = inspect_onnx(output)
        nodes = node_summary(parent_ops, op_counts(output), looked_for)
        if nodes["quantized_nodes_added"] <= 0:
            output.unlink(missing_ok=True)
            raise _nothing_to_quantize(parent_ops, looked_for)

        feeds = FeedSource(params, ctx.dataset_path)
        fidelity = measure_fidelity(
            ctx.model_path, output, feeds, samples=params.fidelity_samples,
            batch_size=params.fidelity_batch_size, threads=max(params.threads),
            device=ctx.device, progress=ctx.progress, span=(0.15, 0.3))
        models = {"parent": ctx.model_path, "result": output}
        grid = measure_grid(models, params, feeds, device=ctx.device, progress=ctx.progress,
                            span=(0.3, 0.98), what=feeds.what)
        ctx.progress(0.99, "report")
        environment = describe_environment()
        worst = worst_cosine(fidelity["outputs"])
        saturation = saturation_note(params.per_channel, params.reduce_range, environment, worst)
        notes = [n for n in (providers_for(ctx.device)[1], saturation) if n]
        if preprocess.startswith("skipped"):
            notes.append(f"pre-processing {preprocess}; quantized the model as uploaded")

        comparison = [_compare(p) for p in grid["points"]]
        sizes = (ctx.model_path.stat().st_size, output.stat().st_size)
        size_ratio = round(sizes[1] / sizes[0], 4)
        report = {
            "schema_version": SCHEMA_VERSION,
            "technique": self.name,
            "parent": {"size_bytes": sizes[0], "parameter_count": parent_info["parameter_count"]},
            "result": {"size_bytes": sizes[1], "parameter_count": result_info["parameter_count"]},
            "size_ratio": size_ratio,
            "quantization": {"weight_type": params.weight_type, "per_channel": params.per_channel,
                             "reduce_range": params.reduce_range, "op_types": looked_for,
                             "preprocess": preprocess},
            "nodes": nodes,
            "device": ctx.device,
            "provider": grid["provider"],
            "comparison": comparison,
            "skipped": grid["skipped"],
            "fidelity": fidelity,
            "verdict": verdict(comparison, size_ratio, nodes, grid["provider"], worst),
            "inputs": feeds.describe(grid["specs"]),
            "environment": environment,
            "notes": notes,
        }
        return Result(report=report, output_path=output)


def _nothing_to_quantize(parent_ops: dict, looked_for: list[str]) -> UnsupportedModel:
    from app.engine.quant_analysis import candidate_ops

    candidates = candidate_ops(looked_for)
    present = sorted(op for op in parent_ops if op in candidates)
    why = (f"its {present} nodes have no constant weights the quantizer could use" if present
           else f"it has none of them (its op types: {sorted(parent_ops)})")
    return UnsupportedModel(
        f"nothing to quantize: dynamic quantization looks for {sorted(candidates)} nodes and "
        f"{why}. It helps models dominated by MatMul/Gemm with weights (transformers, MLPs)"
    )


def _compare(point: dict) -> dict:
    parent, result = point["parent"], point["result"]
    return {
        "batch_size": point["batch_size"],
        "threads": point["threads"],
        "parent_p50_ms": parent["p50_ms"],
        "result_p50_ms": result["p50_ms"],
        "speedup": round(parent["p50_ms"] / result["p50_ms"], 4),
        "parent_p90_ms": parent["p90_ms"],
        "result_p90_ms": result["p90_ms"],
        "parent_runs": parent["runs"],
        "result_runs": result["runs"],
        "input_shapes": point["input_shapes"],
    }
