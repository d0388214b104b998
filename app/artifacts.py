"""Stored artifacts (models, datasets). Ingest an uploaded file: stream to staging while hashing, validate, then store by content.

Validation happens on the staged copy; only a file that passed is moved into the store, so a
refused upload leaves nothing behind (the staging file is removed on every path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import UploadFile
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import after_commit
from app.errors import Conflict, PayloadTooLarge
from app.records import JobRecord
from app.repository import uri_in_use
from app.store import LocalStore, Staged, TooLarge

T = TypeVar("T")
NAME_MAX = 255  # the name columns' size


@contextmanager
def ingest(store: LocalStore, upload: UploadFile, limit: int, validate: Callable[[Path], T]) -> Iterator[tuple[Staged, str, T]]:
    upload.file.seek(0)
    try:
        with store.stage(upload.file, limit) as staged:
            info = validate(staged.path)
            uri = store.put(staged)
            yield staged, uri, info
    except TooLarge as exc:
        raise PayloadTooLarge(f"The file is {exc}.") from None


def clean_name(name: str | None, fallback: str | None) -> str:
    """A display name only (files are stored by hash, downloads sanitise their file name).

    The user's ``name`` is kept as sent, "team/resnet" included, less control characters; the
    upload's file name, the fallback, is a path on the client's disk: only its last part is kept.
    """
    raw = name or ("" if fallback is None else fallback.replace("\\", "/").rsplit("/", 1)[-1])
    cleaned = "".join(ch for ch in raw if ch.isprintable()).strip()
    if len(cleaned) > NAME_MAX:  # a long file name, or a job's output named from a long name
        cleaned = f"{cleaned[:NAME_MAX - 65]}…{cleaned[-64:]}"  # the end says what it is: keep it
    return cleaned or "unnamed"


def delete_stored(session: Session, store: LocalStore, record: Any, jobs_column: Any, what: str) -> None:
    """Delete a model or dataset row; its blob goes once no other row shares the content."""
    busy = session.scalar(select(func.count()).select_from(JobRecord).where(
        jobs_column == record.id, JobRecord.status.in_(("queued", "running"))))
    if busy:
        raise Conflict(f"The {what} {record.id!r} has {busy} queued or running job(s); cancel them first.")
    uri = record.uri
    session.delete(record)
    session.flush()
    if not uri_in_use(session, type(record), uri):
        after_commit(session, lambda: store.delete(uri))
