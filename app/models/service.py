from __future__ import annotations

import functools

from fastapi import UploadFile
from sqlalchemy.orm import Session

from app.models.formats import inspect_model
from app.records import JobRecord, ModelRecord, clean_name
from app.tenants.service import Tenant
from app.repository import get_owned
from app.settings import Settings
from app.store import Store
from app.artifacts import delete_stored, ingest
from app.outputs import model_record


def upload(session: Session, store: Store, settings: Settings, tenant: Tenant,
           file: UploadFile, name: str | None) -> ModelRecord:
    limits = functools.partial(inspect_model, max_nodes=settings.max_graph_nodes,
                               max_depth=settings.max_subgraph_depth)
    with ingest(session, store, file, settings.max_model_bytes, limits) as (staged, uri, info):
        record = model_record(tenant.id, clean_name(name, file.filename), staged, uri, info)
        session.add(record)
        session.flush()
    return record


def delete(session: Session, store: Store, tenant: Tenant, model_id: str) -> None:
    record = get_owned(session, ModelRecord, tenant.id, model_id, "model")
    delete_stored(session, store, record, JobRecord.model_id, "model")
