"""Speedups that survive a busy host: interleaved per-round ratios with an interval, CPU time
and host load recorded, and a verdict that says "inconclusive" rather than something wrong.

The models are real ONNX exports: a small MLP, and the same MLP with a redundant heavy branch
(its result multiplied by zero) that the light one lacks, so the light one is genuinely
faster by a wide margin. Assertions are about direction and consistency, never about times.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from app.engine.measure.latency import measure_grid
from app.engine.measure.speedup import estimate, merge_host_load, overall_verdict, speed_verdict
from app.engine.measure.stats import median, median_ci, median_ci_rel, throughput
from app.engine.params import MeasureParams

PARAMS = MeasureParams(batch_sizes=[8], warmup=2, min_runs=20, max_runs=400, min_seconds=0.05,
                       max_seconds=4.0)


def _export(path: Path, heavy: bool) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
            self.branch = torch.nn.Sequential(torch.nn.Linear(64, 512), *[torch.nn.Linear(512, 512) for _ in range(6)])

        def forward(self, x):
            y = self.head(x)
            if heavy:  # computed, then thrown away: what a graph cleanup would remove
                y = y + 0.0 * self.branch(x).sum(dim=1, keepdim=True)
            return y

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, 64),), str(path), input_names=["x"],
                          output_names=["out"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("speedup")
    return {"heavy": _export(d / "heavy.onnx", True), "light": _export(d / "light.onnx", False)}


def _feed(specs, batch, start=0):
    import numpy as np

    return {"x": np.random.default_rng(start).standard_normal((batch, 64)).astype(np.float32)}


# Beside a hog, a window of 1.5 s at least: CPU time is counted in 10 ms ticks, and a window
# of a tenth of a second reads another process's load too coarsely to judge the host.
HOG_PARAMS = PARAMS.model_copy(update={"min_seconds": 1.5, "max_runs": 100_000})


def _compare(parent: Path, result: Path, params: MeasureParams = PARAMS) -> dict:
    grid = measure_grid({"parent": parent, "result": result}, params, _feed, device="cpu",
                        progress=lambda f, s: None)
    return grid


# --- statistics and verdicts (pure) ---------------------------------------------------------

def test_median_interval_from_order_statistics():
    assert median_ci([1.0] * 5) == (None, None)  # 5 values cannot give a 95% interval
    assert median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)  # n=6: min and max (96.9%)
    values = [float(v) for v in range(1, 101)]
    lo, hi = median_ci(values)
    assert (lo, hi) == (40.0, 61.0)  # the textbook ranks for n=100 at 95%
    assert lo < median(values) < hi
    # the normal approximation used above 300 values agrees with the exact ranks near there
    exact, approx = median_ci(list(range(300))), median_ci(list(range(301)))
    assert abs(exact[0] - approx[0]) <= 1 and abs(exact[1] - approx[1]) <= 2
    assert median_ci_rel([10.0] * 20) == 0.0 and median_ci_rel([1.0, 2.0]) == float("inf")


def test_items_per_second_is_batch_over_p50():
    assert throughput(32, 4.0) == 8000.0 and throughput(1, 0.5) == 2000.0
    assert throughput(8, 0.0) is None


def test_verdict_needs_an_interval_that_excludes_one():
    assert speed_verdict(1.5, 1.3, 1.7)["verdict"] == "faster"
    assert speed_verdict(0.6, 0.5, 0.7)["verdict"] == "slower"
    v = speed_verdict(1.1, 0.9, 1.3)
    assert v["verdict"] == "inconclusive" and "straddles 1" in v["reason"]
    v = speed_verdict(1.02, 1.01, 1.03)  # excludes 1, but by less than the noise threshold
    assert v["verdict"] == "inconclusive" and "within measurement noise" in v["reason"]
    v = speed_verdict(0.98, 0.97, 0.99)
    assert v["verdict"] == "inconclusive" and "slower by under 3%" in v["reason"]
    v = speed_verdict(None, None, None)
    assert v["verdict"] == "inconclusive" and "too few" in v["reason"]


def test_a_busy_host_is_judged_on_cpu_time_checked_by_wall_time():
    busy = {"busy": True, "summary": "host busy: other processes used 66% of the CPU"}
    # CPU time says slower, wall time says faster: no verdict
    v = speed_verdict(0.6, 0.5, 0.7, basis="cpu", check=1.4, host_load=busy)
    assert v["verdict"] == "inconclusive"
    assert "wall-time ratio (1.40x) does not agree" in v["reason"] and "66%" in v["reason"]
    assert speed_verdict(0.6, 0.5, 0.7, basis="cpu", check=0.62, host_load=busy)["verdict"] == "slower"
    assert speed_verdict(1.6, 1.5, 1.7, basis="cpu", check=1.5, host_load=busy)["verdict"] == "faster"
    v = speed_verdict(1.6, 1.5, 1.7, basis="wall", check=None, host_load=busy)
    assert v["verdict"] == "inconclusive" and "CPU-time ratio (not measured)" in v["reason"]
    v = speed_verdict(3.0, 2.9, 3.1, basis="cpu", check=8.0, host_load=busy)  # long runs stretched
    assert v["verdict"] == "faster" and "the wall-time ratio was 8.00x" in v["reason"]
    # on a quiet host the wall-time interval alone decides
    quiet = {"busy": False, "summary": "host quiet"}
    assert speed_verdict(0.6, 0.5, 0.7, check=1.4, host_load=quiet)["verdict"] == "slower"


def test_the_estimate_switches_to_cpu_time_on_a_busy_host():
    busy, quiet = {"busy": True, "summary": "busy"}, {"busy": False, "summary": "quiet"}
    wall, cpu = [8.0 + 0.1 * (i % 3) for i in range(20)], [3.0 + 0.01 * (i % 5) for i in range(20)]
    est = estimate(wall, cpu, quiet)
    assert est["basis"] == "wall" and est["speedup"] == est["wall_speedup"] == 8.1
    assert est["ci_low"] <= 8.1 <= est["ci_high"] and est["verdict"] == "faster"
    est = estimate(wall, cpu, busy)
    assert est["basis"] == "cpu" and est["speedup"] == est["cpu_speedup"] == 3.02
    assert est["wall_speedup"] == 8.1 and est["verdict"] == "faster" and est["rounds"] == 20
    assert estimate([0.5] * 20, cpu, busy)["verdict"] == "inconclusive"  # they disagree
    assert estimate(wall, [], busy)["basis"] == "wall"  # no CPU ratios: wall, unchecked...
    assert estimate(wall, [], busy)["verdict"] == "inconclusive"  # ...so no verdict
    assert estimate(wall[:5], cpu[:5], quiet)["verdict"] == "inconclusive"  # too few rounds


def test_points_combine_into_one_verdict():
    f, s, i = ({"verdict": k} for k in ("faster", "slower", "inconclusive"))
    assert overall_verdict([f, f]) == {"verdict": "faster", "faster": True}
    assert overall_verdict([f, i]) == {"verdict": "inconclusive", "faster": None}
    assert overall_verdict([s, i]) == {"verdict": "slower", "faster": False}
    assert overall_verdict([f, s]) == {"verdict": "mixed", "faster": False}


def test_host_load_of_several_points_keeps_the_busy_one():
    def load(others, share, busy, wall):
        return {"cores": 2, "wall_s": wall, "own_cpu_s": share * wall, "own_cpu_share": share,
                "others_cpu_percent": others, "others_cores": others / 50, "steal_percent": 0.0,
                "loadavg_1m": [1.0, 2.0], "busy": busy, "summary": f"{others}% by others"}

    merged = merge_host_load([load(10.0, 1.0, False, 3.0), load(70.0, 0.5, True, 1.0)])
    assert merged["busy"] is True and (merged["busy_points"], merged["points"]) == (1, 2)
    assert merged["others_cpu_percent"] == 25.0  # weighted by wall time: (10 * 3 + 70) / 4
    assert merged["summary"] == "host busy at 1 of 2 measured points; worst: 70.0% by others"
    assert merge_host_load([load(5.0, 1.0, False, 1.0)])["busy"] is False
    assert merge_host_load([]) is None


# --- measured on real models ----------------------------------------------------------------

def test_interleaved_ratio_and_interval_on_a_known_pair(pair):
    for parent, result, direction in (("heavy", "light", "faster"), ("light", "heavy", "slower")):
        grid = _compare(pair[parent], pair[result])
        point = grid["points"][0]
        est = point["result"]["vs_reference"]
        assert est["reference"] == "parent" and "vs_reference" not in point["parent"]
        assert est["ci_low"] <= est["speedup"] <= est["ci_high"]
        assert est["rounds"] >= 10 and est["verdict"] == direction, est
        assert (est["speedup"] > 1) == (direction == "faster")
        assert (est["cpu_speedup"] > 1) == (direction == "faster")
        # interleaved: both models ran the same number of times, in the same rounds
        assert point["parent"]["runs"] == point["result"]["runs"] >= PARAMS.min_runs
        # items/s is batch / p50 (p50 as reported is rounded to 0.1 us)
        assert point["result"]["throughput_items_per_s"] == pytest.approx(
            throughput(8, point["result"]["p50_ms"]), rel=0.05)
        assert point["result"]["cpu_p50_ms"] > 0
        load = point["host_load"]
        assert load["cores"] >= 1 and 0 <= load["others_cpu_percent"] <= 100 and load["summary"]
        assert grid["host_load"]["points"] == 1


def test_a_cpu_hog_never_makes_a_faster_model_slower(pair):
    """The issue's test: two busy processes beside the measurement (as many as this host has
    cores, more on a bigger one is not needed: one thread is timed). The genuinely faster model
    may come out "inconclusive", never "slower", and the host load records the hog."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)  # let them reach their loop before timing starts
        grid = _compare(pair["heavy"], pair["light"], HOG_PARAMS)
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait()
    est = grid["points"][0]["result"]["vs_reference"]
    assert est["verdict"] in ("faster", "inconclusive"), est
    load = grid["host_load"]
    assert load["busy"] is True and load["busy_points"] == 1, load
    assert load["others_cores"] >= 1.0, load  # two spinning processes, at least one core's worth
    assert "host busy" in load["summary"]


