"""What every technique shares: its params base, the context it runs in, its result.

Only pydantic and the standard library at module top: the API imports this (through the
catalog) to list techniques and validate params without loading onnxruntime or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

Device = Literal["cpu", "gpu"]


class Params(BaseModel):
    """Base of every technique's params: frozen, unknown fields refused, JSON round-trip."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Jobs store their params with this version (app.engine.pipeline) and a queued job may be loaded
    # by a later release: bump it when a change would refuse or reread stored params (a field
    # renamed, removed, or meaning something else), and override ``upgrade``.
    params_version: ClassVar[int] = 1

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Params stored at an older ``version``, as this version's fields (then validated)."""
        return data


# How long one native step we don't control (shape inference, a converter, an exporter) may
# run before its process is killed; the worker passes LATHE_NATIVE_STEP_TIMEOUT_S.
DEFAULT_NATIVE_STEP_TIMEOUT_S = 300.0

ProgressFn = Callable[[float, str], None]
"""progress(fraction in [0, 1], stage name). The worker may raise from it to cancel the job."""


@dataclass(frozen=True)
class Source:
    """What produced the model a technique reads: the job that wrote it, or in a pipeline the
    step before. Exporters record it (export.mlflow); other techniques ignore it."""

    technique: str
    params: Mapping[str, Any]
    report: Mapping[str, Any] | None
    job_id: str | None = None
    # The report as the API's report.html shows it, when the worker rendered it (the engine
    # cannot: the page lives in app.reports); see Context.render_report for pipeline steps.
    report_html: str | None = None


@dataclass
class Context:
    """Everything a technique run sees. Paths are local files; the worker fetched them."""

    model_path: Path
    params: Params
    workdir: Path
    device: Device = "cpu"
    dataset_path: Path | None = None
    progress: ProgressFn = field(default=lambda fraction, stage: None)
    # Other models the params name by id (see Technique.model_params), resolved to local files.
    models: Mapping[str, Path] = field(default_factory=dict)
    # The job model's parent (the model it was produced from), when it has one.
    parent_path: Path | None = None
    # The job model's id, for reports that name models (compare); None outside the service.
    model_id: str | None = None
    # Deadline of each native step (see app.engine.runtime.isolate): past it the step is killed.
    native_step_timeout_s: float = DEFAULT_NATIVE_STEP_TIMEOUT_S
    # What produced model_path (set by the worker for techniques with ``needs_source``, and by
    # the pipeline for every step after the first).
    source: Source | None = None
    # Renders a report as the API's report.html page; the worker passes app.reports' renderer.
    render_report: Callable[[Source], str] | None = None
    # Whether user-given URLs the worker fetches (export.mlflow's tracking_uri) may resolve to
    # loopback, private or link-local addresses; the worker passes LATHE_EXPORT_ALLOW_PRIVATE.
    allow_private_urls: bool = False


@dataclass
class Result:
    report: dict[str, Any]
    output_path: Path | None = None  # a new ONNX model written under ctx.workdir, if any
    # Set by pipeline.run on a pipeline's last result: the job's input vs its final output.
    end_to_end: dict[str, Any] | None = None


class Technique:
    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[Params]]
    devices: ClassVar[tuple[Device, ...]] = ("cpu", "gpu")
    needs_dataset: ClassVar[bool] = False
    produces_model: ClassVar[bool] = False
    # Names of params fields holding model ids (a str, or a list of str). The API checks the
    # tenant owns each before queueing; the worker hands their files over in ``ctx.models``.
    model_params: ClassVar[tuple[str, ...]] = ()
    # False for a technique that never runs the model (an exporter): as the first step of a job
    # the model is passed on byte for byte, not opened in onnxruntime or normalised first.
    opens_model: ClassVar[bool] = True
    # True for a technique that reads ``ctx.source`` (the job that produced its input model):
    # the worker loads that job's params and report for it.
    needs_source: ClassVar[bool] = False

    @classmethod
    def trains_on_dataset(cls, params: Params) -> bool:
        """Whether a run with ``params`` trains on the job's dataset (a pipeline's end-to-end
        accuracy on that dataset is then optimistic, and its report says so)."""
        return False

    def run(self, ctx: Context) -> Result:  # pragma: no cover - interface
        raise NotImplementedError

    def params_of(self, ctx: Context) -> Params:
        """ctx.params as this technique's Params (callers may pass a plain dict)."""
        return ctx.params if isinstance(ctx.params, self.Params) else self.Params.model_validate(ctx.params)


REGISTRY: dict[str, type[Technique]] = {}
"""Every registered technique by name; read it through ``app.engine.catalog``, which imports the
technique modules first."""


def register(cls: type[Technique]) -> type[Technique]:
    if cls.name in REGISTRY:
        raise ValueError(f"technique {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
