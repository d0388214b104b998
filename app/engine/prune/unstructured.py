"""Technique ``prune.unstructured``: magnitude pruning to a target sparsity, ``global`` (one
threshold over all weights) or ``layer`` (each layer to the same sparsity).

It zeroes weights in the ONNX initializers directly: no retraining is involved, so a round
trip through torch would only add exporter differences, while this way the result is the
parent's exact graph with zeros, and the latency comparison isolates what the zeros do —
nothing, on dense kernels, which the report says. Zeros do compress: the zip size is reported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.params import MeasureParams, Name
from app.engine.base import Context, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.errors import UnsupportedModel

WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> weight input index


class PruneUnstructuredParams(MeasureParams):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sparsity": 0.5, "scope": "global"}, {"sparsity": 0.8, "scope": "layer"}]})

    sparsity: float = Field(
        default=0.5, gt=0.0, lt=1.0,
        description="Share of weights (of Conv/Gemm/MatMul weight tensors) set to zero.",
        json_schema_extra={"examples": [0.5]})
    scope: Literal["global", "layer"] = Field(
        default="global",
        description="global: one magnitude threshold over all weights (layers end up with "
        "different sparsities); layer: every layer pruned to `sparsity`.",
        json_schema_extra={"examples": ["global"]})
    keep_layers: list[Name] = Field(
        default_factory=list, max_length=256,
        description="Weight initializer names or node names left dense.",
        json_schema_extra={"examples": [[]]})


@register
class PruneUnstructured(Technique):
    name = "prune.unstructured"
    description = (
        "Magnitude pruning to a target sparsity (global or per layer). Reports sparsity per "
        "layer and the zip-compressed size, which shrinks; dense kernels run no faster.")
    Params = PruneUnstructuredParams
    produces_model = True

    def run(self, ctx: Context) -> Result:
        import numpy as np
        import onnx
        from onnx import numpy_helper

        from app.engine.pytorch import report as tr
        from app.engine.pytorch.export import verify_against
        from app.engine.pytorch.loading import require_onnx

        p = self.params_of(ctx)
        require_onnx(ctx.model_path, self.name)
        ctx.progress(0.0, "loading")
        model = onnx.load(str(ctx.model_path), load_external_data=False)
        inits = {t.name: t for t in model.graph.initializer}
        names = []
        for node in model.graph.node:
            idx = WEIGHT_OPS.get(node.op_type)
            if idx is None or len(node.input) <= idx or node.input[idx] not in inits:
                continue
            if node.name in p.keep_layers or node.input[idx] in p.keep_layers:
                continue
            if node.input[idx] not in names and inits[node.input[idx]].data_type == 1:
                names.append(node.input[idx])  # float32 weights only; shared ones once
        if not names:
            raise UnsupportedModel("no float32 Conv/Gemm/MatMul weight initializer to prune "
                                   "(or all are in keep_layers)")
        weights = {n: numpy_helper.to_array(inits[n]) for n in names}
        if p.scope == "global":
            allw = np.concatenate([np.abs(w).ravel() for w in weights.values()])
            k = int(round(p.sparsity * allw.size))
            threshold = np.partition(allw, k - 1)[k - 1] if k else -1.0
        layers = []
        for name, w in weights.items():
            if p.scope == "layer":
                k = int(round(p.sparsity * w.size))
                threshold = np.partition(np.abs(w).ravel(), k - 1)[k - 1] if k else -1.0
            pruned = np.where(np.abs(w) <= threshold, 0, w).astype(w.dtype)
            inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
            layers.append({"weight": name, "elements": int(w.size),
                           "parent_zeros": float((w == 0).mean()),
                           "sparsity": round(float((pruned == 0).mean()), 6)})
        output = ctx.workdir / "model.onnx"
        onnx.save(model, str(output))
        ctx.progress(0.1, "verifying")
        verification = verify_against(ctx.model_path, output)
        measured = tr.compare(ctx, p, output, ctx.dataset_path, span=(0.15, 0.97))
        total = sum(x["elements"] for x in layers)
        zeros = sum(x["elements"] * x["sparsity"] for x in layers)
        from app.engine.runtime.model_info import inspect_onnx

        count = inspect_onnx(ctx.model_path)["parameter_count"]
        parent = {"parameter_count": count, "nonzero_parameters": count - int(
                      sum(x["elements"] * x["parent_zeros"] for x in layers)),
                  "size_bytes": ctx.model_path.stat().st_size,
                  "zip_size_bytes": _zip_size(ctx.model_path)}
        result = {"parameter_count": count, "nonzero_parameters": count - int(round(zeros)),
                  "size_bytes": output.stat().st_size, "zip_size_bytes": _zip_size(output)}
        ratio = result["zip_size_bytes"] / parent["zip_size_bytes"]
        report = {
            "schema_version": SCHEMA_VERSION, "technique": self.name,
            "parent": parent, "result": result,
            "sparsity": {"target": p.sparsity, "scope": p.scope,
                         "achieved": round(zeros / total, 6), "layers": layers},
            "verification": verification, "device": ctx.device, **measured,
            "verdict": {
                "faster": False, "smaller": False,
                "smaller_compressed": result["zip_size_bytes"] < parent["zip_size_bytes"],
                "summary": (f"{zeros / total * 100:.1f}% of pruned-layer weights are zero. The "
                            "ONNX file is the same size and dense kernels run no faster (the "
                            "zeros are still multiplied): no speedup is claimed. Compressed "
                            f"(zip) size x{ratio:.2f}. Use prune.structured for speed.")},
            "environment": tr.environment(), "notes": [],
        }
        return Result(report=checked(report), output_path=output)


def _zip_size(path) -> int:
    """Deflate-compressed size: what storage or a download with compression costs."""
    import zlib

    return len(zlib.compress(path.read_bytes(), 6))
