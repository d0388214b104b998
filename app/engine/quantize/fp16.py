"""Technique ``quantize.fp16``: float32 -> float16 weights and compute, float32 inputs and
outputs kept (Casts at the edges), then the shared parent vs result report.

On a CPU provider float16 is usually slower (few float16 kernels: onnxruntime casts back to
float32 around most ops); the report measures it and says so rather than hiding it.
"""

from __future__ import annotations

from pydantic import ConfigDict

from app.engine.quantize.params import QuantParams
from app.engine.base import Context, Result, Technique, register


class QuantizeFp16Params(QuantParams):
    """Float16 conversion options (exclusions), then the measurement grid."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"batch_sizes": [1, 32]},
        {"exclude_op_types": ["Softmax"], "min_cosine": 0.999},
    ]})


@register
class QuantizeFp16(Technique):
    name = "quantize.fp16"
    description = (
        "Convert weights and compute to float16, keeping float32 inputs/outputs; then parent "
        "vs result latency, size and fidelity. Halves the file; usually slower on CPU (the "
        "verdict says so), meant for GPUs."
    )
    Params = QuantizeFp16Params
    needs_dataset = False
    produces_model = True

    def run(self, ctx: Context) -> Result:
        from app.engine.quantize.lowbit import convert_fp16
        from app.engine.quantize.ort_tools import staged
        from app.engine.quantize.exclusions import resolve_exclusions
        from app.engine.quantize.analysis import op_counts
        from app.engine.quantize.report import build_report
        from app.engine.errors import UnsupportedModel

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        output = ctx.workdir / "model.onnx"
        ctx.progress(0.05, "converting")
        with staged(ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                    min_opset=1, deadline_s=ctx.native_step_timeout_s) as stage:
            exclude = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes, [])
            convert_fp16(stage, output, exclude_nodes=exclude,
                         exclude_op_types=params.exclude_op_types)
        casts = op_counts(output).get("Cast", 0) - op_counts(ctx.model_path).get("Cast", 0)
        if output.stat().st_size >= ctx.model_path.stat().st_size and casts <= 0:
            output.unlink(missing_ok=True)
            raise UnsupportedModel("nothing to convert: the model has no float32 weights or "
                                   "computation that float16 conversion would change")
        quantization = {"mode": "float16", "keep_io_types": True,
                        "preprocess": stage.preprocess, "excluded_nodes": exclude,
                        "excluded_op_types": params.exclude_op_types}
        notes = []
        if ctx.device == "cpu":
            notes.append("float16 on the CPU provider: most ops have no float16 kernel and "
                         "run in float32 behind Cast nodes; expect a smaller file, not speed")
        report = build_report(ctx, params, technique=self.name, output=output,
                              quantization=quantization, looked_for=[], notes=notes,
                              mode="float16")
        return Result(report=report, output_path=output)
