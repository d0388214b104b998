"""Run one job: load the row, fetch inputs from the store, run the engine's pipeline, store outputs.

Status changes go through app.jobs.transitions only. The engine never sees the database: it
gets local paths and a progress callback, which is also how cancellation reaches it. A guard
thread (workers.guard) heartbeats and enforces cancellation, memory and time limits.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from app import blobs
from app import logs
from app.db import make_engine, make_sessionmaker, transaction
from app.engine import pipeline
from app.engine.base import Context, Result, Source
from app.engine.errors import InvalidParams, TechniqueError
from app.jobs import transitions
from app.jobs.errors import ArtifactMissing, InvalidStoredParams, JobErrorType, ModelDeleted
from app.outputs import register_output
from app.records import DatasetRecord, JobRecord, ModelRecord
from app.settings import Settings
from app.store import StoreUnavailable, open_store
from workers.guard import JobGuard, JobStopped

log = logging.getLogger("lathe.worker")
PROGRESS_INTERVAL_S = 1.0
DB_RETRY_S = 300.0
T = TypeVar("T")


@cache
def _resources():
    settings = Settings()
    settings.ensure_dirs()
    return settings, make_sessionmaker(make_engine(settings.sqlalchemy_url)), open_store(settings)


def _db(sessions, fn: Callable, *args) -> T:
    """Run fn(session, *args) in a transaction, retrying while the database is unreachable:
    a result computed for minutes is not thrown away because PostgreSQL restarted."""
    delay, deadline = 0.5, time.monotonic() + DB_RETRY_S
    while True:
        try:
            with transaction(sessions) as s:
                return fn(s, *args)
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            log.warning("database unreachable; retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@dataclass
class Loaded:
    steps: list[pipeline.Step]
    ctx: Context  # the first step's context; later steps get copies with their own input
    model_name: str


def _claim(s, slot: str) -> str | None:
    """The job this message runs: the fairest queued job on the queue of the job it names (a
    message is a slot on its queue, see transitions.claim). None when that queue has none left."""
    named = s.get(JobRecord, slot)
    return transitions.claim(s, named.device) if named is not None else None


def _artifact(store, record, what: str) -> Path:
    """A local file for the engine: the stored file, or a verified copy of the S3 object."""
    try:
        return store.local_path(record.uri)
    except FileNotFoundError:
        raise ArtifactMissing(f"The file of {what} {record.id!r} is missing from the artifact store; upload it again "
                              "and queue a new job.") from None


def _load(s, job_id: str) -> Loaded:
    """Everything the claimed job needs, or a TechniqueError that fails it for good: a row that
    can't be loaded now never will be, so it must not go back to the queue."""
    job = s.get(JobRecord, job_id)
    logs.bind(technique=job.technique, tenant=job.tenant_id)
    # Outputs of an earlier attempt whose worker died were never reported: start clean.
    store = _resources()[2]
    for stale in s.query(ModelRecord).filter_by(job_id=job_id, tenant_id=job.tenant_id).all():
        s.delete(stale)
        blobs.release(s, store, stale.uri)
    model = s.get(ModelRecord, job.model_id) if job.model_id else None
    if model is None:
        raise ModelDeleted("The job's model was deleted before the job ran.")
    try:
        steps = pipeline.from_row(job.technique, job.params)
    except InvalidParams as exc:
        raise InvalidStoredParams(f"The job's stored params are not valid in this version of Lathe ({exc.detail}); "
                                  "queue a new job.") from None
    others = {}
    for other_id in pipeline.referenced_models(steps):
        other = s.get(ModelRecord, other_id)
        if other is None or other.tenant_id != job.tenant_id:
            raise ModelDeleted(f"Model {other_id!r} named in the params was deleted.")
        others[other_id] = _artifact(store, other, "model")
    dataset = s.get(DatasetRecord, job.dataset_id) if job.dataset_id else None
    parent = s.get(ModelRecord, model.parent_id) if model.parent_id else None
    settings = _resources()[0]
    ctx = Context(model_path=_artifact(store, model, "model"), params=steps[0].params, workdir=Path(),
                  device=job.device, dataset_path=_artifact(store, dataset, "dataset") if dataset else None,
                  models=others, parent_path=_artifact(store, parent, "parent model") if parent else None,
                  model_id=model.id, native_step_timeout_s=settings.native_step_timeout_s,
                  source=_source(s, model) if steps[0].technique.needs_source else None,
                  render_report=_render_step_report, allow_private_urls=settings.export_allow_private)
    return Loaded(steps, ctx, model.name)


