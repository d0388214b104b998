"""Run one job: load the row, fetch inputs from the store, call the engine, store outputs.

Status changes go through app.jobs.transitions only. The engine never sees the database: it
gets local paths and a progress callback, which is also how cancellation reaches it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from app.db import make_engine, make_sessionmaker, transaction
from app.engine.registry import Context, TechniqueError, get
from app.jobs import transitions
from app.jobs.service import referenced_models
from app.models.service import register_output
from app.records import DatasetRecord, JobRecord, ModelRecord
from app.settings import Settings
from app.store import open_store

log = logging.getLogger("lathe.worker")
PROGRESS_INTERVAL_S = 1.0


class JobCancelled(Exception):
    pass


@cache
def _resources():
    settings = Settings()
    settings.ensure_dirs()
    return settings, make_sessionmaker(make_engine(settings.sqlalchemy_url)), open_store(settings.artifact_root)


def run_job(job_id: str) -> None:
    settings, sessions, store = _resources()
    with transaction(sessions) as s:
        if not transitions.start(s, job_id):
            log.info("job %s is not queued (cancelled or finished); skipping", job_id)
            return
        job = s.get(JobRecord, job_id)
        model = s.get(ModelRecord, job.model_id) if job.model_id else None
        dataset = s.get(DatasetRecord, job.dataset_id) if job.dataset_id else None
        if model is None:
            transitions.fail(s, job_id, "model_deleted", "The job's model was deleted before the job ran.")
            return
        technique_cls = get(job.technique)
        params = technique_cls.Params.model_validate(job.params)
        model_path = store.path(model.uri)
        dataset_path = store.path(dataset.uri) if dataset else None
        others = {}
        for other_id in referenced_models(technique_cls, params):
            other = s.get(ModelRecord, other_id)
            if other is None or other.tenant_id != job.tenant_id:
                transitions.fail(s, job_id, "model_deleted", f"Model {other_id!r} named in the params was deleted.")
                return
            others[other_id] = store.path(other.uri)
        parent = s.get(ModelRecord, model.parent_id) if model.parent_id else None
        parent_path = store.path(parent.uri) if parent else None
        device, model_name = job.device, model.name

    last = 0.0

    def progress(fraction: float, stage: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        last = now
        with transaction(sessions) as s:
            still_running = transitions.report_progress(s, job_id, fraction, stage)
        if not still_running:
            raise JobCancelled

    workdir = Path(tempfile.mkdtemp(prefix=f"lathe-job-{job_id}-"))
    try:
        ctx = Context(model_path=model_path, params=params, workdir=workdir, device=device,
                      dataset_path=dataset_path, progress=progress, models=others, parent_path=parent_path)
        result = technique_cls().run(ctx)
        with transaction(sessions) as s:
            job = s.get(JobRecord, job_id, with_for_update=True)
            if job is None or job.status != "running":
                return  # cancelled while finishing: keep no output
            output_id = None
            if result.output_path is not None:
                parent = s.get(ModelRecord, job.model_id)
                stem = model_name.removesuffix(".onnx")
                out = register_output(s, store, parent, job_id, result.output_path, f"{stem}.{job.technique}.onnx")
                output_id = out.id
            transitions.succeed(s, job_id, result.report, output_id)
    except JobCancelled:
        log.info("job %s cancelled", job_id)
    except TechniqueError as exc:
        _fail(sessions, job_id, exc.type, exc.detail)
    except SoftTimeLimitExceeded:
        _fail(sessions, job_id, "timeout", f"The job ran past its time limit of {settings.job_soft_time_limit_s} s.")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _fail(sessions, job_id, "internal_error", f"{type(exc).__name__}: {str(exc)[:500]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _fail(sessions, job_id: str, type: str, detail: str) -> None:
    with transaction(sessions) as s:
        transitions.fail(s, job_id, type, detail)
