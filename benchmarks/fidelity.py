"""Are the service's numbers the ones a user would measure? The p50 a `benchmark` job reports
vs a plain ONNX Runtime timing loop over the same model file, the same inputs and threads, for
two models at batch 1 and 32. Target: within +-5%.

    .venv/bin/python benchmarks/fidelity.py

The plain loop runs in this process right after each job (the worker is idle then), with the
session options a user would pick for a 1-thread benchmark.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.deploy import deployment, wait_job  # noqa: E402


def build_models(folder: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    out = {}
    for name, model, shape in (("mlp 64-512-512-10", mlp, (64,)), ("cnn 2x conv 8x8", cnn, (1, 8, 8))):
        path = folder / f"{name.split()[0]}.onnx"
        torch.onnx.export(model, (torch.randn(2, *shape),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
        out[name] = (path, "x", shape)
    return out


def plain_p50(path: Path, feed: dict, runs: int = 2000, seconds: float = 3.0) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(20):
        s.run(None, feed)
    times, stop = [], time.perf_counter() + seconds
    while len(times) < runs or time.perf_counter() < stop:
        t0 = time.perf_counter_ns()
        s.run(None, feed)
        times.append(time.perf_counter_ns() - t0)
        if time.perf_counter() > stop + seconds:
            break
    return float(np.percentile(np.array(times) / 1e6, 50))


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, deployment("embedded", Path(tmp)) as (c, _env):
        for name, (path, input_name, shape) in build_models(Path(tmp)).items():
            x = np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32)
            npz = Path(tmp) / "d.npz"
            np.savez(npz, **{input_name: x})
            model = c.post("/v1/models", files={"file": (path.name, path.read_bytes())}).json()
            ds = c.post("/v1/datasets", files={"file": ("d.npz", npz.read_bytes())}).json()
            for batch in (1, 32):
                job = c.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"], "technique": "benchmark",
                                               "params": {"batch_sizes": [batch], "threads": [1], "ci_target": 0.01,
                                                          "min_seconds": 2, "max_seconds": 10}}).json()
                job = wait_job(c, job["id"])
                point = c.get(f"/v1/jobs/{job['id']}/report").json()["results"][0]
                plain = plain_p50(path, {input_name: x[:batch]})
                rows.append((name, batch, point["p50_ms"], plain, point["runs"], point["ci_rel_half_width"]))
    print(f"\n{'model':20} {'batch':>5} {'service p50 ms':>15} {'plain ORT p50 ms':>17} {'diff':>7} {'runs':>6} {'CI +-':>6}")
    worst = 0.0
    for name, batch, svc, plain, runs, ci in rows:
        diff = (svc - plain) / plain
        worst = max(worst, abs(diff))
        print(f"{name:20} {batch:>5} {svc:>15.4f} {plain:>17.4f} {diff:>+7.1%} {runs:>6} {ci:>6.1%}")
    print(f"largest difference {worst:.1%} (target <= 5%): {'PASS' if worst <= 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
