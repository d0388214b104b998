"""Deployment files: docker-compose.yml renders and wires the stack; the Dockerfile keeps its pins.

The compose checks run ``docker-compose config`` (validate and render only; no Docker engine is
needed). CI installs the binary with ``apt-get install -y docker-compose`` (Debian bookworm:
docker-compose 1.29.2); where it is missing the checks are skipped, except under ``CI=true``, where
they fail so a broken CI image cannot hide them.

docker-compose 1.x renders YAML only (parsed with PyYAML, from the ``test`` extra); Compose v2
supports ``config --format json``. The helpers below normalise the forms the two versions render
(short vs long syntax for ports and volumes, list vs mapping for environment).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

from tests.support import ROOT
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

LATHE_SERVICES = ("api", "worker-cpu", "worker-gpu")  # share env and the artifact volume
EXPECTED_SERVICES = {"postgres", "redis", "migrate", *LATHE_SERVICES}
DATA_VOLUME = "lathe-data"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: CI must install it: apt-get install -y docker-compose)")
    pytest.skip(reason)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    # COMPOSE_* variables from the caller's shell (COMPOSE_FILE, COMPOSE_PROFILES...) could change
    # what gets rendered; the test checks the repository's file alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        _unavailable("docker-compose binary not found")

    base = [exe, "-f", str(COMPOSE_FILE), "config"]
    help_text = _run([exe, "config", "--help"]).stdout
    if "--format" in help_text:  # Compose v2
        proc = _run([*base, "--format", "json"])
        parse = json.loads
    else:  # docker-compose 1.x: YAML only
        try:
            import yaml
        except ImportError:
            _unavailable("PyYAML is needed to parse docker-compose 1.x output (pip install '.[test]')")
        proc = _run(base)
        parse = yaml.safe_load

    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    config = parse(proc.stdout)
    assert isinstance(config, dict) and "services" in config, proc.stdout
    return config


# -- normalisers ------------------------------------------------------------------------------


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict) -> set[tuple[str, str]]:
    """(source, target) of each volume: "src:dst[:mode]" (1.x) or {source, target} (v2)."""
    out = set()
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) >= 2:
                out.add((parts[0], parts[1]))
        else:
            out.add((str(vol.get("source")), str(vol.get("target"))))
    return out


def _ports(service: dict) -> set[tuple[str, str]]:
    """(published, target) of each port: "8000:8000[/tcp]" or {published, target}."""
    out = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.add((str(port.get("published")), str(port.get("target"))))
        else:  # "[ip:]published:target[/proto]" or just "target"
            parts = str(port).split("/")[0].split(":")
            out.add((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _depends(service: dict) -> dict[str, str]:
    """Dependency -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# -- compose checks ---------------------------------------------------------------------------


def test_services_present(rendered):
    missing = EXPECTED_SERVICES - set(rendered["services"])
    assert not missing, f"missing services: {sorted(missing)}"


def test_commands(rendered):
    svc = rendered["services"]
    assert _command(svc["migrate"]) == ["lathe", "migrate"]
    assert _command(svc["api"])[:2] == ["lathe", "api"]
    for queue in ("cpu", "gpu"):
        assert _command(svc[f"worker-{queue}"]) == ["lathe", "worker", "--queues", queue,
                                                    "--ready-file", "/tmp/worker.alive"]


def test_gpu_worker_is_opt_in_and_runs_onnxruntime_on_the_gpu(rendered):
    """A plain `up` on a CPU host must not need NVIDIA: only worker-gpu is in a profile; its
    image swaps onnxruntime for onnxruntime-gpu, so ORT jobs on the gpu queue use CUDA."""
    svc = rendered["services"]
    assert svc["worker-gpu"].get("profiles") == ["gpu"]
    assert {n: s["profiles"] for n, s in svc.items() if s.get("profiles") and n != "worker-gpu"} == {
        "seaweedfs": ["s3"], "seaweedfs-bucket": ["s3"]}  # the opt-in S3 store
    assert (svc["worker-gpu"]["build"].get("args") or {}).get("ORT_PACKAGE") == "onnxruntime-gpu"
    assert "ARG ORT_PACKAGE=onnxruntime" in DOCKERFILE.read_text()


def test_workers_have_a_liveness_check(tmp_path, rendered):
    """The check the workers' healthcheck runs: healthy while the ready file is fresh."""
    import sys
    import time

    for name in ("worker-cpu", "worker-gpu"):
        check = rendered["services"][name]["healthcheck"]
        assert not check.get("disable") and check["test"][:2] == ["CMD", "python"]
    code = rendered["services"]["worker-cpu"]["healthcheck"]["test"][-1].replace("/tmp/worker.alive",
                                                                                  str(tmp_path / "alive"))
    run = lambda: subprocess.run([sys.executable, "-c", code]).returncode  # noqa: E731
    assert run() != 0  # never ready
    (tmp_path / "alive").touch()
    assert run() == 0
    old = time.time() - 120
    os.utime(tmp_path / "alive", (old, old))
    assert run() != 0  # stopped touching it


