"""Start a real Lathe deployment for a benchmark: migrate, a key, `lathe api` and `lathe worker`.

    with deployment("embedded", data_dir) as (client, env): ...          # SQLite + filesystem
    with deployment("production", data_dir) as (client, env): ...        # PostgreSQL + Redis

``client`` is an httpx.Client with the base URL and the key set. The production variant uses a
scratch PostgreSQL database (dropped afterwards) and a per-run Redis key prefix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import ROOT
PG_ADMIN_URL = os.environ.get("LATHE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LATHE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@contextmanager
def scratch_pg_database() -> Iterator[str]:
    import psycopg

    name = f"lathe_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def deployment(kind: str, data_dir: Path, workers: int = 1, api_processes: int = 1, **extra_env: str) -> Iterator[tuple[httpx.Client, dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update({"LATHE_DATA_DIR": str(data_dir), "LATHE_LOG_LEVEL": "warning", **extra_env})
    with (scratch_pg_database() if kind == "production" else _nothing()) as db_url:
        if db_url:
            env.update({"LATHE_DATABASE_URL": db_url, "LATHE_BROKER_URL": REDIS_URL,
                        "LATHE_BROKER_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}:"})
        py = sys.executable
        subprocess.run([py, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
        key = subprocess.run([py, "-m", "app.cli", "keys", "create", "--tenant", "bench"], env=env, cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = _free_port()
        # Each process's output goes to a log in the data dir: a failing test or benchmark can say why.
        logs = [open(data_dir / f"{name}.log", "ab") for name in ["api", *(f"worker-{i}" for i in range(workers))]]
        procs = [subprocess.Popen([py, "-m", "app.cli", "api", "--port", str(port), "--processes", str(api_processes)],
                                  env=env, cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT)]
        procs += [subprocess.Popen([py, "-m", "app.cli", "worker", "--queues", "cpu"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT) for log in logs[1:]]
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        try:
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield client, env
        finally:
            client.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs:
                log.close()


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def wait_job(client: httpx.Client, job_id: str, poll: float = 0.05, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(poll)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
