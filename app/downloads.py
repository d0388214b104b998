"""Streamed artifact downloads, one path for every store: ETag is the sha256, If-None-Match answers
304, Range (one or several, If-Range) is honoured by Starlette's FileResponse logic, reading
through the store's seekable reader (a file, or ranged GetObjects on S3); a bad Range is a 416
problem+json."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Request, Response
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable as _Unsatisfiable

from app.errors import NotFound, RangeNotSatisfiable
from app.store import Reader, Store


RANGE_ERROR = {416: {"description": "The `Range` is invalid or past the end (problem+json, "
                             "`Content-Range: bytes */size`)."}}


class _AsyncReader:
    """The store's blocking reader, in a worker thread: the shape FileResponse reads from."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    async def seek(self, offset: int) -> None:
        await anyio.to_thread.run_sync(self.reader.seek, offset)

    async def read(self, size: int) -> bytes:
        return await anyio.to_thread.run_sync(self.reader.read, size)


class _Download(FileResponse):
    def __init__(self, store: Store, uri: str, size: int, mtime: float, **kw) -> None:
        # A regular file's stat: FileResponse sets Content-Length and Last-Modified from it.
        st = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, int(mtime), int(mtime), int(mtime)))
        super().__init__(uri, stat_result=st, **kw)
        self.store, self.uri = store, uri

    async def __call__(self, scope, receive, send) -> None:
        # No ASGI "pathsend": the URI is not a path on this host.
        scope = {**scope, "extensions": {k: v for k, v in scope.get("extensions", {}).items()
                                         if k != "http.response.pathsend"}}
        await super().__call__(scope, receive, send)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[_AsyncReader]:
        reader = await anyio.to_thread.run_sync(self.store.open_reader, self.uri)
        try:
            yield _AsyncReader(reader)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(reader.close)

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # RFC 9110 14.2: a Range in a unit the server does not know is ignored (the whole file).
        if http_range.partition("=")[0].strip().lower() != "bytes":
            return []
        return super()._parse_range_header(http_range, file_size)


def file_response(request: Request, store: Store, uri: str, sha256: str, filename: str, media_type: str) -> Response:
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    found = store.stat(uri)
    if found is None:
        raise NotFound("The artifact is missing from the store.")
    # The name is the user's display name: a path separator in it must not reach a client's disk.
    safe_name = filename.replace("/", "_").replace("\\", "_")
    response = _Download(store, uri, found.size, found.mtime, media_type=media_type, filename=safe_name,
                         headers={"ETag": etag})
    _check_range(request, response, found.size)
    return response


def _check_range(request: Request, response: _Download, size: int) -> None:
    """Refuse a bad Range here, as problem+json; FileResponse would answer it in text/plain.

    A Range that If-Range does not match is ignored (the whole file), as FileResponse does."""
    http_range, if_range = request.headers.get("range"), request.headers.get("if-range")
    if http_range is None or (if_range is not None and not response._should_use_range(if_range)):
        return
    try:
        response._parse_range_header(http_range, size)
    except (MalformedRangeHeader, _Unsatisfiable):
        # RFC 9110 14.2: invalid or unsatisfiable byte ranges are both answered 416.
        raise RangeNotSatisfiable(f"The range {http_range[:100]!r} is not satisfiable for this {size}-byte file.",
                                  headers={"Content-Range": f"bytes */{size}"}) from None
