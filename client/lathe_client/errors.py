"""One exception class per problem+json ``type`` the service answers, all under ``LatheError``.

The server names a problem ``urn:lathe:problem:<slug>``; ``raise_for_problem`` picks the class
whose ``slug`` matches. A type this release does not know yet (a newer server) is raised as the
class of its HTTP status (404 → ``NotFoundError``, 422 → ``InvalidInputError``, …) with the
server's own ``type`` kept, so ``except`` clauses written today still catch it.
"""

from __future__ import annotations

import json
from typing import Any

PROBLEM_PREFIX = "urn:lathe:problem:"


class LatheError(Exception):
    """Anything the service (or the way to it) refused. ``status`` is None for client-side errors."""

    slug = "error"

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None,
                 type: str | None = None, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.title = title or type_title(self.slug)
        self.type = type or f"{PROBLEM_PREFIX}{self.slug}"
        self.body: dict[str, Any] = body or {}
        self.headers: dict[str, str] = headers or {}

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}" if self.status is None else f"{self.status} {self.title}: {self.detail}"


def type_title(slug: str) -> str:
    return slug.replace("_", " ").capitalize()


# --- the service's problem types (app/errors.py, FastAPI's validation and HTTP errors) -------------

class NotFoundError(LatheError):
    slug = "not_found"


class UnauthorizedError(LatheError):
    slug = "unauthorized"


class InvalidInputError(LatheError):
    """A request the service understood and refused: unknown technique, params, missing dataset…

    ``errors`` lists each field (``loc``, ``msg``) when the service names them."""

    slug = "invalid_input"

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])


class ValidationError(InvalidInputError):
    """The request body or query did not match the API's schema (FastAPI's validation)."""

    slug = "validation_error"


class IdempotencyKeyReusedError(InvalidInputError):
    slug = "idempotency_key_reused"


class UnsupportedFormatError(LatheError):
    slug = "unsupported_format"


class InvalidModelError(LatheError):
    slug = "invalid_model"


class InvalidDatasetError(LatheError):
    slug = "invalid_dataset"


class PayloadTooLargeError(LatheError):
    slug = "payload_too_large"


class ConflictError(LatheError):
    slug = "conflict"


class GoneError(LatheError):
    slug = "gone"


class UnavailableError(LatheError):
    slug = "unavailable"

    @property
    def retry_after(self) -> float | None:
        return _seconds(self.headers.get("retry-after"))


class DatabaseUnavailableError(UnavailableError):
    slug = "database_unavailable"


class NotReadyError(UnavailableError):
    slug = "not_ready"


class TooManyRequestsError(LatheError):
    slug = "too_many_requests"

    @property
    def retry_after(self) -> float | None:
        return _seconds(self.headers.get("retry-after"))


class RangeNotSatisfiableError(LatheError):
    slug = "range_not_satisfiable"


class MethodNotAllowedError(LatheError):
    slug = "method_not_allowed"


class InternalServerError(LatheError):
    slug = "internal_error"


# --- raised by the client itself ----------------------------------------------------------------

class ConnectionFailedError(LatheError):
    """The service could not be reached, or the connection broke (after the client's retries)."""

    slug = "connection_failed"


class ChecksumMismatchError(LatheError):
    """A download's bytes do not hash to the sha256 the service recorded; nothing was kept."""

    slug = "checksum_mismatch"


class WaitTimeoutError(LatheError, TimeoutError):
    """``job.wait(timeout=…)`` ran out; ``job`` is the last state seen."""

    slug = "wait_timeout"

    def __init__(self, detail: str, job: Any = None) -> None:
        super().__init__(detail)
        self.job = job


class UnexpectedResponseError(LatheError):
    """An answer that is not the service's JSON (a proxy's error page, a truncated body)."""

    slug = "unexpected_response"


BY_SLUG: dict[str, type[LatheError]] = {
    cls.slug: cls for cls in (
        NotFoundError, UnauthorizedError, InvalidInputError, ValidationError, IdempotencyKeyReusedError,
        UnsupportedFormatError, InvalidModelError, InvalidDatasetError, PayloadTooLargeError, ConflictError,
        GoneError, UnavailableError, DatabaseUnavailableError, NotReadyError, TooManyRequestsError,
        RangeNotSatisfiableError, MethodNotAllowedError, InternalServerError)
}

BY_STATUS: dict[int, type[LatheError]] = {
    401: UnauthorizedError, 404: NotFoundError, 405: MethodNotAllowedError, 409: ConflictError, 410: GoneError,
    413: PayloadTooLargeError, 415: UnsupportedFormatError, 416: RangeNotSatisfiableError, 422: InvalidInputError,
    429: TooManyRequestsError, 500: InternalServerError, 503: UnavailableError,
}


def error_for(status: int, headers: dict[str, str], content: bytes) -> LatheError:
    """The exception for an error answer (status >= 400)."""
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        pass
    if not isinstance(body, dict):
        text = content.decode("utf-8", "replace").strip()[:300] or "(empty body)"
        cls = BY_STATUS.get(status, LatheError)
        return cls(f"HTTP {status}: {text}", status=status, title=f"HTTP {status}",
                   type="about:blank", headers=headers)
    type_ = str(body.get("type") or "about:blank")
    slug = type_[len(PROBLEM_PREFIX):] if type_.startswith(PROBLEM_PREFIX) else ""
    cls = BY_SLUG.get(slug) or BY_STATUS.get(status, LatheError)
    return cls(str(body.get("detail") or body.get("title") or f"HTTP {status}"), status=status,
               title=str(body.get("title") or type_title(slug or cls.slug)), type=type_, body=body, headers=headers)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
