"""Tenant-scoped lookups shared by every resource: another tenant's id is simply not found."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.errors import NotFound

R = TypeVar("R")


def get_owned(session: Session, record: type[R], tenant_id: str, id: str, what: str) -> R:
    row = session.get(record, id) if len(id) <= 64 else None
    if row is None or row.tenant_id != tenant_id:  # type: ignore[attr-defined]
        raise NotFound(f"No {what} with id {id!r}.")
    return row


def owned(record: type[R], tenant_id: str) -> Select[tuple[R]]:
    return select(record).where(record.tenant_id == tenant_id)  # type: ignore[attr-defined]
