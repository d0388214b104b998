from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.engine import pipeline as plan
from app.jobs.errors import JobErrorType

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    technique: str = Field(max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model_id": "0193a1b2c3d4e5f60718293a4b5c6d7e", "technique": "quantize.dynamic",
         "params": {"per_channel": True, "batch_sizes": [1, 32]}, "device": "cpu"},
        {"model_id": "0193a1b2c3d4e5f60718293a4b5c6d7e", "technique": "benchmark",
         "params": {"batch_sizes": [1, 8, 32], "threads": [1, 2]}},
        {"model_id": "0193a1b2c3d4e5f60718293a4b5c6d7e", "dataset_id": "0193a1b2c3d4e5f60718293a4b5c6d7f",
         "steps": [{"technique": "prune.structured", "params": {"ratio": 0.5}},
                   {"technique": "distill", "params": {"epochs": 5}},
                   {"technique": "quantize.static", "params": {}}]},
    ]})

    model_id: str = Field(max_length=64)
    technique: str | None = Field(None, max_length=100, description="A name from `GET /v1/techniques` (or give `steps`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Validated against the technique's `params_schema`.")
    steps: list[StepIn] | None = Field(None, min_length=1, max_length=8, description=(
        "A pipeline instead of one technique: each step's output model feeds the next; every "
        "intermediate model is kept with its lineage; the report covers every step."))
    dataset_id: str | None = Field(None, max_length=64)
    device: Literal["cpu", "gpu"] = "cpu"


class JobError(BaseModel):
    type: JobErrorType = Field(description="Stable: switch on it. The detail says what to do, for a person.")
    detail: str


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "0193a1b2c3d4e5f60718293a4b5c6d80", "model_id": "0193a1b2c3d4e5f60718293a4b5c6d7e",
        "dataset_id": None, "technique": "quantize.dynamic", "params": {"per_channel": True},
        "device": "cpu", "status": "running", "progress": 0.4, "stage": "benchmark bs=8",
        "error": None, "output_model_id": None, "attempts": 1,
        "created_at": "2026-11-28T08:00:00Z", "started_at": "2026-11-28T08:00:01Z", "finished_at": None,
    }]})

    id: str
    model_id: str | None
    dataset_id: str | None
    technique: str
    params: dict[str, Any]
    device: str
    status: Status
    progress: float = Field(ge=0, le=1)
    stage: str | None
    error: JobError | None
    output_model_id: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @field_validator("params", mode="before")
    @classmethod
    def _public(cls, params: Any, info: ValidationInfo) -> Any:
        return plan.public(info.data.get("technique", ""), params)
