"""``pip install ./client`` in a fresh virtualenv: the client and its ``lathe`` command work with
no torch, onnxruntime, FastAPI or server package there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.client.conftest import CLIENT_SRC


def test_client_installs_alone_in_a_fresh_virtualenv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("LATHE_")}
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(CLIENT_SRC)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    probe = ("import importlib.util, json, lathe_client; "
             "print(json.dumps({'version': lathe_client.__version__, 'file': lathe_client.__file__, "
             "'absent': [m for m in ('torch', 'onnxruntime', 'fastapi', 'numpy', 'app') "
             "if importlib.util.find_spec(m) is None]}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["absent"] == ["torch", "onnxruntime", "fastapi", "numpy", "app"]
    assert found["file"].startswith(str(venv)) and found["version"]

    # Its own `lathe` (no server here): the job commands, and a clear error for a closed port.
    helped = subprocess.run([str(venv / "bin" / "lathe"), "--help"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "jobs" in helped.stdout and "serve" not in helped.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = subprocess.run([str(venv / "bin" / "lathe"), "techniques", "--url", closed], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 3 and "ConnectError" in unreachable.stderr, unreachable.stderr
