"""Service overhead, on each broker: submit → worker-start latency and GET /v1/jobs/{id} throughput.

Starts a real deployment per backend (embedded: SQLite + filesystem broker; production:
PostgreSQL + Redis), a real `lathe api` (uvicorn) and one `lathe worker`, then:
  * submits N jobs one at a time (a tiny `benchmark` job, so the worker is idle when the next
    one arrives) and reads created_at → started_at from each job: the queueing overhead;
  * hammers GET /v1/jobs/{id} from C client threads for S seconds.

    .venv/bin/python benchmarks/service.py [--jobs 100] [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import _pg_database  # noqa: E402  (creates and drops a scratch database)


def tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_backend(name: str, env: dict[str, str], args) -> dict:
    py = sys.executable
    subprocess.run([py, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    key = subprocess.run([py, "-m", "app.cli", "keys", "create", "--tenant", "bench"], env=env, cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    procs = [
        subprocess.Popen([py, "-m", "app.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([py, "-m", "app.cli", "worker", "--queues", "cpu"], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            for _ in range(200):
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "tiny.onnx"
                tiny_onnx(p)
                model = c.post("/v1/models", files={"file": ("tiny.onnx", p.read_bytes())}).json()
            body = {"model_id": model["id"], "technique": "benchmark",
                    "params": {"batch_sizes": [1], "warmup": 1, "min_runs": 1, "min_seconds": 0.0}}
            # One warm-up job so worker start-up (imports) is not counted.
            wait(c, c.post("/v1/jobs", json=body).json()["id"])
            latencies = []
            for _ in range(args.jobs):
                job = wait(c, c.post("/v1/jobs", json=body).json()["id"])
                started = datetime.fromisoformat(job["started_at"])
                created = datetime.fromisoformat(job["created_at"])
                latencies.append((started - created).total_seconds() * 1000)
            job_id = job["id"]

        count, errors = [0], [0]
        stop = time.monotonic() + args.seconds

        def reader() -> None:
            with httpx.Client(base_url=base, headers=h, timeout=30) as rc:
                while time.monotonic() < stop:
                    r = rc.get(f"/v1/jobs/{job_id}")
                    count[0] += 1
                    errors[0] += r.status_code != 200

        threads = [threading.Thread(target=reader) for _ in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        return {"backend": name, "jobs": len(latencies), "p50": pct(latencies, 50), "p95": pct(latencies, 95),
                "max": max(latencies), "rps": count[0] / elapsed, "errors": errors[0]}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def wait(c: httpx.Client, job_id: str) -> dict:
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job failed: {job}")
            return job
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    base_env["LATHE_LOG_LEVEL"] = "warning"
    rows = []
    with tempfile.TemporaryDirectory() as d1:
        rows.append(run_backend("embedded (SQLite + filesystem)", {**base_env, "LATHE_DATA_DIR": d1}, args))
    db = _pg_database()
    with tempfile.TemporaryDirectory() as d2:
        env = {**base_env, "LATHE_DATA_DIR": d2, "LATHE_DATABASE_URL": next(db),
               "LATHE_BROKER_URL": "redis://127.0.0.1:6379/0", "LATHE_BROKER_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}:"}
        try:
            rows.append(run_backend("production (PostgreSQL + Redis)", env, args))
        finally:
            next(db, None)
    print(f"\n{'backend':34} {'jobs':>5} {'submit→start p50 ms':>20} {'p95 ms':>8} {'max ms':>8} "
          f"{'GET job req/s':>14} {'errors':>7}")
    for r in rows:
        print(f"{r['backend']:34} {r['jobs']:>5} {r['p50']:>20.1f} {r['p95']:>8.1f} {r['max']:>8.1f} "
              f"{r['rps']:>14.0f} {r['errors']:>7}")
    print(f"({args.clients} client threads for {args.seconds:.0f} s; API: one uvicorn process; "
          f"{os.cpu_count()} CPU cores shared by client, API, worker and database)")


if __name__ == "__main__":
    main()
