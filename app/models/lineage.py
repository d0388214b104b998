"""A model's family: the chain of ancestors up to the upload, and the tree of descendants, each
with the job that produced it. Bounded, so a pathological chain can't make one request huge."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.records import JobRecord, ModelRecord
from app.repository import get_owned

MAX_NODES = 500


def _node(model: ModelRecord, jobs: dict[str, JobRecord]) -> dict[str, Any]:
    job = jobs.get(model.job_id) if model.job_id else None
    return {"id": model.id, "name": model.name, "format": model.format, "size_bytes": model.size_bytes,
            "created_at": model.created_at.isoformat(),
            "job": {"id": job.id, "technique": job.technique, "status": job.status} if job else None}


def lineage(session: Session, tenant_id: str, model_id: str) -> dict[str, Any]:
    model = get_owned(session, ModelRecord, tenant_id, model_id, "model")
    chain: list[ModelRecord] = []
    current = model
    while current.parent_id and len(chain) < MAX_NODES:
        parent = session.get(ModelRecord, current.parent_id)
        if parent is None or parent.tenant_id != tenant_id:
            break
        chain.append(parent)
        current = parent
    children: dict[str, list[ModelRecord]] = {}
    frontier, seen = [model.id], 0
    while frontier and seen < MAX_NODES:
        rows = list(session.scalars(select(ModelRecord).where(
            ModelRecord.parent_id.in_(frontier), ModelRecord.tenant_id == tenant_id).order_by(ModelRecord.id)))
        for row in rows:
            children.setdefault(row.parent_id, []).append(row)
        seen += len(rows)
        frontier = [r.id for r in rows]
    everyone = [model, *chain, *(c for kids in children.values() for c in kids)]
    job_ids = {m.job_id for m in everyone if m.job_id}
    jobs = {j.id: j for j in session.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids)))} if job_ids else {}

    def tree(m: ModelRecord) -> dict[str, Any]:
        return {**_node(m, jobs), "children": [tree(c) for c in children.get(m.id, [])]}

    return {"model": _node(model, jobs), "ancestors": [_node(a, jobs) for a in chain],
            "descendants": [tree(c) for c in children.get(model.id, [])], "truncated": seen >= MAX_NODES}
