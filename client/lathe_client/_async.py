"""``AsyncLathe``: ``Lathe`` with ``await``. The same ``_core`` operations, run on httpx.AsyncClient."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from lathe_client import _core
from lathe_client._core import Op, ident
from lathe_client._sync import PathLike, StepLike
from lathe_client._transport import run_async
from lathe_client.errors import WaitTimeoutError
from lathe_client.types import Dataset, JobState, JobStatus, Model, Page, Technique

T = TypeVar("T")


@dataclass(frozen=True)
class AsyncJob(JobState):
    """A job as last seen, with the calls that act on it (awaitable)."""

    _lathe: AsyncLathe | None = field(default=None, repr=False, compare=False)

    def _client(self) -> AsyncLathe:
        assert self._lathe is not None, "a Job made by hand has no client"
        return self._lathe

    async def refresh(self) -> AsyncJob:
        return await self._client().jobs.get(self.id)

    async def wait(self, timeout: float | None = None, *, progress: bool | None = None,
                   on_update: Callable[[AsyncJob], None] | None = None) -> AsyncJob:
        return await self._client().jobs.wait(self, timeout, progress=progress, on_update=on_update)

    async def cancel(self) -> AsyncJob:
        return await self._client().jobs.cancel(self.id)

    async def report(self) -> dict[str, Any]:
        return await self._client().jobs.report(self.id)

    async def report_html(self) -> str:
        return await self._client().jobs.report_html(self.id)

    async def download(self, dest: PathLike) -> Path:
        if not self.output_model_id:
            raise ValueError(f"job {self.id} has no output model (status {self.status})")
        return await self._client().models.download(self.output_model_id, dest)


class AsyncPager(Generic[T]):
    """``async for`` over every item, newest first, or over ``.pages()``."""

    def __init__(self, lathe: AsyncLathe, path: str, params: dict[str, Any],
                 convert: Callable[[dict[str, Any]], T]) -> None:
        self._lathe, self._path, self._params, self._convert = lathe, path, params, convert

    async def pages(self) -> AsyncIterator[Page[T]]:
        params = dict(self._params)
        while True:
            page = await self._lathe._run(_core.page(self._path, params, self._convert))
            yield page
            if not page.next_cursor:
                return
            params["cursor"] = page.next_cursor

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item


class _Resource:
    def __init__(self, lathe: AsyncLathe) -> None:
        self._lathe = lathe
        self._run = lathe._run


class AsyncModels(_Resource):
    async def upload(self, file: PathLike, name: str | None = None, *, idempotency_key: str | None = None) -> Model:
        return await self._run(_core.mapped(_core.upload("/v1/models", file, name, idempotency_key), Model.from_json))

    async def get(self, model: str | Model) -> Model:
        return await self._run(_core.mapped(_core.get_json(f"/v1/models/{ident(model)}"), Model.from_json))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> AsyncPager[Model]:
        return AsyncPager(self._lathe, "/v1/models", {"limit": limit, "cursor": cursor}, Model.from_json)

    async def download(self, model: str | Model, dest: PathLike) -> Path:
        return await self._run(_core.download("models", ident(model), dest))

    async def lineage(self, model: str | Model) -> dict[str, Any]:
        return await self._run(_core.get_json(f"/v1/models/{ident(model)}/lineage"))

    async def delete(self, model: str | Model) -> None:
        await self._run(_core.delete(f"/v1/models/{ident(model)}"))


class AsyncDatasets(_Resource):
    async def upload(self, file: PathLike, name: str | None = None, *, idempotency_key: str | None = None) -> Dataset:
        return await self._run(_core.mapped(_core.upload("/v1/datasets", file, name, idempotency_key),
                                            Dataset.from_json))

    async def get(self, dataset: str | Dataset) -> Dataset:
        return await self._run(_core.mapped(_core.get_json(f"/v1/datasets/{ident(dataset)}"), Dataset.from_json))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> AsyncPager[Dataset]:
        return AsyncPager(self._lathe, "/v1/datasets", {"limit": limit, "cursor": cursor}, Dataset.from_json)

    async def download(self, dataset: str | Dataset, dest: PathLike) -> Path:
        return await self._run(_core.download("datasets", ident(dataset), dest))

    async def delete(self, dataset: str | Dataset) -> None:
        await self._run(_core.delete(f"/v1/datasets/{ident(dataset)}"))


class AsyncTechniques(_Resource):
    async def list(self) -> builtins.list[Technique]:
        return await self._run(_core.mapped(_core.get_json("/v1/techniques"),
                                            lambda body: [Technique.from_json(t) for t in body["items"]]))


class AsyncJobs(_Resource):
    async def submit(self, model: str | Model, technique: str | None = None, params: dict[str, Any] | None = None, *,
                     dataset_id: str | None = None, steps: Sequence[StepLike] | None = None, device: str = "cpu",
                     idempotency_key: str | None = None) -> AsyncJob:
        body = _core.job_body(ident(model), technique, params, dataset_id, steps, device)
        return await self._run(_core.mapped(_core.submit(body, idempotency_key), self._lathe._job))

    async def get(self, job: str | JobState) -> AsyncJob:
        return await self._run(_core.mapped(_core.get_json(f"/v1/jobs/{ident(job)}"), self._lathe._job))

    def list(self, *, status: JobStatus | None = None, model_id: str | None = None, technique: str | None = None,
             limit: int = 50, cursor: str | None = None) -> AsyncPager[AsyncJob]:
        params = {"status": status, "model_id": model_id, "technique": technique, "limit": limit, "cursor": cursor}
        return AsyncPager(self._lathe, "/v1/jobs", params, self._lathe._job)

    async def cancel(self, job: str | JobState) -> AsyncJob:
        return await self._run(_core.mapped(_core.post_json(f"/v1/jobs/{ident(job)}/cancel"), self._lathe._job))

    async def wait(self, job: str | JobState, timeout: float | None = None, *, progress: bool | None = None,
                   on_update: Callable[[AsyncJob], None] | None = None) -> AsyncJob:
        current = job.raw if isinstance(job, JobState) else (await self.get(job)).raw
        hook = None if on_update is None else (lambda d: on_update(self._lathe._job(d)))
        try:
            return self._lathe._job(await self._run(_core.follow(current, timeout, progress, hook)))
        except WaitTimeoutError as exc:
            exc.job = self._lathe._job(exc.job)
            raise

    async def report(self, job: str | JobState) -> dict[str, Any]:
        return await self._run(_core.get_json(f"/v1/jobs/{ident(job)}/report"))

    async def report_html(self, job: str | JobState) -> str:
        return await self._run(_core.report_html(ident(job)))


class AsyncLathe:
    """The Lathe service, with ``await``. Use ``async with``, or ``await aclose()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 http_client: httpx.AsyncClient | None = None) -> None:
        self.url, headers = _core.settings(url, api_key)
        self._http = http_client or httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self.models = AsyncModels(self)
        self.datasets = AsyncDatasets(self)
        self.techniques = AsyncTechniques(self)
        self.jobs = AsyncJobs(self)

    async def _run(self, op: Op[T]) -> T:
        return await run_async(self._http, op)

    def _job(self, body: dict[str, Any]) -> AsyncJob:
        return AsyncJob(**JobState.fields(body), _lathe=self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLathe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
