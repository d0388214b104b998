"""A job's changes as they happen: the Server-Sent Events stream and the long-poll ``?wait=``.

Both read the job from the database in short transactions, every ``Settings.events_poll_s``:
the database is the one place every API process and every worker writes to, so this works with
any number of API processes, on both deployments, with no broker of its own. A state is the
job as ``GET /v1/jobs/{id}`` returns it; its fingerprint (a hash of that JSON) is the SSE event
id and the ETag, so a client resuming with ``Last-Event-ID`` (or long-polling with
``If-None-Match``) is sent a state only when it differs from the last one it saw. Heartbeats
are not part of the state: a running job that makes no progress sends only keep-alives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.jobs.schemas import TERMINAL, JobOut
from app.records import JobRecord
from app.repository import get_owned

MAX_WAIT_S = 60.0
PING_S = 15.0
MAX_STREAM_S = 3600.0  # then the stream ends; the client reconnects with Last-Event-ID


def snapshot(session: Session, tenant_id: str, job_id: str) -> dict[str, Any]:
    """The job as GET /v1/jobs/{id} shows it (raises NotFound for another tenant's job)."""
    return JobOut.model_validate(get_owned(session, JobRecord, tenant_id, job_id, "job")).model_dump(mode="json")


def fingerprint(state: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]


def etag(tag: str) -> str:
    return f'"{tag}"'


async def read(maker: sessionmaker, tenant_id: str, job_id: str) -> dict[str, Any]:
    """``snapshot`` in a short transaction of its own, off the event loop."""
    def load() -> dict[str, Any]:
        with transaction(maker) as session:
            return snapshot(session, tenant_id, job_id)

    return await run_in_threadpool(load)


async def wait_for_change(maker: sessionmaker, tenant_id: str, job_id: str, seen: str | None,
                          wait_s: float, poll_s: float) -> dict[str, Any]:
    """The job once its state differs from ``seen`` (the fingerprint the client holds; None: the
    state at the time of the request), once it has ended, or after ``wait_s``."""
    state = await read(maker, tenant_id, job_id)
    seen = seen or fingerprint(state)
    deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
    while fingerprint(state) == seen and state["status"] not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        state = await read(maker, tenant_id, job_id)
    return state


async def stream(maker: sessionmaker, tenant_id: str, job_id: str, last_event_id: str | None,
                 poll_s: float, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """``event: job`` at every change of the job (status, progress, stage...), ``event: end``
    with the ended job, ``: ping`` comments in between."""
    sent = last_event_id
    started = last_ping = time.monotonic()
    yield "retry: 1000\n\n"
    while time.monotonic() - started < MAX_STREAM_S:
        state = await read(maker, tenant_id, job_id)
        tag, ended = fingerprint(state), state["status"] in TERMINAL
        if ended or tag != sent:
            data = json.dumps(state, separators=(",", ":"))
            yield f"id: {tag}\nevent: {'end' if ended else 'job'}\ndata: {data}\n\n"
            sent, last_ping = tag, time.monotonic()
            if ended:
                return
        elif time.monotonic() - last_ping >= PING_S:
            yield ": ping\n\n"
            last_ping = time.monotonic()
        if await disconnected():
            return
        await asyncio.sleep(poll_s)
