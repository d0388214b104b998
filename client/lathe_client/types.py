"""What the service answers, as frozen dataclasses (``raw`` keeps the whole JSON, newer fields too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")

T = TypeVar("T")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    # Python 3.10's fromisoformat does not read a trailing "Z".
    return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str | None]
    dtype: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], shape=list(d.get("shape") or []), dtype=d.get("dtype", ""))


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    format: str
    size_bytes: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameter_count: int
    parent_id: str | None
    job_id: str | None
    created_at: datetime | None
    meta: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Model:
        return cls(id=d["id"], name=d.get("name", ""), format=d.get("format", ""), size_bytes=d.get("size_bytes", 0),
                   sha256=d.get("sha256", ""), inputs=[TensorSpec.from_json(t) for t in d.get("inputs") or []],
                   outputs=[TensorSpec.from_json(t) for t in d.get("outputs") or []],
                   parameter_count=d.get("parameter_count", 0), parent_id=d.get("parent_id"),
                   job_id=d.get("job_id"), created_at=_time(d.get("created_at")), meta=dict(d.get("meta") or {}),
                   raw=d)


@dataclass(frozen=True)
class ArraySpec:
    shape: list[int]
    dtype: str


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    size_bytes: int
    sha256: str
    num_samples: int
    arrays: dict[str, ArraySpec]
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Dataset:
        return cls(id=d["id"], name=d.get("name", ""), size_bytes=d.get("size_bytes", 0), sha256=d.get("sha256", ""),
                   num_samples=d.get("num_samples", 0),
                   arrays={k: ArraySpec(list(v.get("shape") or []), v.get("dtype", ""))
                           for k, v in (d.get("arrays") or {}).items()},
                   created_at=_time(d.get("created_at")), raw=d)


@dataclass(frozen=True)
class Technique:
    name: str
    description: str
    params_schema: dict[str, Any]
    devices: list[str]
    needs_dataset: bool
    produces_model: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Technique:
        return cls(name=d["name"], description=d.get("description", ""), params_schema=d.get("params_schema") or {},
                   devices=list(d.get("devices") or []), needs_dataset=bool(d.get("needs_dataset")),
                   produces_model=bool(d.get("produces_model")), raw=d)


@dataclass(frozen=True)
class JobError:
    type: str
    detail: str


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: ``Step("quantize.static", {"calibration": "entropy"})``."""

    technique: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobState:
    """A job as ``GET /v1/jobs/{id}`` answers it. ``Job``/``AsyncJob`` add the calls."""

    id: str
    model_id: str | None
    dataset_id: str | None
    technique: str
    params: dict[str, Any]
    device: str
    status: JobStatus
    progress: float
    stage: str | None
    error: JobError | None
    output_model_id: str | None
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def fields(d: dict[str, Any]) -> dict[str, Any]:
        err = d.get("error")
        return dict(id=d["id"], model_id=d.get("model_id"), dataset_id=d.get("dataset_id"),
                    technique=d.get("technique", ""), params=dict(d.get("params") or {}), device=d.get("device", "cpu"),
                    status=d.get("status", "queued"), progress=float(d.get("progress") or 0.0), stage=d.get("stage"),
                    error=JobError(str(err.get("type", "")), str(err.get("detail", ""))) if isinstance(err, dict) else None,
                    output_model_id=d.get("output_model_id"), attempts=int(d.get("attempts") or 0),
                    created_at=_time(d.get("created_at")), started_at=_time(d.get("started_at")),
                    finished_at=_time(d.get("finished_at")), raw=d)

    @property
    def done(self) -> bool:
        """The job ended: succeeded, failed or cancelled."""
        return self.status in TERMINAL

    @property
    def steps(self) -> list[Step]:
        """A pipeline's steps (one step for a single technique)."""
        if self.technique == "pipeline":
            return [Step(s["technique"], dict(s.get("params") or {})) for s in self.params.get("steps", [])]
        return [Step(self.technique, dict(self.params))]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
