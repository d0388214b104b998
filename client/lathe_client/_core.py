"""The client's logic without I/O: every API call is a generator of effects.

An operation yields ``Request`` (answered with a ``Reply``, or a ``ConnectionFailedError`` thrown
in), ``Stream`` (the body handed to a ``Consumer`` chunk by chunk) and ``Sleep``, and returns its
result. ``Lathe`` runs them with ``httpx.Client``, ``AsyncLathe`` with ``httpx.AsyncClient``
and ``await``: requests are built, retried, paged and parsed once, here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, Union

from lathe_client._sse import SSEDecoder
from lathe_client.errors import (ChecksumMismatchError, ConnectionFailedError, UnexpectedResponseError,
                                 WaitTimeoutError, error_for)
from lathe_client.types import TERMINAL, Page, Step

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
RETRIES = 3
POLL_MIN_S, POLL_MAX_S = 0.2, 2.0
LONG_POLL_S = 30
EVENTS_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive well within this
EVENTS_MAX_FAILURES = 8


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, Path]] | None = None  # opened by the transport, once per attempt
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the client's


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except ValueError:
            raise UnexpectedResponseError(f"HTTP {self.status}: not JSON: {self.content[:200]!r}",
                                          status=self.status) from None


class Consumer(Protocol):
    def open(self, status: int, headers: dict[str, str]) -> bool:
        """True to take the body chunk by chunk; False: the transport reads it into the Reply."""

    def feed(self, chunk: bytes) -> bool:
        """True to stop reading."""


@dataclass
class Stream:
    request: Request
    consumer: Consumer


@dataclass
class Sleep:
    seconds: float


Effect = Union[Request, Stream, Sleep]
Op = Generator[Effect, Any, T]


def settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """Base URL and headers from the arguments, else LATHE_URL / LATHE_API_KEY."""
    url = (url or os.environ.get("LATHE_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("LATHE_API_KEY")
    headers = {"Accept": "application/json", "User-Agent": "lathe-client"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return url, headers


# --- one request, retried ------------------------------------------------------------------------

def call(request: Request) -> Op[Reply]:
    """Send, retrying broken connections and 503s (POSTs carry an Idempotency-Key, so a retried
    upload or job is created once); an error answer raises its LatheError."""
    if request.method == "POST":
        request.headers.setdefault("Idempotency-Key", f"lathe-client-{uuid.uuid4().hex}")
    for attempt in range(RETRIES + 1):
        try:
            reply: Reply = yield request
        except ConnectionFailedError:
            if attempt == RETRIES:
                raise
            yield Sleep(0.25 * 2 ** attempt)
            continue
        if reply.status < 400:
            return reply
        error = error_for(reply.status, reply.headers, reply.content)
        retry_after = getattr(error, "retry_after", None)
        # 503: the database is briefly away; 409 on a retried POST: its first try is still in flight.
        in_flight = reply.status == 409 and attempt > 0 and request.method == "POST"
        if attempt < RETRIES and (reply.status == 503 or in_flight):
            yield Sleep(min(retry_after or 0.5 * 2 ** attempt, 5.0))
            continue
        raise error
    raise AssertionError("unreachable")


def get_json(path: str, params: dict[str, Any] | None = None) -> Op[Any]:
    return (yield from call(Request("GET", path, params=params))).json()


def post_json(path: str, body: Any = None) -> Op[Any]:
    return (yield from call(Request("POST", path, json=body))).json()


def delete(path: str) -> Op[None]:
    yield from call(Request("DELETE", path))


def upload(path: str, file: str | os.PathLike[str], name: str | None, idempotency_key: str | None) -> Op[Any]:
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    reply = yield from call(Request("POST", path, files={"file": (file.name, file)},
                                    data={"name": name} if name else None, headers=headers))
    return reply.json()


def page(path: str, params: dict[str, Any], convert: Callable[[dict[str, Any]], T]) -> Op[Page[T]]:
    body = yield from get_json(path, {k: v for k, v in params.items() if v is not None})
    return Page(items=[convert(item) for item in body.get("items") or []], next_cursor=body.get("next_cursor"))


def ident(resource: str | Any) -> str:
    """An id, or the id of a Model / Dataset / Job object."""
    return resource if isinstance(resource, str) else str(resource.id)


def job_body(model_id: str, technique: str | None, params: dict[str, Any] | None, dataset_id: str | None,
             steps: Sequence[Step | dict[str, Any] | tuple[str, dict[str, Any]]] | None, device: str) -> dict[str, Any]:
    if (technique is None) == (steps is None):
        raise ValueError("give either a technique or steps (a pipeline), not both")
    body: dict[str, Any] = {"model_id": model_id, "device": device}
    if technique is not None:
        body.update(technique=technique, params=dict(params or {}))
    else:
        body["steps"] = [_step(s) for s in steps or ()]
    if dataset_id is not None:
        body["dataset_id"] = dataset_id
    return body


def _step(step: Step | dict[str, Any] | tuple[str, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(step, Step):
        return {"technique": step.technique, "params": dict(step.params)}
    if isinstance(step, tuple):
        return {"technique": step[0], "params": dict(step[1])}
    return {"technique": step["technique"], "params": dict(step.get("params") or {})}


def submit(body: dict[str, Any], idempotency_key: str | None) -> Op[Any]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return (yield from call(Request("POST", "/v1/jobs", json=body, headers=headers))).json()


def report_html(job_id: str) -> Op[str]:
    reply = yield from call(Request("GET", f"/v1/jobs/{job_id}/report.html", headers={"Accept": "text/html"}))
    return reply.content.decode("utf-8")


# --- downloads -----------------------------------------------------------------------------------

class _FileSink:
    """Writes a download to a hidden file beside the destination while hashing it; a broken
    connection resumes with Range from what was written (If-Range: the file did not change)."""

    def __init__(self, dest: Path) -> None:
        self.part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None

    def open(self, status: int, headers: dict[str, str]) -> bool:
        if status == 206 and self.size:
            return True
        if status != 200:
            return False
        self.close()  # a whole file: start over
        self._file = self.part.open("wb")
        self.size, self._hash = 0, hashlib.sha256()
        return True

    def feed(self, chunk: bytes) -> bool:
        if self._file is None:
            self._file = self.part.open("ab")
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)
        return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def digest(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)


def download(kind: str, resource_id: str, dest: str | os.PathLike[str]) -> Op[Path]:
    """``GET /v1/{kind}/{id}/file`` streamed to ``dest`` (a folder: the service's file name),
    its sha256 checked against the record before the file takes its name."""
    record = yield from get_json(f"/v1/{kind}/{resource_id}")
    target = Path(dest)
    if target.is_dir():
        target = target / record["name"].replace("/", "_").replace("\\", "_")
    expected = record["sha256"]
    sink = _FileSink(target)
    try:
        for attempt in range(RETRIES + 1):
            headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
            if sink.size:
                headers.update({"Range": f"bytes={sink.size}-", "If-Range": f'"{expected}"'})
            try:
                reply = yield Stream(Request("GET", f"/v1/{kind}/{resource_id}/file", headers=headers), sink)
            except ConnectionFailedError:
                if attempt == RETRIES:
                    raise
                yield Sleep(0.25 * 2 ** attempt)
                continue
            if reply.status >= 400:
                raise error_for(reply.status, reply.headers, reply.content)
            break
        sink.close()
        if sink.digest() != expected:
            raise ChecksumMismatchError(f"{kind[:-1]} {resource_id}: downloaded {sink.size} bytes with sha256 "
                                        f"{sink.digest()}, the service recorded {expected}; nothing was kept.")
        os.replace(sink.part, target)
        return target
    finally:
        sink.discard()


# --- waiting for a job ---------------------------------------------------------------------------

class _JobEvents:
    """Consumes ``GET /v1/jobs/{id}/events``: ``event: job`` per change, ``event: end`` last."""

    def __init__(self, decoder: SSEDecoder, on_update: Callable[[dict[str, Any]], None]) -> None:
        self.decoder, self.on_update = decoder, on_update
        self.final: dict[str, Any] | None = None
        self.opened = self.received = False

    def open(self, status: int, headers: dict[str, str]) -> bool:
        self.opened = status == 200 and headers.get("content-type", "").startswith("text/event-stream")
        return self.opened

    def feed(self, chunk: bytes) -> bool:
        self.received = True
        for event in self.decoder.feed(chunk):
            if event.event not in ("job", "end") or not event.data:
                continue
            job = json.loads(event.data)
            self.on_update(job)
            if event.event == "end" or job.get("status") in TERMINAL:
                self.final = job
                return True
        return False


def wait(job: dict[str, Any], timeout: float | None, on_update: Callable[[dict[str, Any]], None]) -> Op[dict[str, Any]]:
    """Follow the job's event stream until it ends (reconnecting with Last-Event-ID); on a
    service without one (404), poll ``GET /v1/jobs/{id}``."""
    if job["status"] in TERMINAL:
        return job
    deadline = None if timeout is None else time.monotonic() + timeout
    latest = [job]

    def seen(j: dict[str, Any]) -> None:
        latest[0] = j
        on_update(j)

    decoder, failures = SSEDecoder(), 0
    while True:
        remaining = _remaining(deadline, latest[0])
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if decoder.last_id is not None:
            headers["Last-Event-ID"] = decoder.last_id
        events = _JobEvents(decoder, seen)
        request = Request("GET", f"/v1/jobs/{job['id']}/events", headers=headers,
                          timeout=min(EVENTS_READ_TIMEOUT_S, remaining))
        try:
            reply = yield Stream(request, events)
        except ConnectionFailedError:
            # A stream that opened and then went quiet past the read timeout is resumed, not counted.
            failures = 0 if events.opened else failures + 1
            if failures >= EVENTS_MAX_FAILURES:
                raise
            if _remaining(deadline, latest[0], raise_=False) > 0:
                yield Sleep(min(0.25 * 2 ** failures, 5.0, _remaining(deadline, latest[0])))
            continue
        if events.final is not None:
            return events.final
        if reply.status in (404, 405, 501) or (reply.status < 400 and not events.opened):
            return (yield from poll(latest[0], deadline, seen))  # a service without the event stream
        if reply.status >= 400 and reply.status != 503:  # 503: the database is briefly away
            raise error_for(reply.status, reply.headers, reply.content)
        failures = 0 if events.received else failures + 1
        if failures >= EVENTS_MAX_FAILURES:
            raise error_for(reply.status, reply.headers, reply.content) if reply.status >= 400 else \
                UnexpectedResponseError(f"GET {request.path}: the event stream keeps closing with no event")
        # The stream ended without the last event (an API process restarted): resume after a pause.
        pause = (decoder.retry_ms or 250) / 1000 if events.received else 0.25 * 2 ** failures
        yield Sleep(min(pause, 5.0, _remaining(deadline, latest[0])))


def poll(job: dict[str, Any], deadline: float | None, on_update: Callable[[dict[str, Any]], None]) -> Op[dict[str, Any]]:
    """``GET /v1/jobs/{id}`` with backoff (0.2 s to 2 s); ``?wait=`` lets a service that
    supports it answer as soon as the job changes (one that does not ignores it)."""
    delay, failures, etag = POLL_MIN_S, 0, None
    while True:
        started = time.monotonic()
        remaining = _remaining(deadline, job)
        params = {"wait": int(min(LONG_POLL_S, remaining))} if remaining >= 1 else None
        wait_s = params["wait"] if params else 0
        # With the ETag of the state held, a long-poll answers any change since, 304 if none.
        headers: dict[str, str] = {"If-None-Match": etag} if etag and params else {}
        try:
            reply = yield from call(Request("GET", f"/v1/jobs/{job['id']}", params=params, headers=headers,
                                            timeout=wait_s + 30.0))
        except ConnectionFailedError:
            failures += 1  # call() retried already: the service is away for a while (a restart?)
            if failures >= EVENTS_MAX_FAILURES:
                raise
            yield Sleep(min(POLL_MAX_S * failures, _remaining(deadline, job)))
            continue
        failures = 0
        etag = reply.headers.get("etag", etag)
        current = job if reply.status == 304 else reply.json()
        changed = {k: current.get(k) for k in ("status", "progress", "stage")} != \
                  {k: job.get(k) for k in ("status", "progress", "stage")}
        job = current
        if changed:
            on_update(job)
        if job["status"] in TERMINAL:
            return job
        delay = POLL_MIN_S if changed else min(POLL_MAX_S, delay * 1.5)
        pause = delay - (time.monotonic() - started)
        if pause > 0:
            yield Sleep(min(pause, _remaining(deadline, job)))


def _remaining(deadline: float | None, job: dict[str, Any], raise_: bool = True) -> float:
    if deadline is None:
        return float("inf")
    left = deadline - time.monotonic()
    if left <= 0 and raise_:
        raise WaitTimeoutError(f"job {job['id']} is still {job['status']} "
                               f"(progress {float(job.get('progress') or 0):.0%}) after the wait's timeout", job)
    return left


def follow(job: dict[str, Any], timeout: float | None, progress: bool | None,
           on_update: Callable[[dict[str, Any]], None] | None) -> Op[dict[str, Any]]:
    """``wait`` with the progress line on stderr (by default when stderr is a terminal)."""
    from lathe_client._progress import ProgressLine

    bar = ProgressLine() if (ProgressLine.enabled() if progress is None else progress) else None

    def update(j: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(j)
        if on_update is not None:
            on_update(j)

    try:
        if bar is not None and job["status"] not in TERMINAL:
            bar.update(job)
        return (yield from wait(job, timeout, update))
    finally:
        if bar is not None:
            bar.close()


def mapped(op: Op[Any], fn: Callable[[Any], T]) -> Op[T]:
    return fn((yield from op))
