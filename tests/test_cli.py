"""The README's first command, for real: `lathe serve` in a subprocess, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env["LATHE_DATA_DIR"] = str(data_dir)
    return env


def test_keys_create_prints_key_last(tmp_path):
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=_env(tmp_path / "d"), cwd=ROOT,
                   capture_output=True, check=True)
    out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme"],
                         env=_env(tmp_path / "d"), cwd=ROOT, capture_output=True, text=True, check=True)
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("lk_") and len(key) > 40


@pytest.mark.parametrize("command", [["keys", "create", "--tenant", "acme"], ["keys", "revoke", "lk_0123456789"]])
def test_admin_commands_never_start_a_fresh_deployment(tmp_path, command):
    """Run from the wrong folder, an admin command says where it looked and how to point it at
    the server, and creates nothing there."""
    out = subprocess.run([sys.executable, "-m", "app.cli", *command], env=_env(tmp_path / "elsewhere"),
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "no Lathe database at" in out.stderr and "--data-dir" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "elsewhere").exists() and list(tmp_path.iterdir()) == []


def test_serve_then_ctrl_c(tmp_path, mlp_onnx):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                            env=_env(tmp_path / "elsewhere"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("lk_")):
            line = proc.stdout.readline()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line.strip())
        key = lines[-1]
        assert any(f"http://127.0.0.1:{port}" in line for line in lines)
        assert (tmp_path / "d" / "lathe.db").exists()  # --data-dir wins over LATHE_DATA_DIR
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.monotonic() < deadline, "API never became ready"
            time.sleep(0.2)
        h = {"Authorization": f"Bearer {key}"}
        m = httpx.post(f"{base}/v1/models", headers=h, files={"file": ("m.onnx", mlp_onnx.read_bytes())}).json()
        job = httpx.post(f"{base}/v1/jobs", headers=h, json={
            "model_id": m["id"], "technique": "benchmark", "params": {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.01}}).json()
        while (status := httpx.get(f"{base}/v1/jobs/{job['id']}", headers=h).json()["status"]) in ("queued", "running"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        assert status == "succeeded"  # the worker serve started ran it
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=40)
    assert rc == 0
    # The worker child is gone too.
    ps = subprocess.run(["pgrep", "-f", f"{tmp_path}/d"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_keys_revoke(tmp_path):
    from app.cli import _settings  # noqa: F401  (the CLI module imports cleanly)

    env = _env(tmp_path / "d")
    run = lambda *a: subprocess.run([sys.executable, "-m", "app.cli", "keys", *a], env=env, cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, capture_output=True, check=True)
    key = run("create", "--tenant", "acme").stdout.strip().splitlines()[-1]
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path / "d", reaper_interval_s=0, auth_cache_s=0))) as c:
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        out = run("revoke", key[:10])
        assert out.returncode == 0 and "revoked 1 key" in out.stdout
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert run("revoke", key).returncode == 1  # already revoked: nothing to do
