"""Garbage collection (`lathe gc`, app/gc.py) on both stores, with a real PostgreSQL: an orphan
file (a worker killed between writing its output and committing the record) goes once older
than the grace period; a referenced file, a fresh orphan and everything under --dry-run stay; a
sweep racing an upload that has claimed its blob waits for it and keeps the file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app import blobs
from app.cli import run_migrations
from app.db import make_engine, utcnow
from app.gc import sweep
from app.outputs import model_record
from app.records import BlobRecord, ModelRecord, TenantRecord
from app.settings import Settings
from app.store import Store, open_store
from tests.support import ROOT
from tests.support.deploy import scratch_pg_database

INFO = {"format": "onnx", "inputs": [], "outputs": [], "parameter_count": 0}


@dataclass
class Env:
    settings: Settings
    env: dict[str, str]
    engine: Engine
    store: Store
    tenant_id: str
    tmp: Path

    def gc(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "app.cli", "gc", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def file(self, tag: str) -> Path:
        path = self.tmp / f"{tag}-{uuid.uuid4().hex}"
        path.write_bytes(os.urandom(1000))
        return path

    def orphan(self) -> str:
        """Stored, never committed: what a worker killed between writing and committing leaves."""
        return self.store.put(self.store.stage_file(self.file("orphan")))

    def referenced(self, session: Session | None = None) -> str:
        own = session is None
        session = session or Session(self.engine)
        staged = self.store.stage_file(self.file("kept"))
        uri = blobs.put(session, self.store, staged)
        session.add(model_record(self.tenant_id, "kept", staged, uri, INFO))
        if own:
            session.commit()
            session.close()
        return uri

    def exists(self, uri: str) -> bool:
        return self.store.stat(uri) is not None


@pytest.fixture(scope="module", params=["local", "s3"])
def gc_env(request, tmp_path_factory) -> Env:
    tmp = tmp_path_factory.mktemp(f"gc-{request.param}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATHE_", "AWS_"))}
    env.update({"LATHE_DATA_DIR": str(tmp / "data"), "LATHE_LOG_LEVEL": "warning"})
    mp = pytest.MonkeyPatch()
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        env.update(server.env, LATHE_ARTIFACTS_URL=f"s3://{server.bucket}/gc-{uuid.uuid4().hex[:8]}")
        for k, v in server.env.items():
            mp.setenv(k, v)
    with scratch_pg_database() as url:
        env["LATHE_DATABASE_URL"] = url
        settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in env.items() if k.startswith("LATHE_")})
        settings.ensure_dirs()
        run_migrations(settings)
        engine = make_engine(url)
        with Session(engine) as s:
            tenant = TenantRecord(name="gc")
            s.add(tenant)
            s.commit()
            tenant_id = tenant.id
        yield Env(settings, env, engine, open_store(settings), tenant_id, tmp)
        engine.dispose()
    mp.undo()


def test_gc_collects_old_orphans_only(gc_env):
    orphan, kept = gc_env.orphan(), gc_env.referenced()
    row_only = gc_env.store.uri("f" * 64)  # a blob row whose file is already gone
    with Session(gc_env.engine) as s:
        s.add(BlobRecord(uri=row_only, created_at=utcnow() - timedelta(minutes=30)))
        s.commit()
    old_staging, new_staging = gc_env.store.staging / "old.tmp", gc_env.store.staging / "new.tmp"
    for path in (old_staging, new_staging):
        path.write_bytes(b"partial upload")
    two_hours_ago = time.time() - 7200
    os.utime(old_staging, (two_hours_ago, two_hours_ago))

    out = gc_env.gc("--grace", "3600")  # everything but the old staging file is younger
    assert gc_env.exists(orphan) and gc_env.exists(kept), out
    assert not old_staging.exists() and new_staging.exists()

    out = gc_env.gc("--grace", "0", "--dry-run")
    assert f"would remove {orphan}" in out and f"would remove {row_only}" in out and kept not in out, (out, kept)
    assert gc_env.exists(orphan) and new_staging.exists()
    with Session(gc_env.engine) as s:
        assert s.get(BlobRecord, row_only) is not None

    out = gc_env.gc("--grace", "0")
    assert f"removed {orphan}" in out and kept not in out
    assert not gc_env.exists(orphan) and gc_env.exists(kept) and not new_staging.exists()
    with Session(gc_env.engine) as s:
        assert s.get(BlobRecord, row_only) is None and s.get(BlobRecord, kept) is not None
        assert s.query(ModelRecord).filter_by(uri=kept).count() == 1


def test_sweep_racing_an_upload_keeps_its_file(gc_env):
    """The upload claims the blob row and writes the file; the sweep, started before the upload
    commits, sees an unreferenced file past the grace period, waits on the row lock, then finds
    the record and keeps the file."""
    claimed, go, uploaded = threading.Event(), threading.Event(), {}

    def upload() -> None:
        with Session(gc_env.engine) as session:
            uploaded["uri"] = gc_env.referenced(session)
            claimed.set()
            go.wait()  # set below, in a finally
            session.commit()

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    swept: dict = {}
    sweeper = threading.Thread(target=lambda: swept.update(result=sweep(gc_env.engine, gc_env.store, 0)), daemon=True)
    try:
        assert claimed.wait(60)
        # Past the grace period (0 s) by the store's clock too (S3's LastModified counts whole
        # seconds), and in the store's listing (an S3 server's listing may lag its writes).
        while (time.time() < gc_env.store.stat(uploaded["uri"]).mtime + 1.5
               or uploaded["uri"] not in {uri for uri, _ in gc_env.store.blobs()}):
            time.sleep(0.1)
        sweeper.start()
        with gc_env.engine.connect() as conn:  # the sweep is waiting for the upload's row lock
            while True:
                waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                            "AND datname = current_database()")).scalar()
                conn.rollback()  # pg_stat_activity is a snapshot per transaction: a new one each time
                if waiting:
                    break
                assert sweeper.is_alive(), f"the sweep finished without waiting for the upload: {swept}"
                time.sleep(0.05)
    finally:
        go.set()
        uploader.join(60)
        if sweeper.is_alive():
            sweeper.join(60)
    uri = uploaded["uri"]
    assert uri not in swept["result"].files
    assert gc_env.exists(uri)
    with Session(gc_env.engine) as s:
        assert s.query(ModelRecord).filter_by(uri=uri).count() == 1


def test_worker_sweeps_periodically(tmp_path):
    """Each worker's main process sweeps every LATHE_GC_INTERVAL_S (here on the embedded SQLite
    deployment): an orphan goes without anyone running `lathe gc`."""
    from tests.conftest import _start_worker, _stop, deploy

    (tmp_path / "data").mkdir()
    with deploy("embedded", tmp_path / "data", LATHE_GC_INTERVAL_S="1", LATHE_GC_GRACE_S="0") as d:
        store = open_store(d.settings)
        path = tmp_path / "orphan"
        path.write_bytes(os.urandom(1000))
        uri = store.put(store.stage_file(path))
        worker = _start_worker(d.env, tmp_path / "worker.log")
        try:
            deadline = time.monotonic() + 120
            while store.stat(uri) is not None:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no sweep removed the orphan within 2 minutes"
                time.sleep(0.2)
        finally:
            _stop(worker)
