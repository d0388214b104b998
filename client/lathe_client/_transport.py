"""The two thin transports that run ``_core`` operations: httpx.Client and httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any, TypeVar

import httpx

from lathe_client._core import Op, Reply, Request, Sleep, Stream
from lathe_client.errors import ConnectionFailedError

T = TypeVar("T")


def _kwargs(request: Request, files: ExitStack) -> dict[str, Any]:
    kw: dict[str, Any] = {"params": request.params, "headers": request.headers}
    if request.json is not None:
        kw["json"] = request.json
    if request.data is not None:
        kw["data"] = request.data
    if request.files:
        kw["files"] = {k: (name, files.enter_context(path.open("rb")), "application/octet-stream")
                       for k, (name, path) in request.files.items()}
    if request.timeout is not None:
        kw["timeout"] = httpx.Timeout(10.0, read=request.timeout)
    return kw


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


def _failed(exc: httpx.RequestError, request: Request) -> ConnectionFailedError:
    return ConnectionFailedError(f"{request.method} {request.path}: {type(exc).__name__}: {exc}".rstrip(": "))


class _Steps:
    """Drives a generator: send the last result in, or throw the last connection failure in."""

    def __init__(self, op: Op[Any]) -> None:
        self.op = op
        self.result: Any = None
        self.error: ConnectionFailedError | None = None

    def next(self) -> tuple[bool, Any]:
        try:
            effect = self.op.throw(self.error) if self.error else self.op.send(self.result)
        except StopIteration as stop:
            return True, stop.value
        self.result, self.error = None, None
        return False, effect


def run_sync(http: httpx.Client, op: Op[T]) -> T:
    try:
        result: T = _run_sync(http, _Steps(op))
        return result
    finally:
        op.close()  # an interrupted operation cleans up now (partial download, progress line)


async def run_async(http: httpx.AsyncClient, op: Op[T]) -> T:
    try:
        result: T = await _run_async(http, _Steps(op))
        return result
    finally:
        op.close()


def _run_sync(http: httpx.Client, steps: _Steps) -> Any:
    while True:
        done, effect = steps.next()
        if done:
            return effect
        if isinstance(effect, Sleep):
            time.sleep(max(effect.seconds, 0.0))
            continue
        request = effect.request if isinstance(effect, Stream) else effect
        try:
            with ExitStack() as files:
                if isinstance(effect, Stream):
                    with http.stream(request.method, request.path, **_kwargs(request, files)) as r:
                        if not effect.consumer.open(r.status_code, _headers(r)):
                            steps.result = Reply(r.status_code, _headers(r), r.read())
                            continue
                        for chunk in r.iter_bytes():
                            if effect.consumer.feed(chunk):
                                break
                        steps.result = Reply(r.status_code, _headers(r), b"")
                else:
                    r = http.request(request.method, request.path, **_kwargs(request, files))
                    steps.result = Reply(r.status_code, _headers(r), r.content)
        except httpx.RequestError as exc:
            steps.error = _failed(exc, request)


async def _run_async(http: httpx.AsyncClient, steps: _Steps) -> Any:
    while True:
        done, effect = steps.next()
        if done:
            return effect
        if isinstance(effect, Sleep):
            await asyncio.sleep(max(effect.seconds, 0.0))
            continue
        request = effect.request if isinstance(effect, Stream) else effect
        try:
            with ExitStack() as files:
                if isinstance(effect, Stream):
                    async with http.stream(request.method, request.path, **_kwargs(request, files)) as r:
                        if not effect.consumer.open(r.status_code, _headers(r)):
                            steps.result = Reply(r.status_code, _headers(r), await r.aread())
                            continue
                        async for chunk in r.aiter_bytes():
                            if effect.consumer.feed(chunk):
                                break
                        steps.result = Reply(r.status_code, _headers(r), b"")
                else:
                    r = await http.request(request.method, request.path, **_kwargs(request, files))
                    steps.result = Reply(r.status_code, _headers(r), r.content)
        except httpx.RequestError as exc:
            steps.error = _failed(exc, request)
