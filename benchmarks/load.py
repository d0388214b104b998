"""Load: 50 jobs kept in flight plus 200 reads/s for a minute, against the production shape
(PostgreSQL + Redis, one `lathe api` with two processes, two `lathe worker`s). Prints errors,
lost jobs and latency percentiles.

    .venv/bin/python benchmarks/load.py [--seconds 60] [--inflight 50] [--rate 200] [--store local|s3|both]

``--store s3`` keeps the artifacts in an S3 bucket served by a local SeaweedFS (`weed`, from the
test extra; started as the tests start it, tests/support/seaweed.py); ``both`` runs local, then s3.
After the load, 100 sequential downloads of the model's file are timed (the store's read path).

Reads come from `wrk` (Debian's package; C, so the load generator doesn't eat the cores the
service needs), paced with a per-connection delay to the requested rate, over GET /v1/models/{id},
GET /v1/jobs/{id} and GET /v1/jobs?limit=20. Jobs are driven from Python: 50 submitted, each
replaced as soon as the job list shows it finished. A job is "lost" if it has not succeeded once
the run has drained (3 minutes at most).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.deploy import deployment  # noqa: E402
from benchmarks.service import tiny_onnx  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")
LUA = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["Authorization"] = "%s"})
end
delay = function() return %d end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%%d non2xx=%%d errors=%%d p50=%%.3f p95=%%.3f p99=%%.3f max=%%.3f\\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def drive_jobs(c: httpx.Client, model_id: str, args, stop: float) -> dict:
    body = {"model_id": model_id, "technique": "benchmark",
            "params": {"batch_sizes": [1, 4], "warmup": 2, "min_runs": 10, "min_seconds": 0.05, "max_seconds": 1}}
    submitted, inflight, submit_ms, errors = [], set(), [], 0

    def submit() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        r = c.post("/v1/jobs", json=body)
        submit_ms.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 202:
            errors += 1
            return
        submitted.append(r.json()["id"])
        inflight.add(r.json()["id"])

    for _ in range(args.inflight):
        submit()
    while time.monotonic() < stop:
        time.sleep(0.5)
        items = c.get("/v1/jobs", params={"limit": 200}).json()["items"]
        for job in items:
            if job["id"] in inflight and job["status"] in FINAL:
                inflight.discard(job["id"])
                if time.monotonic() < stop:
                    submit()
    drain = time.monotonic() + 180
    final = {}
    for job_id in submitted:
        while True:
            status = c.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in FINAL or time.monotonic() > drain:
                break
            time.sleep(0.5)
        final[job_id] = status
    return {"jobs": len(submitted), "succeeded": sum(s == "succeeded" for s in final.values()),
            "lost": sum(s != "succeeded" for s in final.values()), "submit_ms": submit_ms, "errors": errors}


@contextmanager
def store_env(store: str, tmp: Path) -> Iterator[dict[str, str]]:
    """Environment for the deployment's artifact store: none for the local folder; for s3, a
    SeaweedFS server with a bucket, and LATHE_ARTIFACTS_URL + the AWS variables pointing at it."""
    if store == "local":
        yield {}
        return
    from tests.support.seaweed import seaweed

    with seaweed(tmp / "s3", bucket="lathe-bench") as server:
        yield {"LATHE_ARTIFACTS_URL": f"s3://{server.bucket}/bench", **server.env}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--inflight", type=int, default=50)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--api-processes", type=int, default=2)
    ap.add_argument("--store", choices=["local", "s3", "both"], default="local",
                    help="where artifacts live: the local folder, an S3 bucket (SeaweedFS), or one run each")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed for the read load: apt-get install wrk")
    for store in (["local", "s3"] if args.store == "both" else [args.store]):
        run(args, store)


def run(args, store: str) -> None:
    connections = 24
    with tempfile.TemporaryDirectory() as tmp, store_env(store, Path(tmp)) as env, deployment(
            "production", Path(tmp), workers=2, api_processes=args.api_processes,
            LATHE_MAX_ACTIVE_JOBS_PER_TENANT=str(args.inflight * 2), **env) as (c, _env):
        p = Path(tmp) / "tiny.onnx"
        tiny_onnx(p)
        model_id = c.post("/v1/models", files={"file": ("tiny.onnx", p.read_bytes())}).json()["id"]
        first_job = c.post("/v1/jobs", json={"model_id": model_id, "technique": "benchmark",
                                             "params": {"batch_sizes": [1], "min_runs": 1, "min_seconds": 0}}).json()["id"]
        paths = ", ".join(f'"{u}"' for u in (f"/v1/models/{model_id}", f"/v1/jobs/{first_job}", "/v1/jobs?limit=20"))
        script = Path(tmp) / "reads.lua"
        # Each connection waits `delay` ms after each answer: rate = connections / (delay + latency);
        # 20 ms is the latency seen under this load. The achieved rate is printed, not assumed.
        script.write_text(LUA % (paths, c.headers["Authorization"], max(1, int(1000 * connections / args.rate) - 20)))
        stop = time.monotonic() + args.seconds
        out: dict = {}
        driver = threading.Thread(target=lambda: out.update(drive_jobs(c, model_id, args, stop)))
        driver.start()
        wrk = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{int(args.seconds)}s", "--timeout", "30s",
                              "-s", str(script), str(c.base_url).rstrip("/")], capture_output=True, text=True)
        driver.join()
        download_ms = []
        for _ in range(100):
            t0 = time.perf_counter()
            r = c.get(f"/v1/models/{model_id}/file")
            download_ms.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    m = re.search(r"RESULT requests=(\d+) non2xx=(\d+) errors=(\d+) p50=([\d.]+) p95=([\d.]+) p99=([\d.]+) max=([\d.]+)", wrk.stdout)
    if not m:
        raise SystemExit(f"wrk printed no result:\n{wrk.stdout}\n{wrk.stderr}")
    reads, non2xx, rerr = int(m[1]), int(m[2]), int(m[3])
    sl = np.array(out["submit_ms"])
    dl = np.array(download_ms)
    print(f"\nload, {store} store: {args.inflight} jobs in flight + reads paced at {args.rate:.0f}/s for {args.seconds:.0f} s "
          f"(PostgreSQL + Redis, 1 API with {args.api_processes} processes, 2 workers; "
          f"2 CPU cores shared with the load generators)")
    print(f"{'':22} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'reads (GET, wrk)':22} {reads:>7} {float(m[4]):>8.1f} {float(m[5]):>8.1f} {float(m[6]):>8.1f} {float(m[7]):>8.1f}")
    print(f"{'job submits (POST)':22} {len(sl):>7} {np.percentile(sl, 50):>8.1f} {np.percentile(sl, 95):>8.1f} "
          f"{np.percentile(sl, 99):>8.1f} {sl.max():>8.1f}")
    print(f"{'model downloads (GET)':22} {len(dl):>7} {np.percentile(dl, 50):>8.1f} {np.percentile(dl, 95):>8.1f} "
          f"{np.percentile(dl, 99):>8.1f} {dl.max():>8.1f}")
    print(f"reads {reads / args.seconds:.0f}/s, non-2xx {non2xx}, socket errors {rerr}; jobs submitted {out['jobs']}, "
          f"succeeded {out['succeeded']}, lost {out['lost']}, submit errors {out['errors']}")


if __name__ == "__main__":
    main()
