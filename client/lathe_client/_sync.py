"""``Lathe``: the blocking client. Every method runs one ``_core`` operation on httpx.Client."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from lathe_client import _core
from lathe_client._core import Op, ident
from lathe_client._transport import run_sync
from lathe_client.errors import WaitTimeoutError
from lathe_client.types import Dataset, JobState, JobStatus, Model, Page, Step, Technique

T = TypeVar("T")
PathLike = str | os.PathLike[str]
StepLike = Step | dict[str, Any] | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Job(JobState):
    """A job as last seen, with the calls that act on it."""

    _lathe: Lathe | None = field(default=None, repr=False, compare=False)

    def _client(self) -> Lathe:
        assert self._lathe is not None, "a Job made by hand has no client"
        return self._lathe

    def refresh(self) -> Job:
        return self._client().jobs.get(self.id)

    def wait(self, timeout: float | None = None, *, progress: bool | None = None,
             on_update: Callable[[Job], None] | None = None) -> Job:
        """Follow the job until it ends (see ``Jobs.wait``); returns the ended job."""
        return self._client().jobs.wait(self, timeout, progress=progress, on_update=on_update)

    def cancel(self) -> Job:
        return self._client().jobs.cancel(self.id)

    def report(self) -> dict[str, Any]:
        return self._client().jobs.report(self.id)

    def report_html(self) -> str:
        return self._client().jobs.report_html(self.id)

    def download(self, dest: PathLike) -> Path:
        """Download the job's output model (sha256 verified)."""
        if not self.output_model_id:
            raise ValueError(f"job {self.id} has no output model (status {self.status})")
        return self._client().models.download(self.output_model_id, dest)


class Pager(Generic[T]):
    """A list endpoint: iterate it for every item, newest first, or ``.pages()`` for each page."""

    def __init__(self, lathe: Lathe, path: str, params: dict[str, Any], convert: Callable[[dict[str, Any]], T]) -> None:
        self._lathe, self._path, self._params, self._convert = lathe, path, params, convert

    def pages(self) -> Iterator[Page[T]]:
        params = dict(self._params)
        while True:
            page = self._lathe._run(_core.page(self._path, params, self._convert))
            yield page
            if not page.next_cursor:
                return
            params["cursor"] = page.next_cursor

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items


class _Resource:
    def __init__(self, lathe: Lathe) -> None:
        self._lathe = lathe
        self._run = lathe._run


class Models(_Resource):
    def upload(self, file: PathLike, name: str | None = None, *, idempotency_key: str | None = None) -> Model:
        """Upload an ONNX, .pt2 or Keras file (the format is detected by content)."""
        return self._run(_core.mapped(_core.upload("/v1/models", file, name, idempotency_key), Model.from_json))

    def get(self, model: str | Model) -> Model:
        return self._run(_core.mapped(_core.get_json(f"/v1/models/{ident(model)}"), Model.from_json))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Pager[Model]:
        return Pager(self._lathe, "/v1/models", {"limit": limit, "cursor": cursor}, Model.from_json)

    def download(self, model: str | Model, dest: PathLike) -> Path:
        """Stream the file to ``dest`` (a folder: the model's name); its sha256 is checked."""
        return self._run(_core.download("models", ident(model), dest))

    def lineage(self, model: str | Model) -> dict[str, Any]:
        return self._run(_core.get_json(f"/v1/models/{ident(model)}/lineage"))

    def delete(self, model: str | Model) -> None:
        self._run(_core.delete(f"/v1/models/{ident(model)}"))


