"""Load: 50 jobs kept in flight plus 200 reads/s for a minute, against the production shape
(PostgreSQL + Redis, one `lathe api`, two `lathe worker`s). Prints errors, lost jobs and
latency percentiles.

    .venv/bin/python benchmarks/load.py [--seconds 60] [--inflight 50] [--rate 200]

A job is "lost" if it has not succeeded once the run has drained (3 minutes at most).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.deploy import deployment  # noqa: E402
from benchmarks.service import tiny_onnx  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


async def run(base: str, headers: dict, model_id: str, args) -> dict:
    """Open loop: a read every 1/rate s whatever the latency. Reads rotate over the jobs in
    flight (that is also how the load sees a job finish and replaces it), the job list and
    the model."""
    read_lat: list[float] = []
    submit_lat: list[float] = []
    errors: dict[str, int] = {}
    submitted: list[str] = []
    inflight: list[str] = []
    stop = time.monotonic() + args.seconds
    body = {"model_id": model_id, "technique": "benchmark",
            "params": {"batch_sizes": [1, 4], "warmup": 2, "min_runs": 10, "min_seconds": 0.05}}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as c:

        def err(kind: str) -> None:
            errors[kind] = errors.get(kind, 0) + 1

        async def submit() -> None:
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/jobs", json=body)
            except httpx.HTTPError as exc:
                err(f"POST {type(exc).__name__}")
                return
            submit_lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 202:
                err(f"POST /v1/jobs {r.status_code}")
                return
            submitted.append(r.json()["id"])
            inflight.append(r.json()["id"])

        async def one_read(i: int) -> None:
            job_id = inflight[i % len(inflight)] if inflight and i % 5 < 3 else None
            url = f"/v1/jobs/{job_id}" if job_id else "/v1/jobs?limit=20" if i % 5 == 3 else f"/v1/models/{model_id}"
            t0 = time.perf_counter()
            try:
                r = await c.get(url)
            except httpx.HTTPError as exc:
                err(f"GET {type(exc).__name__}")
                return
            read_lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                err(f"GET {r.status_code}")
            elif job_id and r.json()["status"] in FINAL and job_id in inflight:
                inflight.remove(job_id)
                if time.monotonic() < stop:
                    await submit()  # keep `inflight` jobs going

        await asyncio.gather(*[submit() for _ in range(args.inflight)])
        tasks, i, t0 = [], 0, time.monotonic()
        while time.monotonic() < stop:
            tasks.append(asyncio.create_task(one_read(i)))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
        await asyncio.gather(*tasks)
        sent_reads = i
        drain_until = time.monotonic() + 180  # let the jobs still in flight finish
        final: dict[str, str] = {}
        for job_id in submitted:
            while True:
                status = (await c.get(f"/v1/jobs/{job_id}")).json()["status"]
                if status in FINAL or time.monotonic() > drain_until:
                    break
                await asyncio.sleep(0.5)
            final[job_id] = status
    lost = sum(1 for s in final.values() if s != "succeeded")
    return {"reads": sent_reads, "read_lat": read_lat, "submit_lat": submit_lat, "errors": errors,
            "jobs": len(submitted), "succeeded": sum(s == "succeeded" for s in final.values()), "lost": lost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--inflight", type=int, default=50)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--api-processes", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, deployment(
            "production", Path(tmp), workers=2, api_processes=args.api_processes,
            LATHE_MAX_ACTIVE_JOBS_PER_TENANT=str(args.inflight * 2)) as (client, _env):
        p = Path(tmp) / "tiny.onnx"
        tiny_onnx(p)
        model_id = client.post("/v1/models", files={"file": ("tiny.onnx", p.read_bytes())}).json()["id"]
        t0 = time.monotonic()
        r = asyncio.run(run(str(client.base_url), dict(client.headers), model_id, args))
        elapsed = time.monotonic() - t0
    rl, sl = np.array(r["read_lat"]), np.array(r["submit_lat"])
    print(f"\nload: {args.inflight} jobs in flight + {args.rate:.0f} reads/s for {args.seconds:.0f} s "
          f"(PostgreSQL + Redis, 1 API with {args.api_processes} processes, 2 workers; "
          f"2 CPU cores shared with the load generator)")
    print(f"{'':22} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, a in (("reads (GET)", rl), ("job submits (POST)", sl)):
        print(f"{name:22} {len(a):>7} {np.percentile(a, 50):>8.1f} {np.percentile(a, 95):>8.1f} "
              f"{np.percentile(a, 99):>8.1f} {a.max():>8.1f}")
    print(f"reads sent {r['reads']} ({r['reads'] / args.seconds:.0f}/s); jobs submitted {r['jobs']}, "
          f"succeeded {r['succeeded']}, lost {r['lost']}; errors {sum(r['errors'].values())} {r['errors'] or ''}; "
          f"wall {elapsed:.0f} s")


if __name__ == "__main__":
    main()
