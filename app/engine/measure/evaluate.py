"""Technique ``evaluate``: accuracy of a model on a dataset (with ``labels``) and/or its
fidelity to a reference model (``reference_model_id``, default the model's parent).

Module top imports only pydantic/stdlib-level modules; onnxruntime inside ``run()``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from app.engine.base import Context, Params, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked


class EvaluateParams(Params):
    """What to compare and how many samples."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"samples": 1000},
        {"reference_model_id": "0123456789abcdef0123456789abcdef", "task": "regression"},
    ]})

    reference_model_id: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Model whose outputs are the reference for fidelity (cosine, errors, "
        "top-1 and nearest-neighbour agreement). Default: the model's parent, if it has one.",
        json_schema_extra={"examples": [None]},
    )
    task: Literal["auto", "classification", "regression"] = Field(
        default="auto",
        description="How `labels` score the first output: classification (top-1/top-5) or "
        "regression (MSE/MAE). auto: integer labels are classes, float labels are targets.",
        json_schema_extra={"examples": ["auto"]},
    )
    samples: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="Evaluate on the first N samples of the dataset.",
        json_schema_extra={"examples": [1000]},
    )
    batch_size: int = Field(
        default=32, ge=1, le=4096, description="Samples per inference call.",
        json_schema_extra={"examples": [32]},
    )
    threads: int = Field(
        default=1, ge=1, le=256, description="onnxruntime intra-op threads.",
        json_schema_extra={"examples": [1]},
    )


@register
class Evaluate(Technique):
    name = "evaluate"
    description = (
        "Accuracy on the job's dataset: top-1/top-5 or MSE/MAE against its `labels`; and "
        "fidelity to a reference model (default the parent): cosine, max/mean abs error, "
        "top-1 agreement, nearest-neighbour agreement for embeddings."
    )
    Params = EvaluateParams
    needs_dataset = True
    produces_model = False
    model_params = ("reference_model_id",)

    def run(self, ctx: Context) -> Result:
        from app.engine.runtime.environment import describe_environment
        from app.engine.measure.accuracy import compare_models
        from app.engine.data.feeds import FeedSource
        from app.engine.params import MeasureParams
        from app.engine.errors import DatasetMismatch, InvalidParams

        params = self.params_of(ctx)
        if ctx.dataset_path is None:
            raise DatasetMismatch("evaluate needs a dataset: add a dataset_id to the job")
        reference, source = None, None
        if params.reference_model_id:
            reference, source = ctx.models[params.reference_model_id], "reference_model_id"
        elif ctx.parent_path is not None:
            reference, source = ctx.parent_path, "parent"
        ctx.progress(0.0, "loading")
        feeds = FeedSource(MeasureParams(), ctx.dataset_path)
        result = compare_models(ctx.model_path, reference, feeds, samples=params.samples,
                                batch_size=params.batch_size, threads=params.threads,
                                device=ctx.device, progress=ctx.progress, span=(0.02, 0.98),
                                task=params.task)
        if result["accuracy"] is None and reference is None:
            raise InvalidParams(
                "nothing to evaluate: the dataset has no `labels` array and the model has no "
                "parent; add labels to the dataset or set reference_model_id")
        ctx.progress(0.99, "report")
        report = {
            "schema_version": SCHEMA_VERSION,
            "technique": self.name,
            "samples": result["samples"],
            "accuracy": result["accuracy"],
            "reference": {"source": source, "model_id": params.reference_model_id}
            if reference is not None else None,
            "fidelity": result["fidelity"],
            "device": ctx.device,
            "environment": describe_environment(),
        }
        return Result(report=checked(report))
