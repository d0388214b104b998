"""Fixtures that run Lathe for real: migrations, a live database and broker, a `lathe worker`
process. Each backend is one session-scoped deployment; each test gets its own tenant.

Backends: ``embedded`` (SQLite file + Celery filesystem transport in a temp data dir) and
``postgres`` (a fresh database on the local PostgreSQL + the local Redis, keys prefixed per run).
PostgreSQL and Redis must be up: these tests fail rather than skip without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.cli import run_migrations
from tests.support.deploy import REDIS_URL, scratch_pg_database
from app.db import make_engine, make_sessionmaker, transaction
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_key

from tests.support import ROOT


@dataclass
class Deployment:
    name: str
    settings: Settings
    env: dict[str, str]
    client: TestClient

    def new_client(self, tenant: str | None = None) -> httpx.Client:
        """A client authenticated as a fresh tenant (isolation between tests)."""
        engine = make_engine(self.settings.sqlalchemy_url)
        with transaction(make_sessionmaker(engine)) as s:
            key = create_key(s, tenant or f"t-{uuid.uuid4().hex[:12]}")
        engine.dispose()
        return _Authed(self.client, key)


class _Authed:
    """A thin view of the shared TestClient that adds one tenant's key to every request."""

    def __init__(self, client: TestClient, key: str) -> None:
        self._client, self.key = client, key

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return self._client.request(method, url, headers=headers, **kw)

    def get(self, url: str, **kw) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> httpx.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw) -> httpx.Response:
        return self.request("DELETE", url, **kw)

    def wait_job(self, job_id: str, timeout: float = 120, until=("succeeded", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu,gpu"],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def deploy(kind: str, data_dir: Path, **extra_env: str) -> Iterator[Deployment]:
    """A migrated database (``embedded``: SQLite + filesystem broker; ``postgres``: a scratch
    database + Redis with a key prefix of its own) and the API in-process. No worker: the caller
    starts one when the queue should begin to move."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update({"LATHE_DATA_DIR": str(data_dir), "LATHE_LOG_LEVEL": "warning",
                "LATHE_MAX_MODEL_BYTES": str(8 * 1024 * 1024), "LATHE_MAX_DATASET_BYTES": str(8 * 1024 * 1024),
                # webhooks to the tests' own receivers on 127.0.0.1, retried within seconds
                "LATHE_WEBHOOK_ALLOW_PRIVATE": "true", "LATHE_WEBHOOK_RETRY_S": "[0.5, 0.5, 1]",
                "LATHE_WEBHOOK_TIMEOUT_S": "2", "LATHE_WEBHOOK_POLL_S": "0.2"})
    env.update(extra_env)
    with scratch_pg_database() if kind == "postgres" else nullcontext() as pg_url:
        if pg_url:
            env.update({"LATHE_DATABASE_URL": pg_url, "LATHE_BROKER_URL": REDIS_URL,
                        "LATHE_BROKER_KEY_PREFIX": f"lathe-test-{uuid.uuid4().hex[:8]}:"})
        settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in env.items() if k.startswith("LATHE_")})
        run_migrations(settings)
        with TestClient(create_app(settings)) as client:
            yield Deployment(kind, settings, env, client)


@contextmanager
def _worker(d: Deployment, data_dir: Path) -> Iterator[None]:
    """A real worker process for the deployment, stopped after; its log tail printed if it
    ended badly."""
    worker = _start_worker(d.env, data_dir / "worker.log")
    try:
        yield
    finally:
        _stop(worker)
        if worker.returncode not in (0, -15):
            print((data_dir / "worker.log").read_text()[-5000:])


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    data_dir = tmp_path_factory.mktemp(f"lathe-{request.param}")
    with deploy(request.param, data_dir) as d, _worker(d, data_dir):
        yield d


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) with a bucket; skipped locally without `weed`, failed under CI."""
    from tests.support.seaweed import WeedUnavailable, seaweed, unavailable

    try:
        with seaweed(tmp_path_factory.mktemp("seaweed")) as server:
            yield server
    except WeedUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def s3_deployment(s3_server, tmp_path_factory) -> Iterator[Deployment]:
    """PostgreSQL + Redis + a worker, artifacts in the S3 bucket (LATHE_ARTIFACTS_URL). The AWS
    variables are set in this process too: the in-process API's store reads them."""
    data_dir = tmp_path_factory.mktemp("lathe-s3")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server.env.items():
            mp.setenv(k, v)
        with deploy("postgres", data_dir, LATHE_ARTIFACTS_URL=f"s3://{s3_server.bucket}/deploy") as d, \
                _worker(d, data_dir):
            yield d


@pytest.fixture
def api(deployment: Deployment) -> _Authed:
    return deployment.new_client()


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    """A small MLP (64 → 128 → 10) trained on scikit-learn's digits for a second, exported from
    torch with a symbolic batch dimension. Trained, so its logits mean something to compare."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    torch.onnx.export(model, (torch.randn(2, 64),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture(scope="session")
def digits_x():
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype("float32")


@pytest.fixture(scope="session")
def cnn_pt2(tmp_path_factory):
    """A small CNN saved with torch.export.save (symbolic batch): (path, the eval-mode module)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).eval()
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    torch.export.save(program, str(path))
    return path, model


@pytest.fixture(scope="session")
def keras_files(tmp_path_factory) -> dict[str, Path]:
    """cnn/mlp/block (and a hostile Lambda) saved by Keras as .keras and .h5, built in a subprocess
    (tests.support.keras_models); the Lambda's payload would create ``keras_files["marker"]``."""
    from tests.support.keras_models import build

    root = tmp_path_factory.mktemp("keras")
    marker = root / "lambda-payload-ran"
    return {**build(root / "models", marker), "marker": marker}
