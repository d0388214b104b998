from __future__ import annotations

import logging

from celery import Celery

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import after_commit, utcnow
from app.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from app.engine import pipeline
from app.engine.errors import InvalidParams
from app.jobs import transitions
from app.jobs.schemas import TERMINAL, JobCreate
from app.queue import enqueue_job
from app.records import DatasetRecord, JobRecord, ModelRecord
from app.tenants.service import Tenant, lock_tenant
from app.repository import get_owned, owned
from app.settings import Settings

log = logging.getLogger("lathe.jobs")


def _check_dataset_fits(model: ModelRecord, dataset: DatasetRecord) -> None:
    missing = [i["name"] for i in model.inputs if i["name"] not in dataset.arrays]
    if missing:
        raise InvalidInput(
            f"The dataset has no array for model input(s) {missing}; it has {sorted(dataset.arrays)}. "
            "Name the .npz arrays after the model's inputs.", extra={"errors": [{"loc": ["body", "dataset_id"]}]})


def create(session: Session, celery: Celery, settings: Settings, tenant: Tenant, body: JobCreate) -> JobRecord:
    try:
        steps = pipeline.from_request(body.technique, body.params,
                                      [s.model_dump() for s in body.steps] if body.steps is not None else None)
    except InvalidParams as exc:
        raise InvalidInput(exc.detail, extra={"errors": exc.errors} if exc.errors else None) from None
    for step in steps:
        if body.device not in step.technique.devices:
            raise InvalidInput(f"device: {step.name} runs on {list(step.technique.devices)}, not {body.device!r}.")
    model = _owned_model(session, tenant, body.model_id)
    for model_id in pipeline.referenced_models(steps):
        _owned_model(session, tenant, model_id)
    dataset = None
    if body.dataset_id:
        dataset = get_owned(session, DatasetRecord, tenant.id, body.dataset_id, "dataset")
        _check_dataset_fits(model, dataset)
    elif needing := [s.name for s in steps if s.technique.needs_dataset]:
        raise InvalidInput(f"dataset_id: {', '.join(needing)} needs a dataset. Upload one with POST /v1/datasets "
                           f"(an .npz whose arrays are named after the model's inputs "
                           f"{[i.get('name') for i in (model.inputs or [])][:8]}, plus 'labels' for accuracy), "
                           "then send its id as dataset_id.")
    technique_name, stored_params = pipeline.stored(steps)
    lock_tenant(session, tenant.id)  # count and insert as one step: parallel requests can't both see room
    active = session.scalar(select(func.count()).select_from(JobRecord).where(
        JobRecord.tenant_id == tenant.id, JobRecord.status.in_(("queued", "running"))))
    if active >= settings.max_active_jobs_per_tenant:
        raise TooManyRequests(f"This tenant already has {active} queued or running jobs (limit "
                              f"{settings.max_active_jobs_per_tenant}); retry when some have finished.",
                              headers={"Retry-After": "30"})
    job = JobRecord(tenant_id=tenant.id, model_id=model.id, dataset_id=dataset.id if dataset else None,
                    technique=technique_name, params=stored_params, device=body.device,
                    status="queued", progress=0.0, stage="queued", attempts=0, dispatched_at=utcnow())
    session.add(job)
    session.flush()
    job_id, device = job.id, job.device

    def _enqueue() -> None:
        # After commit: a rolled-back request never starts a job. If the broker is down the job
        # stays 'queued' in the database, which is the source of truth.
        try:
            enqueue_job(celery, job_id, device)
        except Exception:
            log.exception("could not enqueue job %s; it stays queued", job_id)

    after_commit(session, _enqueue)
    return job


def _owned_model(session: Session, tenant: Tenant, model_id: str) -> ModelRecord:
    """The tenant's model; a 404 that says so when the "id" is one of its models' names."""
    try:
        return get_owned(session, ModelRecord, tenant.id, model_id, "model")
    except NotFound:
        named = session.scalars(owned(ModelRecord, tenant.id).where(ModelRecord.name == model_id)
                                .order_by(ModelRecord.id.desc()).limit(1)).first()
        if named is None:
            raise
        raise NotFound(f"No model with id {model_id!r}: that is a model's name, and jobs take ids; the newest "
                       f"model named so has id {named.id!r} (GET /v1/models lists them).") from None


def list_stmt(tenant: Tenant, status: str | None, model_id: str | None, technique: str | None):
    stmt = owned(JobRecord, tenant.id)
    if status:
        stmt = stmt.where(JobRecord.status == status)
    if model_id:
        stmt = stmt.where(JobRecord.model_id == model_id)
    if technique:
        stmt = stmt.where(JobRecord.technique == technique)
    return stmt


def cancel(session: Session, tenant: Tenant, job_id: str) -> JobRecord:
    job = get_owned(session, JobRecord, tenant.id, job_id, "job")
    if job.status in TERMINAL or not transitions.cancel(session, job.id):
        session.refresh(job)
        raise Conflict(f"Job {job_id!r} is already {job.status}.")
    session.refresh(job)
    return job


def report(session: Session, tenant: Tenant, job_id: str) -> dict:
    job = get_owned(session, JobRecord, tenant.id, job_id, "job")
    if job.report is None:
        raise Conflict(f"Job {job_id!r} has no report (status: {job.status}).")
    return job.report




def queue_conversion(session: Session, celery: Celery, settings: Settings, tenant: Tenant, model_id: str) -> dict:
    """A .pt2 or Keras upload gets an ONNX child so every ONNX technique applies. Returns what to note in
    the model's meta (the job id, or why none was queued: the upload itself still succeeds)."""
    try:
        job = create(session, celery, settings, tenant, JobCreate(model_id=model_id, technique="convert.onnx"))
    except (InvalidInput, TooManyRequests) as exc:
        return {"conversion": f"not queued: {exc.detail} Queue a convert.onnx job when ready."}
    return {"conversion_job_id": job.id}
