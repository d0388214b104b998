"""Model records: one shape for uploads (app.models.service) and for the models a job writes
(the worker's ``register_output``). No web or queue imports: the worker uses this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import blobs
from app.models.formats import inspect_model
from app.records import ModelRecord, clean_name
from app.store import Store, Staged


def model_record(tenant_id: str, name: str, staged: Staged, uri: str, info: dict[str, Any], **lineage: Any) -> ModelRecord:
    return ModelRecord(
        tenant_id=tenant_id, name=name, format=info["format"], size_bytes=staged.size, sha256=staged.sha256,
        uri=uri, inputs=info["inputs"], outputs=info["outputs"], parameter_count=info["parameter_count"],
        meta={k: info[k] for k in ("opset", "producer", "ir_version", "tensors_checked", "keras_file") if k in info}, **lineage,
    )


def register_output(session: Session, store: Store, parent: ModelRecord, job_id: str, path: Path, name: str) -> ModelRecord:
    """Record a model a job wrote (the worker clears an earlier attempt's records first)."""
    staged = store.stage_file(path)
    info = inspect_model(path)
    record = model_record(parent.tenant_id, clean_name(name, None), staged, blobs.put(session, store, staged), info, parent_id=parent.id, job_id=job_id)
    session.add(record)
    session.flush()
    return record