def test_a_quantization_beside_a_cpu_hog_is_never_called_slower(make_ctx, tmp_path):
    """quantize.dynamic of a MatMul-heavy MLP (FFN blocks: integer MatMuls beat float ones at
    every batch on x86) with two spinning processes beside the whole job: its report may say
    faster or inconclusive at each point, never slower, and records the busy host."""
    import torch

    from app.engine.quantize.dynamic import QuantizeDynamic, QuantizeDynamicParams

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(*[m for _ in range(2) for m in (
        torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))])
    path = tmp_path / "ffn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ffn.eval(), (torch.randn(2, 256),), str(path), input_names=["x"],
                          output_names=["out"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    params = QuantizeDynamicParams(batch_sizes=[1, 16], per_channel=True, warmup=2, min_runs=20,
                                   max_runs=100_000, min_seconds=1.5, max_seconds=4.0)  # see HOG_PARAMS
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        report = QuantizeDynamic().run(make_ctx(path, params)).report
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait()
    kinds = [c["speedup_ci"]["verdict"] for c in report["comparison"]]
    assert "slower" not in kinds, report["comparison"]
    assert report["verdict"]["faster"] is not False and "NOT faster" not in report["verdict"]["summary"]
    assert report["verdict"]["speed"] in ("faster", "inconclusive")
    assert report["host_load"]["busy"] is True and report["host_load"]["others_cores"] >= 0.5
    for c in report["comparison"]:
        assert c["host_load"]["busy"] is True
        assert c["speedup_ci"]["ci_low"] <= c["speedup"] <= c["speedup_ci"]["ci_high"]
