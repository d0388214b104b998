"""Stored artifacts (models, datasets). Ingest an uploaded file: stream to staging while hashing, validate, then store by content.

Validation happens on the staged copy; only a file that passed is moved into the store, so a
refused upload leaves nothing behind (the staging file is removed on every path, and a stored file
whose record is rolled back goes again: app/blobs.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import UploadFile
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import blobs, idempotency
from app.errors import Conflict, PayloadTooLarge
from app.records import JobRecord
from app.store import Store, Staged, TooLarge

T = TypeVar("T")


@contextmanager
def ingest(session: Session, store: Store, upload: UploadFile, limit: int,
           validate: Callable[[Path], T]) -> Iterator[tuple[Staged, str, T]]:
    upload.file.seek(0)
    try:
        with store.stage(upload.file, limit) as staged:
            info = validate(staged.path)
            uri = blobs.put(session, store, staged)
            yield staged, uri, info
    except TooLarge as exc:
        raise PayloadTooLarge(f"The file is {exc}.") from None


def upload_fingerprint(upload: UploadFile, name: str | None, sha256: str | None = None) -> str:
    """What an upload asks for, for Idempotency-Key: the file's content and the form fields.
    Pass ``sha256`` once the file was staged; without it the uploaded file is hashed."""
    if sha256 is None:
        upload.file.seek(0)
        sha256 = hashlib.file_digest(upload.file, "sha256").hexdigest()
    return idempotency.fingerprint(file_sha256=sha256, name=name, filename=upload.filename)


def delete_stored(session: Session, store: Store, record: Any, jobs_column: Any, what: str) -> None:
    """Delete a model or dataset row; its blob goes once no row of either kind shares the content."""
    busy = session.scalar(select(func.count()).select_from(JobRecord).where(
        jobs_column == record.id, JobRecord.status.in_(("queued", "running"))))
    if busy:
        raise Conflict(f"The {what} {record.id!r} has {busy} queued or running job(s); cancel them first.")
    session.delete(record)
    session.flush()
    blobs.release(session, store, record.uri)
