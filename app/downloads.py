"""Streamed artifact downloads: ETag is the sha256, Range is honoured (Starlette's FileResponse)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import FileResponse

from app.errors import NotFound


def file_response(request: Request, path: Path, sha256: str, filename: str, media_type: str) -> Response:
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    if not path.exists():
        raise NotFound("The artifact is missing from the store.")
    return FileResponse(path, media_type=media_type, filename=filename, headers={"ETag": etag})
