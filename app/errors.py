"""One domain error tree, one status table, one handler rendering RFC 9457 problem+json.

A problem's ``type`` is ``urn:lathe:problem:<slug>``, the slug snake_case like every error
identifier the API returns (job error types: app.jobs.errors)."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.headers import SECURITY_HEADERS
from app.store import StoreUnavailable

PROBLEM = "application/problem+json"


class LatheError(Exception):
    slug = "error"
    title = "Error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


class NotFound(LatheError):
    slug, title = "not_found", "Not found"


class Unauthorized(LatheError):
    slug, title = "unauthorized", "Missing or invalid API key"


class InvalidInput(LatheError):
    slug, title = "invalid_input", "Invalid input"


class IdempotencyKeyReused(InvalidInput):
    slug, title = "idempotency_key_reused", "Idempotency-Key reused for a different request"


class UnsupportedFormat(LatheError):
    slug, title = "unsupported_format", "Unsupported file format"


class InvalidModel(LatheError):
    slug, title = "invalid_model", "Model file rejected"


class InvalidDataset(LatheError):
    slug, title = "invalid_dataset", "Dataset file rejected"


class PayloadTooLarge(LatheError):
    slug, title = "payload_too_large", "Upload too large"


class Conflict(LatheError):
    slug, title = "conflict", "Conflict with the resource's current state"


class Gone(LatheError):
    slug, title = "gone", "The resource was deleted"


class Unavailable(LatheError):
    slug, title = "unavailable", "A dependency is unavailable"


class TooManyRequests(LatheError):
    slug, title = "too_many_requests", "Too many requests"


class RangeNotSatisfiable(LatheError):
    slug, title = "range_not_satisfiable", "Range not satisfiable"


STATUS: dict[type[LatheError], int] = {
    NotFound: 404,
    Unauthorized: 401,
    InvalidInput: 422,
    UnsupportedFormat: 415,
    InvalidModel: 422,
    InvalidDataset: 422,
    PayloadTooLarge: 413,
    Conflict: 409,
    Gone: 410,
    Unavailable: 503,
    TooManyRequests: 429,
    RangeNotSatisfiable: 416,
}


def problem(status: int, slug: str, title: str, detail: str, instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": f"urn:lathe:problem:{slug}", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _status_for(exc: LatheError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _without_server_paths(request: Request, detail: str) -> str:
    settings = getattr(request.app.state, "settings", None)
    return detail if settings is None else settings.without_server_paths(detail)


def install(app: FastAPI) -> None:
    @app.exception_handler(LatheError)
    async def _lathe(request: Request, exc: LatheError) -> JSONResponse:
        status = _status_for(exc)
        headers = dict(exc.headers)
        if status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return problem(status, exc.slug, exc.title, _without_server_paths(request, exc.detail), request.url.path,
                       headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem(422, "validation_error", "Request validation failed",
                       f"{where}: {first['msg']}", request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        slug = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
        return problem(exc.status_code, slug, phrase, str(exc.detail), request.url.path, dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # The pool pre-pings and reconnects: once the database is back, the next request works.
        return problem(503, "database_unavailable", "Database unavailable",
                       "The database is unreachable; retry shortly.", request.url.path, {"Retry-After": "5"})

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        # Wrong endpoint or credentials, a missing bucket: the message names which (never a secret).
        return problem(503, "store_unavailable", "Artifact store unavailable", str(exc), request.url.path,
                       {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("lathe.api").exception("unhandled error on %s", request.url.path)
        # Rendered outside every middleware (Starlette's ServerErrorMiddleware): add them here.
        return problem(500, "internal_error", "Internal server error",
                       "The server failed to handle this request; it has been logged.", request.url.path,
                       SECURITY_HEADERS)
