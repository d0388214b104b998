from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TensorSpec(BaseModel):
    name: str
    shape: list[int | str | None] = Field(description="Dimensions; a string is a symbolic dimension (e.g. 'batch').")
    dtype: str


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "0193a1b2c3d4e5f60718293a4b5c6d7e", "name": "mlp.onnx", "format": "onnx",
        "size_bytes": 10652, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": ["batch", 10], "dtype": "float32"}],
        "parameter_count": 2410, "parent_id": None, "job_id": None, "created_at": "2026-11-28T08:00:00Z",
        "meta": {"opset": 17, "producer": "pytorch", "ir_version": 8},
    }]})

    id: str
    name: str
    format: str
    size_bytes: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameter_count: int
    parent_id: str | None = Field(description="The model this one was produced from.")
    job_id: str | None = Field(description="The job that produced this model.")
    created_at: datetime
    meta: dict[str, Any] = Field(default_factory=dict, description="Opset, producer and other facts read from the file.")
