"""Params every quantization technique shares: a smaller measurement budget than a plain
benchmark (two models are timed), manual partial quantization, pre-processing, the evaluation
pass and the tolerance the verdict checks.

Only pydantic and the standard library here: the API builds JSON Schemas from these classes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

from app.engine.params import MeasureParams, Name


def measure_default(name: str, value: Any) -> Any:
    """The MeasureParams field ``name`` (bounds, description) with another default."""
    base = MeasureParams.model_fields[name]
    return FieldInfo.merge_field_infos(base, default=value, json_schema_extra={"examples": [value]})


class QuantParams(MeasureParams):
    """Shared by quantize.dynamic/static/fp16/int4/auto."""

    min_runs: int = measure_default("min_runs", 20)
    min_seconds: float = measure_default("min_seconds", 0.5)
    max_seconds: float = measure_default("max_seconds", 10.0)
    exclude_nodes: list[Name] = Field(
        default_factory=list, max_length=10_000,
        description="Node names to leave in float (manual partial quantization). Names are "
        "those of the uploaded graph; quantize.auto's sensitivity table lists candidates.",
        json_schema_extra={"examples": [[], ["/fc2/Gemm"]]},
    )
    exclude_op_types: list[Name] = Field(
        default_factory=list, max_length=64,
        description="Op types to leave in float everywhere, e.g. [\"Conv\"] or [\"Gather\"].",
        json_schema_extra={"examples": [[], ["Gather"]]},
    )
    preprocess: bool = Field(
        default=True,
        description="Run onnxruntime's quantization pre-processing first (constant folding, "
        "which also turns weights computed by constant subgraphs into initializers, and shape "
        "inference). Skipped automatically, with a note, if it fails on the model.",
        json_schema_extra={"examples": [True]},
    )
    fidelity_samples: int = Field(
        default=256, ge=1, le=100_000,
        description="Samples compared between parent and result (and scored against the "
        "dataset's labels when it has them): the first N of the dataset, or min(N, 64) "
        "generated samples when there is no dataset.",
        json_schema_extra={"examples": [256]},
    )
    fidelity_batch_size: int = Field(
        default=32, ge=1, le=4096,
        description="Batch size used while computing fidelity and accuracy.",
        json_schema_extra={"examples": [32]},
    )
    task: Literal["auto", "classification", "regression"] = Field(
        default="auto",
        description="How the dataset's `labels` score the first output: classification "
        "(top-1/top-5 of the arg max) or regression (MSE/MAE). auto: integer labels are "
        "classes, float labels are regression targets.",
        json_schema_extra={"examples": ["auto"]},
    )
    min_cosine: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description="Tolerance: lowest acceptable MEAN per-sample cosine similarity between "
        "result and parent, for every float output. Default when no tolerance is set: 0.99 "
        "without labels.",
        json_schema_extra={"examples": [0.99]},
    )
    min_cosine_per_sample: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description="Worst-case tolerance: lowest acceptable cosine similarity of EVERY "
        "evaluated sample (each float output), where min_cosine bounds their mean. Set both "
        "to bound the average and the worst case.",
        json_schema_extra={"examples": [None, 0.98]},
    )
    max_accuracy_drop_pt: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Tolerance: largest acceptable top-1 accuracy drop in percentage POINTS "
        "(0.5 = half a point, e.g. 97.0% -> 96.5%) for classification, or relative MSE "
        "increase in percent for regression, against the dataset's labels. Default when no "
        "tolerance is set: 1.0 with labels. Replaces max_accuracy_drop (same unit), whose "
        "name did not say it.",
        json_schema_extra={"examples": [0.5]},
    )

    # Version 2: max_accuracy_drop (percentage points) became max_accuracy_drop_pt.
    params_version: ClassVar[int] = 2

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Stored version-1 params meant points by max_accuracy_drop: the same value, renamed."""
        data = dict(data)
        if version < 2 and "max_accuracy_drop" in data:
            data["max_accuracy_drop_pt"] = data.pop("max_accuracy_drop")
        return data

    @model_validator(mode="before")
    @classmethod
    def _old_drop_name(cls, data: Any) -> Any:
        """A new request with the old name is refused: 0.005 was read as 0.005 points where
        the caller meant a fraction (half a point); say the unit instead of guessing it."""
        if isinstance(data, dict) and "max_accuracy_drop" in data:
            data = dict(data)
            value = data.pop("max_accuracy_drop")
            if value is None:  # params echoed from an older job's row: nothing to misread
                return data
            raise ValueError(
                f"max_accuracy_drop was renamed max_accuracy_drop_pt, in percentage points: "
                f"{value!r} means {value!r} points there; for a fraction of accuracy (0.005 = "
                f"half a point) send max_accuracy_drop_pt={_as_points(value)}")
        return data

    def tolerance(self, has_labels: bool) -> dict[str, float | None]:
        """The tolerance the verdict checks: the user's, or the documented default. An
        accuracy tolerance needs labels; without them only the cosine ones can apply."""
        drop = self.max_accuracy_drop_pt if has_labels else None
        cosine, per_sample = self.min_cosine, self.min_cosine_per_sample
        if drop is None and cosine is None and per_sample is None:
            drop, cosine = (1.0, None) if has_labels else (None, 0.99)
        return {"min_cosine": cosine, "min_cosine_per_sample": per_sample,
                "max_accuracy_drop_pt": drop}


def _as_points(value: Any) -> Any:
    return round(value * 100, 6) if isinstance(value, (int, float)) else "<fraction x 100>"
