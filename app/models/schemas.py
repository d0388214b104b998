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


class ProducingJob(BaseModel):
    id: str
    technique: str
    status: str


class LineageNode(BaseModel):
    id: str
    name: str
    format: str
    size_bytes: int
    created_at: datetime
    job: ProducingJob | None = Field(description="The job that produced this model; null for an upload.")


class LineageTree(LineageNode):
    children: list[LineageTree] = Field(default_factory=list)


class LineageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": {"id": "0193a1b2c3d4e5f60718293a4b5c6d81", "name": "mlp.quantize.static.onnx", "format": "onnx",
                  "size_bytes": 11000, "created_at": "2026-11-28T08:01:00Z",
                  "job": {"id": "0193a1b2c3d4e5f60718293a4b5c6d80", "technique": "quantize.static", "status": "succeeded"}},
        "ancestors": [{"id": "0193a1b2c3d4e5f60718293a4b5c6d7e", "name": "mlp.onnx", "format": "onnx",
                       "size_bytes": 40000, "created_at": "2026-11-28T08:00:00Z", "job": None}],
        "descendants": [], "truncated": False,
    }]})

    model: LineageNode
    ancestors: list[LineageNode] = Field(description="Parent first, then its parent, up to the uploaded model.")
    descendants: list[LineageTree]
    truncated: bool = Field(description="True when the family is larger than one answer holds (500 models).")
