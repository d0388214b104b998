from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from sqlalchemy.orm import Session

from app import blobs
from app.models.formats import inspect_model
from app.records import JobRecord, ModelRecord
from app.tenants.service import Tenant
from app.repository import get_owned
from app.settings import Settings
from app.store import LocalStore, Staged
from app.artifacts import clean_name, delete_stored, ingest


def _record(tenant_id: str, name: str, staged: Staged, uri: str, info: dict[str, Any], **lineage: Any) -> ModelRecord:
    return ModelRecord(
        tenant_id=tenant_id, name=name, format=info["format"], size_bytes=staged.size, sha256=staged.sha256,
        uri=uri, inputs=info["inputs"], outputs=info["outputs"], parameter_count=info["parameter_count"],
        meta={k: info[k] for k in ("opset", "producer", "ir_version", "tensors_checked") if k in info}, **lineage,
    )


def upload(session: Session, store: LocalStore, settings: Settings, tenant: Tenant,
           file: UploadFile, name: str | None) -> ModelRecord:
    limits = functools.partial(inspect_model, max_nodes=settings.max_graph_nodes,
                               max_depth=settings.max_subgraph_depth)
    with ingest(session, store, file, settings.max_model_bytes, limits) as (staged, uri, info):
        record = _record(tenant.id, clean_name(name, file.filename), staged, uri, info)
        session.add(record)
        session.flush()
    return record


def register_output(session: Session, store: LocalStore, parent: ModelRecord, job_id: str, path: Path, name: str) -> ModelRecord:
    """Record a model a job wrote (the worker clears an earlier attempt's records first)."""
    staged = store.stage_file(path)
    info = inspect_model(path)
    record = _record(parent.tenant_id, clean_name(name, None), staged, blobs.put(session, store, staged), info, parent_id=parent.id, job_id=job_id)
    session.add(record)
    session.flush()
    return record


def delete(session: Session, store: LocalStore, tenant: Tenant, model_id: str) -> None:
    record = get_owned(session, ModelRecord, tenant.id, model_id, "model")
    delete_stored(session, store, record, JobRecord.model_id, "model")
