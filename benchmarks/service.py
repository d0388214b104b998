"""Service overhead, on each broker: submit → worker-start latency and GET /v1/jobs/{id} throughput.

Starts a real deployment per backend (tests/support/deploy.py: embedded = SQLite + filesystem
broker; production = PostgreSQL + Redis), a real `lathe api` (uvicorn) and one `lathe worker`, then:
  * submits N jobs one at a time (a tiny `benchmark` job, so the worker is idle when the next
    one arrives) and reads created_at → started_at from each job: the queueing overhead;
  * hammers GET /v1/jobs/{id} from C client threads for S seconds.

    .venv/bin/python benchmarks/service.py [--jobs 100] [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.deploy import deployment, wait_job  # noqa: E402


def tiny_onnx(path: Path) -> None:
    from onnx import TensorProto, helper, save

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_backend(kind: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp, deployment(kind, Path(tmp)) as (c, _env):
        p = Path(tmp) / "tiny.onnx"
        tiny_onnx(p)
        model = c.post("/v1/models", files={"file": ("tiny.onnx", p.read_bytes())}).json()
        body = {"model_id": model["id"], "technique": "benchmark",
                "params": {"batch_sizes": [1], "warmup": 1, "min_runs": 1, "min_seconds": 0.0}}
        wait_job(c, c.post("/v1/jobs", json=body).json()["id"])  # warm-up: worker imports not counted
        latencies = []
        for _ in range(args.jobs):  # one at a time, so the worker is idle when each arrives
            job = wait_job(c, c.post("/v1/jobs", json=body).json()["id"], poll=0.01)
            assert job["status"] == "succeeded", job
            started, created = datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["created_at"])
            latencies.append((started - created).total_seconds() * 1000)

        count, errors = [0], [0]
        stop = time.monotonic() + args.seconds

        def reader() -> None:
            with httpx.Client(base_url=c.base_url, headers=c.headers, timeout=30) as rc:
                while time.monotonic() < stop:
                    r = rc.get(f"/v1/jobs/{job['id']}")
                    count[0] += 1
                    errors[0] += r.status_code != 200

        threads = [threading.Thread(target=reader) for _ in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    return {"backend": kind, "jobs": len(latencies), "p50": pct(latencies, 50), "p95": pct(latencies, 95),
            "max": max(latencies), "rps": count[0] / elapsed, "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    rows = [run_backend("embedded", args), run_backend("production", args)]
    names = {"embedded": "embedded (SQLite + filesystem)", "production": "production (PostgreSQL + Redis)"}
    print(f"\n{'backend':34} {'jobs':>5} {'submit→start p50 ms':>20} {'p95 ms':>8} {'max ms':>8} "
          f"{'GET job req/s':>14} {'errors':>7}")
    for r in rows:
        print(f"{names[r['backend']]:34} {r['jobs']:>5} {r['p50']:>20.1f} {r['p95']:>8.1f} {r['max']:>8.1f} "
              f"{r['rps']:>14.0f} {r['errors']:>7}")
    print(f"({args.clients} client threads for {args.seconds:.0f} s; API: one uvicorn process; "
          f"{os.cpu_count()} CPU cores shared by client, API, worker and database)")


if __name__ == "__main__":
    main()
