"""Logging for every Lathe process: the API, uvicorn, the workers and Celery.

``LATHE_LOG_FORMAT=json`` makes every line one JSON object: ``time``, ``level``, ``logger``,
``message``, and ``request_id`` / ``job_id`` / ``tenant`` / ``technique`` where they apply
(context variables: the request's, set by ``RequestIdMiddleware`` and the key check; the job's,
set by the worker while it runs one). ``text`` (the default) is the same, for people.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELDS = ("request_id", "job_id", "tenant", "technique")
_context: dict[str, ContextVar[str | None]] = {name: ContextVar(f"lathe_{name}", default=None) for name in FIELDS}
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_configured: list[str] = []


def bind(**values: str | None) -> None:
    """Attach these to every line logged from this context on (a request, a job)."""
    for name, value in values.items():
        _context[name].set(value)


@contextmanager
def scope() -> Iterator[None]:
    """Whatever is bound inside is unbound on exit (a worker runs many jobs in one thread)."""
    tokens = {name: var.set(var.get()) for name, var in _context.items()}
    try:
        yield
    finally:
        for name, token in tokens.items():
            _context[name].reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{n}={v}" for n in FIELDS if (v := getattr(record, n, None)) is not None)
        text = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{text} [{context}]" if context else text
        return f"{text}\n{self.formatException(record.exc_info)}" if record.exc_info else text


def configure(log_format: str, level: str) -> None:
    """One handler on the root logger, on stderr; every library logger (uvicorn's, Celery's)
    propagates to it. Idempotent per format."""
    if _configured == [log_format]:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn() lines become log records, in the same format
    _configured[:] = [log_format]


def signal_safe_line(logger: str, message: str, stream: Any = None) -> None:
    """One JSON line written with a bare os.write: for what Celery prints from its signal
    handlers (``safe_say``), where taking the logging module's locks could deadlock."""
    import os

    line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "warning", "logger": logger,
            "message": str(message).strip()}
    os.write((stream or sys.__stderr__).fileno(), (json.dumps(line) + "\n").encode())


def uvicorn_config(level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: no handlers of its own; its records reach the root handler."""
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"handlers": [], "propagate": True, "level": level.upper()}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}


class RequestIdMiddleware:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one: bound to every log
    line of the request and sent back on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = sent if _SANE_ID.match(sent) else uuid.uuid4().hex
        bind(request_id=request_id, tenant=None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
