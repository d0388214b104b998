"""A real MLflow tracking server for the export.mlflow tests, in a virtual environment of its own.

The server package (PyPI ``mlflow``) pins SQLAlchemy, alembic, numpy, pandas, Flask... against
ranges that need not match Lathe's, so it never goes into Lathe's environment: it is installed
once into ``.mlflow-server/`` at the repository root (gitignored) and reused while its version
matches. Lathe itself talks to MLflow over its REST API with httpx and needs none of it.

First install: about 1.5 min and 850 MB; the server's first start (its database migrations)
takes up to a minute on a busy machine. In CI (``CI`` set) a failed install fails the tests;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.procs import free_port

# mlflow-skinny 3.18.0 (which mlflow 3.18.0 requires) is missing from this project's package
# index; 3.17.2 is the newest installable release there. The REST API Lathe uses is MLflow 2's.
PACKAGE = "mlflow==3.17.2"
VENV = ROOT / ".mlflow-server"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 180


def _installed() -> bool:
    marker = VENV / "installed.txt"
    return marker.is_file() and marker.read_text().strip() == PACKAGE and (VENV / "bin" / "mlflow").is_file()


def ensure_installed() -> Path:
    """The server's venv, installed when missing or of another version; skips (fails in CI)
    when it cannot be installed."""
    if _installed():
        return VENV
    shutil.rmtree(VENV, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True,
                       timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", PACKAGE],
                       check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(VENV, ignore_errors=True)
        output = getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or ""
        reason = f"cannot install {PACKAGE} into {VENV}: {exc}\n{str(output)[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    (VENV / "installed.txt").write_text(PACKAGE + "\n")
    return VENV


class MlflowServer:
    """``mlflow server`` on a free port, SQLite backend, artifacts proxied (--serve-artifacts)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "mlflow-server.log"

    def start(self) -> None:
        venv = ensure_installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.workdir}/mlflow.db",
                 "--artifacts-destination", str(self.workdir / "artifacts"), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # --- reading what a client logged, through the server's REST API ------------------------

    def get(self, path: str, **params) -> dict:
        r = httpx.get(f"{self.url}/api/2.0/mlflow/{path}", params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def artifact(self, artifact_uri: str, relative: str) -> bytes:
        """A file of a run (or model version source) whose URI is ``mlflow-artifacts:/...``."""
        path = artifact_uri.removeprefix("mlflow-artifacts:").strip("/")
        r = httpx.get(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}/{relative}", timeout=30)
        assert r.status_code == 200, r.text
        return r.content
