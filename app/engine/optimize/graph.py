"""Technique ``optimize.graph``: onnxruntime's transformer optimizer (operator fusion:
Attention, SkipLayerNormalization, BiasGelu, ...) producing a fused float32 (or float16)
graph, then the shared parent vs result report (fidelity, paired speedup) with the fused
operator counts. On a graph with no transformer pattern it runs onnxruntime's generic graph
optimizations only and says so. Module top: pydantic/stdlib-level imports only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.base import Context, Result, Technique, register
from app.engine.quantize.params import QuantParams

ModelType = Literal["auto", "generic", "bert", "bart", "gpt2", "gpt_neox", "t5", "vit", "swin",
                    "clip", "conformer", "phi", "unet", "vae"]


class OptimizeGraphParams(QuantParams):
    """What to fuse (model type, attention shape, level, float16), then the grid and the
    tolerance the result is checked against. exclude_nodes / exclude_op_types / preprocess do
    not apply (the optimizer fuses patterns, not nodes)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"batch_sizes": [1, 32]},
        {"model_type": "bert", "num_heads": 12, "hidden_size": 384, "opt_level": 1},
        {"float16": True, "min_cosine": 0.999},
    ]})

    model_type: ModelType = Field(
        default="auto",
        description="The optimizer's fusion set. auto: bert for a graph with layer "
        "normalisation and softmax attention, else generic (onnxruntime's own graph "
        "optimizations only, no transformer fusions).",
        json_schema_extra={"examples": ["auto", "bert"]},
    )
    num_heads: int = Field(
        default=0, ge=0, le=4096,
        description="Attention heads; 0: detected by the optimizer from the graph.",
        json_schema_extra={"examples": [0, 12]},
    )
    hidden_size: int = Field(
        default=0, ge=0, le=1_000_000,
        description="Hidden size; 0: detected by the optimizer from the graph.",
        json_schema_extra={"examples": [0, 384]},
    )
    opt_level: Literal[0, 1, 2] | None = Field(
        default=None,
        description="onnxruntime graph optimizations run before the fusions: 0 none, 1 basic, "
        "2 extended (the saved graph then has onnxruntime-only ops). null: the optimizer's "
        "default for the model type (1 for generic). 99 is not offered: its graph is specific "
        "to the machine that saved it.",
        json_schema_extra={"examples": [None, 1]},
    )
    float16: bool = Field(
        default=False,
        description="Convert the fused graph to float16 (float32 inputs and outputs kept). "
        "For GPUs; on CPU it is usually slower.",
        json_schema_extra={"examples": [False]},
    )


@register
class OptimizeGraph(Technique):
    name = "optimize.graph"
    description = (
        "Fuse transformer subgraphs with onnxruntime's transformer optimizer (Attention, "
        "SkipLayerNormalization, BiasGelu, ...; model type and attention shape detected or "
        "given), optionally to float16; then parent vs result latency and fidelity, with the "
        "fused operator counts. A graph without a transformer pattern gets onnxruntime's "
        "generic graph optimizations only."
    )
    Params = OptimizeGraphParams
    needs_dataset = False
    produces_model = True

    def run(self, ctx: Context) -> Result:
        import shutil
        import tempfile
        from pathlib import Path

        from app.engine.optimize.fusion import attention_shape, detect_model_type, fuse
        from app.engine.quantize.analysis import op_counts
        from app.engine.quantize.report import build_report

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        parent_ops = op_counts(ctx.model_path)
        detected = detect_model_type(parent_ops)
        model_type = (detected if params.model_type == "auto"
                      else None if params.model_type == "generic" else params.model_type)
        heads, hidden, shape_source = params.num_heads, params.hidden_size, "given"
        if model_type is not None and not (heads and hidden):
            found = attention_shape(ctx.model_path)
            if found and (not heads or heads == found[0]) and (not hidden or hidden == found[1]):
                heads, hidden, shape_source = *found, "detected from the graph"
            else:
                shape_source = "left to the optimizer (not found in the graph)"
        output = ctx.workdir / "model.onnx"
        ctx.progress(0.05, "fusing")
        scratch = Path(tempfile.mkdtemp(prefix="fuse-", dir=ctx.workdir))
        try:
            fused = fuse(ctx.model_path, output, scratch, model_type=model_type,
                         num_heads=heads, hidden_size=hidden,
                         opt_level=params.opt_level, use_gpu=ctx.device == "gpu",
                         float16=params.float16, deadline_s=ctx.native_step_timeout_s)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        notes = []
        if model_type is None:
            notes.append(
                "transformer fusions not applicable: "
                + ("model_type=generic" if params.model_type == "generic" else
                   "no transformer pattern (layer normalisation with softmax attention over "
                   "MatMul) in the graph")
                + "; only onnxruntime's generic graph optimizations were applied, which it "
                "also applies when it loads the parent, so expect no speedup")
        elif not fused["fused_operators"]:
            notes.append(f"the {model_type} optimizer found nothing to fuse in this graph")
        elif "Attention" not in fused["fused_operators"] and detected == "bert":
            notes.append(
                "no Attention fused: the optimizer did not recognise this export's attention "
                + ("(its IsNaN/Where mask handling is how transformers' sdpa attention exports: "
                   "re-exporting with attn_implementation=\"eager\" fused Attention on MiniLM)"
                   if parent_ops.get("IsNaN") else "pattern")
                + "; the other fusions apply")
        if params.float16 and ctx.device == "cpu":
            notes.append("float16 on the CPU provider: most ops have no float16 kernel; "
                         "expect a smaller file, not speed")
        graph = {"model_type": model_type or "generic", "model_type_requested": params.model_type,
                 "num_heads": heads, "hidden_size": hidden,
                 "attention_shape": shape_source if model_type else None,
                 "opt_level": params.opt_level, "float16": params.float16,
                 "use_gpu": ctx.device == "gpu", "fused_operators": fused["fused_operators"],
                 "transformer_fusions": "applied" if model_type else "not_applicable"}
        report = build_report(ctx, params, technique=self.name, output=output,
                              quantization={"mode": "float16" if params.float16 else "float32"},
                              looked_for=[], notes=notes,
                              mode="float16" if params.float16 else "float32",
                              extra={"graph": graph})
        return Result(report=report, output_path=output)
