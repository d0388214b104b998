"""Garbage collection of the artifact store: files (objects) no record references, blob rows no
record references, staging files a killed process left, and (S3) cached copies of deleted objects.

Only what is older than the grace period goes, and every file is removed under the row lock of
app/blobs.py: an upload claims the blob's row before writing its file, so a sweep that locks the
row either waits for that upload to commit (and then sees its record) or removes the file first
(and the upload, once it gets the lock, writes a fresh copy). ``lathe gc`` runs one sweep; each
worker's main process runs one every LATHE_GC_INTERVAL_S (workers/celery_app.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Engine, delete, select, union
from sqlalchemy.orm import Session

from app.blobs import REFERENCING, _lock, referenced
from app.records import BlobRecord
from app.store import S3Store, Store, StoreUnavailable

log = logging.getLogger("lathe.gc")


@dataclass
class Sweep:
    files: list[str] = field(default_factory=list)  # URIs removed (or, dry run, that would be)
    rows: list[str] = field(default_factory=list)  # blob rows without a file left, removed
    staging: int = 0
    cached: int = 0
    kept_young: int = 0

    def summary(self, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        return (f"{verb} {len(self.files)} unreferenced file(s), {len(self.rows)} orphan blob row(s), "
                f"{self.staging} staging file(s), {self.cached} cached copy(ies); "
                f"kept {self.kept_young} unreferenced file(s) younger than the grace period")


def _remove(bind: Engine, store: Store, uri: str, cutoff: datetime, dry_run: bool) -> bool:
    """Lock the blob's row (inserting it if absent), and remove file and row if no record
    references it and the row is older than the cutoff. True if removed (or would be)."""
    with Session(bind) as session:
        before = session.scalar(select(BlobRecord.created_at).where(BlobRecord.uri == uri))
        _lock(session, uri)  # waits for an upload that claimed it; its record is visible after
        created = session.scalar(select(BlobRecord.created_at).where(BlobRecord.uri == uri))
        young = before is not None and created is not None and _aware(created) > cutoff
        if dry_run or young or referenced(session, uri):
            session.rollback()
            return dry_run and not young and not referenced(session, uri)
        session.execute(delete(BlobRecord).where(BlobRecord.uri == uri))
        session.flush()
        store.delete(uri)  # under the lock, before the commit: as app/blobs.py collect does
        session.commit()
        return True


def sweep(bind: Engine, store: Store, grace_s: float, dry_run: bool = False) -> Sweep:
    now = time.time()
    cutoff = datetime.fromtimestamp(now - grace_s, timezone.utc)
    result = Sweep()
    with Session(bind) as session:
        in_use = set(session.scalars(union(*(select(r.uri) for r in REFERENCING))))
        rows = {uri: created for uri, created in session.execute(select(BlobRecord.uri, BlobRecord.created_at))}
    seen: set[str] = set()
    for uri, mtime in list(store.blobs()):
        seen.add(uri)
        if uri in in_use:
            continue
        if mtime > now - grace_s:
            result.kept_young += 1
            continue
        try:
            if _remove(bind, store, uri, cutoff, dry_run):
                result.files.append(uri)
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("could not collect %s; the next sweep tries again", uri)
    # Rows whose file is already gone (a delete whose commit failed after unlinking, say).
    for uri, created in rows.items():
        if uri in seen or uri in in_use or created is None or _aware(created) > cutoff:
            continue
        if _remove(bind, store, uri, cutoff, dry_run):
            result.rows.append(uri)
    for path, mtime in list(store.staging_files()):
        if mtime < now - grace_s:
            result.staging += 1
            if not dry_run:
                path.unlink(missing_ok=True)
    if isinstance(store, S3Store):  # copies of objects no longer in the bucket
        for path, mtime in list(store.cached_files()):
            if store.uri(path.name) not in seen and mtime < now - grace_s:
                result.cached += 1
                if not dry_run:
                    path.unlink(missing_ok=True)
    return result


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Collector(threading.Thread):
    """Sweeps every ``interval`` seconds (the first after a random part of it, so that workers
    started together do not sweep together). Concurrent sweeps are safe, only redundant."""

    def __init__(self, bind: Engine, store: Store, interval: float, grace_s: float) -> None:
        super().__init__(name="lathe-gc", daemon=True)
        self.bind, self.store, self.interval, self.grace_s = bind, store, interval, grace_s
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = random.uniform(0.1, 1.0) * self.interval
        while not self.stopped.wait(wait):
            wait = self.interval
            try:
                result = sweep(self.bind, self.store, self.grace_s)
                log.info("garbage collection: %s", result.summary(False))
            except Exception as exc:
                log.warning("garbage collection failed (%s: %s); next sweep in %.0f s",
                            type(exc).__name__, str(exc)[:300], self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
