from __future__ import annotations

from fastapi import UploadFile
from sqlalchemy.orm import Session

from app.datasets.npz import inspect_npz
from app.records import DatasetRecord, JobRecord
from app.tenants.service import Tenant
from app.repository import get_owned
from app.settings import Settings
from app.store import Store
from app.artifacts import delete_stored, ingest
from app.records import clean_name


def upload(session: Session, store: Store, settings: Settings, tenant: Tenant,
           file: UploadFile, name: str | None) -> DatasetRecord:
    validate = lambda path: inspect_npz(path, settings.max_dataset_uncompressed_bytes)  # noqa: E731
    with ingest(session, store, file, settings.max_dataset_bytes, validate) as (staged, uri, info):
        record = DatasetRecord(tenant_id=tenant.id, name=clean_name(name, file.filename), size_bytes=staged.size,
                               sha256=staged.sha256, uri=uri, **info)
        session.add(record)
        session.flush()
    return record


def delete(session: Session, store: Store, tenant: Tenant, dataset_id: str) -> None:
    record = get_owned(session, DatasetRecord, tenant.id, dataset_id, "dataset")
    delete_stored(session, store, record, JobRecord.dataset_id, "dataset")
