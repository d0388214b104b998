"""The lifetime of stored files. A file is shared by every model and dataset row with its content,
so it may only go when a transaction proves no row references it, and nothing may start
referencing it while that transaction removes it.

Both sides lock the file's row in ``blobs`` (one upsert: a row lock on PostgreSQL, the write lock
on SQLite) and keep it until their transaction ends:

- ``put`` claims the row *before* writing the file, then the caller inserts its record. An upload
  racing a removal waits for it, then writes a fresh copy.
- ``release`` (after a record's delete commits) and a rolled-back ``put`` run ``collect`` in a
  transaction of its own: claim the row, count references, and only if none remain delete the
  row and unlink the file, before committing. If that commit then fails, the row is left with
  nothing referencing it: garbage, never a committed record without its file.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import after_commit, after_rollback, utcnow
from app.records import BlobRecord, DatasetRecord, ModelRecord
from app.store import Store, Staged

log = logging.getLogger("lathe.blobs")
REFERENCING = (ModelRecord, DatasetRecord)


def _lock(session: Session, uri: str) -> None:
    """Insert the blob's row, or lock it if it exists, until this transaction ends. One statement:
    an INSERT that finds the row being deleted waits for that delete, then inserts."""
    insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
    stmt = insert(BlobRecord).values(uri=uri, created_at=utcnow())
    session.execute(stmt.on_conflict_do_update(index_elements=[BlobRecord.uri], set_={"uri": stmt.excluded.uri}))


def put(session: Session, store: Store, staged: Staged) -> str:
    """Store a staged file for a record this transaction is about to insert; returns its URI.
    If the transaction rolls back, the file goes again unless another row references it."""
    uri = store.uri(staged.sha256)
    _lock(session, uri)
    after_rollback(session, lambda bind=session.get_bind(): collect(bind, store, uri))
    store.put(staged)
    return uri


def release(session: Session, store: Store, uri: str) -> None:
    """A record referencing ``uri`` is being deleted: once that commits, remove the file if it was
    the last reference."""
    after_commit(session, lambda bind=session.get_bind(): collect(bind, store, uri))


def referenced(session: Session, uri: str) -> bool:
    return any(session.scalar(select(func.count()).select_from(r).where(r.uri == uri)) for r in REFERENCING)


def collect(bind: Engine, store: Store, uri: str) -> bool:
    """Remove the file (and its row) if nothing references it; True if removed. Runs after the
    caller's transaction ended, so it never raises: a failure leaves garbage, which is logged."""
    try:
        with Session(bind) as session, session.begin():
            _lock(session, uri)
            if referenced(session, uri):
                return False
            session.execute(delete(BlobRecord).where(BlobRecord.uri == uri))
            session.flush()
            store.delete(uri)  # under the lock: an upload of the same bytes waits, then writes anew
            return True
    except Exception:
        log.exception("could not remove the unreferenced blob %s; it stays until the next delete of its content", uri)
        return False
