"""``GET /metrics`` in Prometheus' text format, right with several API processes and with
workers on other hosts.

- Jobs (by technique and final status, durations, states, queue depth) are read from the
  database at scrape time: it is what every API process and every worker, wherever it runs,
  writes to, so any API process answers for all of them, and a restart loses nothing.
- HTTP request durations are counted by the process that served the request. With
  ``lathe api --processes N`` the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a folder of the
  data directory, emptied at start, and a scrape of any process sums every process's files.

Labels carry route templates (``/v1/jobs/{job_id}``), methods, status codes, techniques,
states and queue names: never a tenant, a key or an id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import Float, case, cast, func, literal_column, select
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import transaction
from app.jobs.schemas import TERMINAL
from app.queue import QUEUES
from app.records import JobRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
STATES = ("queued", "running", *TERMINAL)

HTTP_SECONDS = Histogram(
    "lathe_http_request_duration_seconds", "HTTP requests by route template, method and status code.",
    ["route", "method", "status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class HttpMetricsMiddleware:
    """Times each request to the end of its response; labels it with the matched route's
    template (``unmatched`` for a path no route knows, so scanners can't grow the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template != "/metrics":
                HTTP_SECONDS.labels(template, scope["method"], str(status[0])).observe(time.perf_counter() - started)


def _seconds(dialect: str, start: Any, end: Any) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * literal_column("86400.0")


class JobCollector:
    """Job metrics from the database, collected at scrape time."""

    def __init__(self, maker: sessionmaker) -> None:
        self.maker = maker

    def collect(self) -> Iterable[Any]:
        with transaction(self.maker) as s:
            by_state = dict(s.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status)).all())
            ended = s.execute(select(JobRecord.technique, JobRecord.status, func.count())
                              .where(JobRecord.status.in_(TERMINAL))
                              .group_by(JobRecord.technique, JobRecord.status)).all()
            queued = dict(s.execute(select(JobRecord.device, func.count()).where(JobRecord.status == "queued")
                                    .group_by(JobRecord.device)).all())
            took = cast(_seconds(s.get_bind().dialect.name, JobRecord.started_at, JobRecord.finished_at), Float)
            columns = [func.sum(case((took <= b, 1), else_=0)) for b in JOB_BUCKETS]
            durations = s.execute(select(JobRecord.technique, func.count(), func.coalesce(func.sum(took), 0.0), *columns)
                                  .where(JobRecord.status.in_(("succeeded", "failed")),
                                         JobRecord.started_at.is_not(None), JobRecord.finished_at.is_not(None))
                                  .group_by(JobRecord.technique)).all()
        states = GaugeMetricFamily("lathe_jobs", "Jobs in each state now.", labels=["state"])
        for state in STATES:
            states.add_metric([state], by_state.get(state, 0))
        yield states
        finished = CounterMetricFamily("lathe_jobs_finished", "Jobs that ended, by technique and final status.",
                                       labels=["technique", "status"])
        for technique, status, n in ended:
            finished.add_metric([technique, status], n)
        yield finished
        depth = GaugeMetricFamily("lathe_queue_depth", "Jobs waiting for a worker, by queue.", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], queued.get(queue, 0))
        yield depth
        hist = HistogramMetricFamily("lathe_job_duration_seconds",
                                     "Run time of jobs that succeeded or failed (start to end), by technique.",
                                     labels=["technique"])
        for technique, count, total, *cumulative in durations:
            buckets = [(str(b), int(c or 0)) for b, c in zip(JOB_BUCKETS, cumulative)] + [("+Inf", int(count))]
            hist.add_metric([technique], buckets, float(total or 0.0))
        yield hist


def render(maker: sessionmaker) -> tuple[bytes, str]:
    """The scrape: this process's (or every API process's) HTTP metrics and the job metrics."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Local())
    registry.register(JobCollector(maker))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Local:
    """The single-process metrics of this module (not the default registry's process/GC ones)."""

    def collect(self) -> Iterable[Any]:
        return HTTP_SECONDS.collect()


def prepare_multiprocess(folder: Any) -> None:
    """Before the API processes start: an empty folder for their metric files, in the environment
    they inherit (files of a previous run would be summed in)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def install(app: Any) -> None:
    """The middleware and the ``GET /metrics`` route (no key: it names no tenant)."""
    app.add_middleware(HttpMetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        body, media_type = await run_in_threadpool(render, request.app.state.sessionmaker)
        return Response(body, media_type=media_type)
