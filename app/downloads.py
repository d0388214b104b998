"""Streamed artifact downloads: ETag is the sha256, Range is honoured (Starlette's FileResponse)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable as _Unsatisfiable

from app.errors import NotFound, RangeNotSatisfiable


RANGE_ERROR = {416: {"description": "The `Range` is invalid or past the end (problem+json, "
                             "`Content-Range: bytes */size`)."}}


class _Download(FileResponse):
    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # RFC 9110 14.2: a Range in a unit the server does not know is ignored (the whole file).
        if http_range.partition("=")[0].strip().lower() != "bytes":
            return []
        return super()._parse_range_header(http_range, file_size)


def file_response(request: Request, path: Path, sha256: str, filename: str, media_type: str) -> Response:
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    if not path.exists():
        raise NotFound("The artifact is missing from the store.")
    # The name is the user's display name: a path separator in it must not reach a client's disk.
    safe_name = filename.replace("/", "_").replace("\\", "_")
    response = _Download(path, media_type=media_type, filename=safe_name, headers={"ETag": etag})
    _check_range(request, response, path.stat().st_size)
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
