"""The same parent-vs-candidate comparison on a quiet host and beside a CPU hog, timed the old
way (parent fully, then candidate: p50 / p50) and the new way (``speedup.time_paired``:
interleaved rounds, median per-round ratio with its 95% interval, host load recorded).

Pairs (built here, 1 intra-op thread, batch 32):
  * quantize: a MatMul-heavy MLP (4 x 384->1536->384 blocks, like a transformer's FFN) vs
    onnxruntime's ``quantize_dynamic`` per-channel of it;
  * branch: an MLP (4 x 1024->1024) carrying a redundant branch (2 more such layers) vs the
    same MLP without it: about 1.5x faster, with runs longer than a scheduler time slice, as
    MiniLM's at batch 32 are (short runs slip between other processes' slices and hide load).

Scenarios: no-hog (whatever else runs on the host: the "others' CPU" column says how quiet
that was); hog (2 spinning processes for the whole measurement); hog-arrives (the hog starts
once half the measurement is done: in the old method, exactly when the candidate's timing
starts, which is how a shared worker produced "NOT faster ... 0.35x"). The speedup column
says its basis: wall time, or CPU time when the host was busy (``speedup.estimate``).

    .venv/bin/python benchmarks/busy_host.py [--pairs quantize branch] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.measure.latency import time_runs  # noqa: E402
from app.engine.measure.speedup import HostLoadProbe, time_paired  # noqa: E402
from app.engine.params import MeasureParams  # noqa: E402
from app.engine.runtime.sessions import create_session  # noqa: E402

BATCH = 32
HOGS = 2


def export(model, path: Path, features: int) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, features),), str(path), input_names=["x"],
                          output_names=["out"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return path


def build_pairs(d: Path) -> dict[str, tuple[Path, Path, int]]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(*[m for _ in range(4) for m in (
        torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))])
    fp32 = export(ffn, d / "ffn.onnx", 384)
    int8 = d / "ffn-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)

    class Branchy(torch.nn.Module):
        def __init__(self, heavy: bool) -> None:
            super().__init__()
            self.heavy = heavy
            self.head = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)])
            self.branch = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(2)])

        def forward(self, x):
            y = self.head(x)
            return y + 0.0 * self.branch(x).sum(dim=1, keepdim=True) if self.heavy else y

    torch.manual_seed(0)
    heavy = export(Branchy(True), d / "heavy.onnx", 1024)
    torch.manual_seed(0)
    light = export(Branchy(False), d / "light.onnx", 1024)
    return {"quantize": (fp32, int8, 384), "branch": (heavy, light, 1024)}


class Hog:
    """HOGS spinning processes, started now or after ``delay`` seconds; ours to stop."""

    def __init__(self, delay: float | None = 0.0) -> None:
        self.procs: list[subprocess.Popen] = []
        self.timer = None
        if delay == 0.0:
            self.start()
        elif delay is not None:
            self.timer = threading.Timer(delay, self.start)
            self.timer.start()

    def start(self) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
        time.sleep(0.2)  # let them reach the spin loop

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def old_way(parent: Path, cand: Path, feed: dict, params: MeasureParams, scenario: str) -> dict:
    """What measure_grid did before: each model timed to completion, one after the other."""
    sessions = [create_session(p, 1, "cpu")[0] for p in (parent, cand)]
    hog = Hog(0.0 if scenario == "hog" else None)
    probe = HostLoadProbe().start()
    try:
        a = time_runs(sessions[0], feed, batch_size=BATCH, params=params)
        if scenario == "hog-arrives":
            hog.start()
        b = time_runs(sessions[1], feed, batch_size=BATCH, params=params)
    finally:
        hog.stop()
    load = probe.stop()
    ratio = a["p50_ms"] / b["p50_ms"]
    # the old rule (quantize.analysis before): faster only if the result's p50 beat the parent's
    return {"speedup": ratio, "ci": "n/a", "verdict": "faster" if ratio > 1.0 else "NOT faster (slower)",
            "wall": ratio, "cpu": a["cpu_p50_ms"] / b["cpu_p50_ms"], "basis": "wall",
            "others": load["others_cpu_percent"]}


def new_way(parent: Path, cand: Path, feed: dict, params: MeasureParams, scenario: str,
            seconds: float) -> dict:
    sessions = {"parent": create_session(parent, 1, "cpu")[0], "candidate": create_session(cand, 1, "cpu")[0]}
    hog = Hog({"no-hog": None, "hog": 0.0, "hog-arrives": seconds}[scenario])
    try:
        out = time_paired(sessions, feed, batch_size=BATCH, params=params)
    finally:
        hog.stop()
    est = out["timings"]["candidate"]["vs_reference"]
    return {"speedup": est["speedup"], "ci": f"{est['ci_low']:.2f}-{est['ci_high']:.2f}",
            "verdict": est["verdict"], "cpu": est["cpu_speedup"], "wall": est["wall_speedup"],
            "basis": est["basis"],
            "others": out["host_load"]["others_cpu_percent"], "rounds": est["rounds"],
            "reason": est["reason"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["quantize", "branch"])
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per model")
    args = ap.parse_args()
    params = MeasureParams(batch_sizes=[BATCH], warmup=5, min_runs=30, max_runs=100_000,
                           min_seconds=args.seconds, max_seconds=args.seconds * 2)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = build_pairs(Path(tmp))
        rows, reasons = [], []
        for name in args.pairs:
            parent, cand, features = pairs[name]
            feed = {"x": np.random.default_rng(0).standard_normal((BATCH, features)).astype(np.float32)}
            for scenario in ("no-hog", "hog", "hog-arrives"):
                old = old_way(parent, cand, feed, params, scenario)
                new = new_way(parent, cand, feed, params, scenario, args.seconds)
                for method, r in (("sequential p50/p50", old), ("interleaved rounds", new)):
                    rows.append((name, scenario, method, f"{r['speedup']:.2f}x ({r['basis']})", r["ci"],
                                 f"{r['wall']:.2f}x", f"{r['cpu']:.2f}x" if r["cpu"] else "n/a",
                                 f"{r['others']:.0f}%", r["verdict"]))
                reasons.append(f"{name}/{scenario}: {new['reason']}")
    head = ("pair", "host", "method", "speedup", "95% CI", "wall", "CPU", "others' CPU", "verdict")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print()
    for line in reasons:
        print(line)


if __name__ == "__main__":
    main()