def _source(s, model: ModelRecord) -> Source | None:
    """The job that produced ``model`` (its params as the API shows them, its report and
    report.html page), for a technique that records it (export.mlflow); None for an upload."""
    from app.jobs.page import report_page

    job = s.get(JobRecord, model.job_id) if model.job_id else None
    if job is None or job.tenant_id != model.tenant_id or not isinstance(job.report, dict):
        return None
    try:
        html = report_page(s, job, job.report)
    except Exception:  # noqa: BLE001 - the page is an attachment: the export goes on without it
        log.exception("report page of job %s could not be rendered", job.id)
        html = None
    return Source(job.technique, pipeline.public(job.technique, job.params), job.report, job.id, html)


def _render_step_report(source: Source) -> str:
    """A pipeline step's report as a page (the engine cannot render it: app.reports is the API's)."""
    from app.reports.render import render_report_html

    return render_report_html(dict(source.report or {}), job={"technique": source.technique, "status": "succeeded"},
                              lineage=None)


def _finish(s, job_id: str, loaded: Loaded, results: list[Result]) -> None:
    """Register every step's output model (each the child of the one before) and the report,
    in one transaction: a cancelled or failed job leaves no model behind."""
    job = s.get(JobRecord, job_id, with_for_update=True)
    if job is None or job.status != "running":
        return  # cancelled while finishing: keep no output
    store = _resources()[2]
    current = s.get(ModelRecord, job.model_id)
    stem = loaded.model_name
    for suffix in (".onnx", ".pt2", ".keras", ".h5"):
        stem = stem.removesuffix(suffix)
    output_ids: list[str | None] = []
    for step, result in zip(loaded.steps, results):
        if result.output_path is None:
            output_ids.append(None)
            continue
        stem = f"{stem}.{step.name}"
        current = register_output(s, store, current, job_id, result.output_path, f"{stem}.onnx")
        output_ids.append(current.id)
    report = pipeline.report(loaded.steps, results, loaded.ctx.model_id, output_ids)
    transitions.succeed(s, job_id, report, pipeline.last_output(output_ids))


def run_job(slot: str) -> None:
    """Run one job for a message; slot is the id of the job the message was sent for."""
    settings, sessions, _store = _resources()
    job_id = _db(sessions, _claim, slot)
    logs.bind(job_id=job_id)
    if job_id is None:
        log.info("message %s: no job queued on its queue (cancelled, finished, or run for another message)", slot)
        return
    # Claimed (running) in its own transaction: a job that fails to load is failed, never put back.
    try:
        loaded = _db(sessions, _load, job_id)
    except TechniqueError as exc:
        _db(sessions, transitions.fail, job_id, exc.type, exc.detail)
        return
    except Exception as exc:
        log.exception("job %s could not be loaded", job_id)
        why = f" ({exc})" if isinstance(exc, StoreUnavailable) else ""  # its message names the cause, no secret
        _db(sessions, transitions.fail, job_id, JobErrorType.INTERNAL_ERROR, f"Loading the job failed: {type(exc).__name__}{why}")
        return
    workdir = settings.resolved_data_dir / "work" / job_id
    shutil.rmtree(workdir, ignore_errors=True)  # left by an earlier attempt whose worker died
    workdir.mkdir(parents=True)

    def fail(type: str, detail: str) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        _db(sessions, transitions.fail, job_id, type, settings.without_server_paths(detail))

    guard = JobGuard(job_id, interval=settings.heartbeat_interval_s, cancel_grace=settings.cancel_grace_s,
                     memory_limit=settings.job_memory_limit_bytes, soft_time_limit=settings.job_soft_time_limit_s,
                     time_limit=settings.job_time_limit_s,
                     heartbeat=lambda: _db(sessions, transitions.heartbeat, job_id), fail=fail,
                     cleanup=lambda: shutil.rmtree(workdir, ignore_errors=True))
    last = 0.0

    def progress(fraction: float, stage: str) -> None:
        nonlocal last
        if guard.stop_reason:
            raise JobStopped(guard.stop_reason)
        now = time.monotonic()
        if now - last < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        last = now
        if not _db(sessions, transitions.report_progress, job_id, fraction, stage):
            raise JobStopped("cancelled")

    started = time.monotonic()
    log.info("job %s started (attempt on this worker: pid %d)", job_id, os.getpid())
    try:
        with guard:
            results = pipeline.run(loaded.steps, loaded.ctx, workdir, progress)
        _db(sessions, _finish, job_id, loaded, results)
        log.info("job %s succeeded in %.1f s", job_id, time.monotonic() - started)
    except JobStopped as stop:
        if stop.reason == "timeout":
            fail(JobErrorType.TIMEOUT, f"The job ran past its time limit of {settings.job_soft_time_limit_s} s and was stopped.")
        else:
            log.info("job %s cancelled", job_id)
    except TechniqueError as exc:
        log.info("job %s failed after %.1f s: %s", job_id, time.monotonic() - started, exc.type)
        fail(exc.type, exc.detail)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        fail(JobErrorType.INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:500]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
