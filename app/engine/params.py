"""Measurement and input-generation params shared by every technique that times a model.

Only pydantic and the standard library are imported here: the API builds JSON Schemas from
these classes and must not load onnxruntime or numpy to do so.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from app.engine.base import Params

BatchSize = Annotated[int, Field(ge=1, le=4096)]
Threads = Annotated[int, Field(ge=1, le=256)]
DimValue = Annotated[int, Field(ge=1, le=1_000_000)]
# Every list, mapping and free string in a params model has an upper bound (max_length): the
# request body limit caps bytes, the bounds cap what one stored job may ask for. A test walks
# every technique's JSON Schema for them (tests/test_low_findings.py).
Name = Annotated[str, Field(max_length=1024)]  # a node, layer, op type or input dimension, by name
ModelId = Annotated[str, Field(min_length=1, max_length=64)]


class MeasureParams(Params):
    """Latency measurement grid (batch sizes x thread counts) and how inputs are built."""

    # Lists are capped at 8 entries so one job's worst case stays bounded
    # (points x max_seconds); a larger sweep should be several jobs.
    batch_sizes: list[BatchSize] = Field(
        default=[1, 8, 32],
        min_length=1,
        max_length=8,
        description="Batch sizes to measure, each 1..4096. Used as the first (batch) dimension "
        "of every input whose first dimension is symbolic.",
        json_schema_extra={"examples": [[1, 8, 32], [1]]},
    )
    threads: list[Threads] = Field(
        default=[1],
        min_length=1,
        max_length=8,
        description="onnxruntime intra-op thread counts to measure, each 1..256. A single "
        "integer is accepted and treated as a one-element list. Counts above the machine's "
        "cores are measured but rarely help.",
        json_schema_extra={"examples": [[1], [1, 4]]},
    )
    warmup: int = Field(
        default=10, ge=1, le=1000,
        description="Untimed runs before timing each point (first runs pay allocation and "
        "cache costs that steady-state inference does not).",
        json_schema_extra={"examples": [10]},
    )
    min_runs: int = Field(
        default=30, ge=1, le=100_000,
        description="Timed runs per point at least (unless max_seconds is reached first).",
        json_schema_extra={"examples": [30]},
    )
    max_runs: int = Field(
        default=1000, ge=1, le=100_000,
        description="Timed runs per point at most.",
        json_schema_extra={"examples": [1000]},
    )
    min_seconds: float = Field(
        default=1.0, ge=0.0, le=600.0,
        description="Keep timing a point until this many seconds were spent in timed runs "
        "(and min_runs were done).",
        json_schema_extra={"examples": [1.0]},
    )
    max_seconds: float = Field(
        default=30.0, gt=0.0, le=600.0,
        description="Hard time budget per point, warm-up included; timing stops when reached "
        "even if min_runs was not.",
        json_schema_extra={"examples": [30.0]},
    )
    min_rounds: int = Field(
        default=10, ge=6, le=10_000,
        description="When models are compared: interleaved rounds at least (each model's runs "
        "alternated). 6 is the fewest for which the median ratio has a 95% interval (then "
        "from the lowest to the highest round); more rounds narrow it.",
        json_schema_extra={"examples": [10]},
    )
    ci_target: float | None = Field(
        default=None, gt=0.0, le=0.5,
        description="Keep timing a point until the 95% confidence interval of its p50 is "
        "narrower than this fraction of the p50 (e.g. 0.02 = +-2%), or max_seconds runs out; "
        "a point that never gets there is marked noisy. null = stop at min_runs/min_seconds.",
        json_schema_extra={"examples": [0.02]},
    )
    dims: dict[Name, DimValue] = Field(
        default_factory=dict, max_length=64,
        description="Values for symbolic input dimensions other than the batch dimension, by "
        "name as shown in the model's inputs, e.g. {\"seq_len\": 128}.",
        json_schema_extra={"examples": [{"seq_len": 128}, {"height": 224, "width": 224}]},
    )
    default_dim: int = Field(
        default=128, ge=1, le=65_536,
        description="Value for symbolic dimensions not given in dims. 128 is a typical "
        "transformer sequence length and a small but realistic image side.",
        json_schema_extra={"examples": [128]},
    )
    int_high: int = Field(
        default=1000, ge=1, le=2**31 - 1,
        description="Generated integer inputs (e.g. token ids) are drawn from [0, int_high). "
        "Inputs named like '*mask*' are all ones and '*token_type*' all zeros instead.",
        json_schema_extra={"examples": [1000, 30522]},
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1,
        description="Random seed for generated inputs (same seed, same inputs).",
        json_schema_extra={"examples": [0]},
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _int_to_list(cls, value: object) -> object:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("batch_sizes", "threads")
    @classmethod
    def _dedupe(cls, value: list[int]) -> list[int]:
        # Duplicates would only re-measure the same point; keep the user's order.
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _ranges(self) -> MeasureParams:
        if self.max_runs < self.min_runs:
            raise ValueError("max_runs must be >= min_runs")
        if self.max_seconds < self.min_seconds:
            raise ValueError("max_seconds must be >= min_seconds")
        return self
