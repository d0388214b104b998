from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ArraySpec(BaseModel):
    shape: list[int]
    dtype: str


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "0193a1b2c3d4e5f60718293a4b5c6d7f", "name": "digits-val.npz", "size_bytes": 118250,
        "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", "num_samples": 360,
        "arrays": {"x": {"shape": [360, 64], "dtype": "float32"}, "labels": {"shape": [360], "dtype": "int64"}},
        "created_at": "2026-11-28T08:00:00Z",
    }]})

    id: str
    name: str
    size_bytes: int
    sha256: str
    num_samples: int
    arrays: dict[str, ArraySpec] = Field(description="Per array: shape and dtype. `labels`, if present, holds targets.")
    created_at: datetime