def test_worker_gpu_reserves_a_gpu(rendered):
    gpu = rendered["services"]["worker-gpu"]
    devices = gpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    assert any(
        d.get("driver") == "nvidia" and str(d.get("count")) == "1" and "gpu" in (d.get("capabilities") or [])
        for d in devices
    ), f"no nvidia GPU reservation on worker-gpu: {devices}"
    # ...and is built with a non-CPU torch (the Dockerfile's default index is the CPU one).
    build = gpu.get("build") or {}
    index = (build.get("args") or {}).get("TORCH_INDEX_URL", "") if isinstance(build, dict) else ""
    assert index and not index.rstrip("/").endswith("/cpu"), f"worker-gpu build args: {build}"
    assert gpu.get("image") != rendered["services"]["api"].get("image"), "GPU image would overwrite the CPU one"


def test_shared_data_volume(rendered):
    assert DATA_VOLUME in (rendered.get("volumes") or {}), "named volume for artifacts not declared"
    for name in LATHE_SERVICES:
        assert (DATA_VOLUME, "/data") in _mounts(rendered["services"][name]), f"{name} lacks {DATA_VOLUME}:/data"


def test_lathe_env(rendered):
    services = rendered["services"]
    envs = {name: _env(services[name]) for name in (*LATHE_SERVICES, "migrate")}
    for name, env in envs.items():
        for key in ("LATHE_DATABASE_URL", "LATHE_BROKER_URL"):
            assert env.get(key), f"{name} has no {key}"
        assert env.get("LATHE_DATA_DIR") == "/data", f"{name}: LATHE_DATA_DIR={env.get('LATHE_DATA_DIR')!r}"
    # One shared definition: every Lathe container talks to the same database and broker...
    assert len({(e["LATHE_DATABASE_URL"], e["LATHE_BROKER_URL"]) for e in envs.values()}) == 1
    # ...and those are the compose services, not localhost.
    db, broker = urlsplit(envs["api"]["LATHE_DATABASE_URL"]), urlsplit(envs["api"]["LATHE_BROKER_URL"])
    assert db.scheme.startswith("postgresql") and db.hostname == "postgres"
    assert broker.scheme == "redis" and broker.hostname == "redis"


def test_startup_order_and_api(rendered):
    svc = rendered["services"]
    assert _depends(svc["migrate"]).get("postgres") == "service_healthy"
    for name in LATHE_SERVICES:
        deps = _depends(svc[name])
        assert deps.get("migrate") == "service_completed_successfully", f"{name}: {deps}"
        assert {"postgres", "redis"} <= set(deps), f"{name}: {deps}"
    for name in ("postgres", "redis", "api"):
        assert (svc[name].get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"
    assert ("8000", "8000") in _ports(svc["api"])


def test_s3_store_is_opt_in_and_wired(rendered):
    """`--profile s3` adds SeaweedFS (`server -s3`); its settings for api and workers are written
    out, commented, in x-lathe-env, so the default stack keeps the local artifact volume."""
    svc = rendered["services"]
    weed = svc["seaweedfs"]
    assert weed["image"].startswith("chrislusf/seaweedfs") and _command(weed)[:2] == ["server", "-dir=/data"]
    assert "-s3" in _command(weed) and any(c.startswith("-s3.config=") for c in _command(weed))
    for name in LATHE_SERVICES:
        assert "LATHE_ARTIFACTS_URL" not in _env(svc[name])  # the default: the shared volume
    text = COMPOSE_FILE.read_text()
    for line in ("# LATHE_ARTIFACTS_URL: s3://lathe", "# AWS_ENDPOINT_URL: http://seaweedfs:8333",
                 "# AWS_ACCESS_KEY_ID: lathe", "# AWS_SECRET_ACCESS_KEY: lathe-local-secret"):
        assert line in text, line
    config = json.loads((ROOT / "seaweedfs-s3.json").read_text())
    assert {"accessKey": "lathe", "secretKey": "lathe-local-secret"} in config["identities"][0]["credentials"]


# -- Dockerfile checks (no docker-compose needed) -----------------------------------------------


def test_dockerfile_pins_and_healthcheck():
    text = DOCKERFILE.read_text()
    logical = re.sub(r"\\\n", " ", text)  # join "\"-continued lines into one instruction each
    assert re.search(r"torch==2\.13\.0(?![\w.])", text), "Dockerfile must pin torch==2.13.0"
    assert "download.pytorch.org/whl/cpu" in text, "default torch index must be the CPU one"
    healthcheck = re.search(r"^\s*HEALTHCHECK\b.*$", logical, re.I | re.M)
    assert healthcheck and "/healthz" in healthcheck.group(0), "Dockerfile needs a HEALTHCHECK on /healthz"
    user = re.findall(r"^\s*USER\s+(\S+)", text, re.I | re.M)
    assert user and user[-1] not in ("root", "0"), "image must run as a non-root user"