class Datasets(_Resource):
    def upload(self, file: PathLike, name: str | None = None, *, idempotency_key: str | None = None) -> Dataset:
        """Upload an .npz whose arrays are named after the model's inputs (plus ``labels``)."""
        return self._run(_core.mapped(_core.upload("/v1/datasets", file, name, idempotency_key), Dataset.from_json))

    def get(self, dataset: str | Dataset) -> Dataset:
        return self._run(_core.mapped(_core.get_json(f"/v1/datasets/{ident(dataset)}"), Dataset.from_json))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Pager[Dataset]:
        return Pager(self._lathe, "/v1/datasets", {"limit": limit, "cursor": cursor}, Dataset.from_json)

    def download(self, dataset: str | Dataset, dest: PathLike) -> Path:
        return self._run(_core.download("datasets", ident(dataset), dest))

    def delete(self, dataset: str | Dataset) -> None:
        self._run(_core.delete(f"/v1/datasets/{ident(dataset)}"))


class Techniques(_Resource):
    def list(self) -> builtins.list[Technique]:
        return self._run(_core.mapped(_core.get_json("/v1/techniques"),
                                      lambda body: [Technique.from_json(t) for t in body["items"]]))


class Jobs(_Resource):
    def submit(self, model: str | Model, technique: str | None = None, params: dict[str, Any] | None = None, *,
               dataset_id: str | None = None, steps: Sequence[StepLike] | None = None, device: str = "cpu",
               idempotency_key: str | None = None) -> Job:
        """Queue one technique, or a pipeline (``steps``), on a model. Params are checked at once."""
        body = _core.job_body(ident(model), technique, params, dataset_id, steps, device)
        return self._run(_core.mapped(_core.submit(body, idempotency_key), self._lathe._job))

    def get(self, job: str | JobState) -> Job:
        return self._run(_core.mapped(_core.get_json(f"/v1/jobs/{ident(job)}"), self._lathe._job))

    def list(self, *, status: JobStatus | None = None, model_id: str | None = None, technique: str | None = None,
             limit: int = 50, cursor: str | None = None) -> Pager[Job]:
        params = {"status": status, "model_id": model_id, "technique": technique, "limit": limit, "cursor": cursor}
        return Pager(self._lathe, "/v1/jobs", params, self._lathe._job)

    def cancel(self, job: str | JobState) -> Job:
        return self._run(_core.mapped(_core.post_json(f"/v1/jobs/{ident(job)}/cancel"), self._lathe._job))

    def wait(self, job: str | JobState, timeout: float | None = None, *, progress: bool | None = None,
             on_update: Callable[[Job], None] | None = None) -> Job:
        """Follow the job's event stream until it ends (polling on a service without one).

        ``timeout`` (seconds; None: no limit) raises ``WaitTimeoutError`` carrying the last
        state; ``progress`` draws a line on stderr (default: when stderr is a terminal)."""
        current = job.raw if isinstance(job, JobState) else self.get(job).raw
        hook = None if on_update is None else (lambda d: on_update(self._lathe._job(d)))
        try:
            return self._lathe._job(self._run(_core.follow(current, timeout, progress, hook)))
        except WaitTimeoutError as exc:
            exc.job = self._lathe._job(exc.job)
            raise

    def report(self, job: str | JobState) -> dict[str, Any]:
        """The report (JSON) of an ended job; ``ConflictError`` while it has none."""
        return self._run(_core.get_json(f"/v1/jobs/{ident(job)}/report"))

    def report_html(self, job: str | JobState) -> str:
        return self._run(_core.report_html(ident(job)))


class Lathe:
    """The Lathe service, blocking. ``url`` and ``api_key`` default to LATHE_URL and LATHE_API_KEY.

    Use it as a context manager, or call ``close()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http_client: httpx.Client | None = None) -> None:
        self.url, headers = _core.settings(url, api_key)
        self._http = http_client or httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.models = Models(self)
        self.datasets = Datasets(self)
        self.techniques = Techniques(self)
        self.jobs = Jobs(self)

    def _run(self, op: Op[T]) -> T:
        return run_sync(self._http, op)

    def _job(self, body: dict[str, Any]) -> Job:
        return Job(**JobState.fields(body), _lathe=self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Lathe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
