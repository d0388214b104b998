"""A real Lathe service (``lathe api`` + ``lathe worker`` processes, tests.support.deploy) on each
deployment, for the client package and its CLI; each test gets a tenant of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support import ROOT
from tests.support.deploy import deployment

CLIENT_SRC = ROOT / "client"
# Quick measurements: these tests check the client, not the numbers.
FAST = {"batch_sizes": [1, 4], "warmup": 1, "min_runs": 3, "min_seconds": 0.01, "max_seconds": 1.0}
# Under pytest's 300 s: a job that never ends fails with WaitTimeoutError and the state it was
# left in (queued: no worker took it), not with a bare pytest-timeout.
WAIT_S = "240"


@dataclass
class Service:
    kind: str
    url: str
    env: dict[str, str]

    def new_key(self) -> str:
        from app.db import make_engine, make_sessionmaker, transaction
        from app.settings import Settings
        from app.tenants.service import create_key

        settings = Settings(**{k[len("LATHE_"):].lower(): v for k, v in self.env.items() if k.startswith("LATHE_")})
        engine = make_engine(settings.sqlalchemy_url)
        with transaction(make_sessionmaker(engine)) as s:
            key = create_key(s, f"client-{uuid.uuid4().hex[:10]}")
        engine.dispose()
        return key


@pytest.fixture(scope="session", params=["embedded", "production"])
def service(request, tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp(f"client-{request.param}")
    with deployment(request.param, data_dir) as (client, env):
        yield Service(request.param, str(client.base_url).rstrip("/"), env)


@pytest.fixture
def key(service: Service) -> str:
    return service.new_key()


@pytest.fixture
def lathe(service: Service, key: str):
    from lathe_client import Lathe

    with Lathe(service.url, api_key=key) as client:
        yield client


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits_x) -> Path:
    path = tmp_path_factory.mktemp("client-data") / "digits.npz"
    np.savez(path, x=digits_x[:64])
    return path


def cli(service: Service, key: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lathe <args>`` in a subprocess (the server's command, which gains the client's job
    commands), pointed at the service by LATHE_URL / LATHE_API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update(LATHE_URL=service.url, LATHE_API_KEY=key,
               PYTHONPATH=os.pathsep.join([str(ROOT), str(CLIENT_SRC), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)
