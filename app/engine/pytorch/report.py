"""Parent vs result for the torch techniques: parameters, MACs, size, onnxruntime latency
measured in this run with the shared ``measure_grid`` (same inputs, interleaved rounds), accuracy or
fidelity, and a verdict that only claims what was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engine.params import MeasureParams
from app.engine.base import Context
from app.engine.data.feeds import FeedSource
from app.engine.measure.accuracy import compare_models
from app.engine.measure.latency import measure_grid
from app.engine.measure.speedup import overall_verdict, point_estimate
from app.engine.pytorch.macs import count_macs, count_parameters
from app.engine.quantize.report import compare_point
from app.engine.runtime.environment import describe_environment


def stats(path: Path, module: Any, sample: Any) -> dict[str, Any]:
    return {"parameter_count": count_parameters(module), "macs": count_macs(module, sample),
            "size_bytes": path.stat().st_size}


def compare(ctx: Context, params: MeasureParams, result: Path, evaluation_data: Path | None,
            span: tuple[float, float]) -> dict[str, Any]:
    """Latency grid and accuracy/fidelity of ``result`` against the job's model."""
    mid = span[0] + (span[1] - span[0]) * 0.3
    feeds = FeedSource(params, evaluation_data)
    evaluation = compare_models(result, ctx.model_path, feeds, samples=10_000, batch_size=64,
                                threads=max(params.threads), device=ctx.device,
                                progress=ctx.progress, span=(span[0], mid), stage="accuracy",
                                strict_labels=False)
    timing = FeedSource(params, ctx.dataset_path)
    grid = measure_grid({"parent": ctx.model_path, "result": result}, params, timing,
                        device=ctx.device, progress=ctx.progress, span=(mid, span[1]),
                        what=timing.what)
    return {"latency": [compare_point(p) for p in grid["points"]], "provider": grid["provider"],
            "host_load": grid["host_load"],
            "skipped": grid["skipped"], "accuracy": evaluation["accuracy"],
            "fidelity": {"source": evaluation["source"], "samples": evaluation["samples"],
                         "outputs": evaluation["fidelity"]["outputs"]},
            "inputs": timing.describe(grid["specs"])}


def verdict(parent: dict, result: dict, measured: dict, *, speed_claim: bool = True) -> dict:
    """``faster`` from the interleaved speedup intervals of every point (True only when each
    excludes 1; None when the measurement could not tell, e.g. on a busy host)."""
    points = measured["latency"]
    speedups = [p["speedup"] for p in points]
    speed = overall_verdict([point_estimate(p) for p in points]) if speedups else None
    faster = speed["faster"] if speed_claim and speed else False
    smaller = result["size_bytes"] < parent["size_bytes"]
    acc = measured.get("accuracy") or {}
    macs = (f"MACs x{result['macs'] / max(parent['macs'], 1):.2f}, "
            if result.get("macs") is not None and parent.get("macs") is not None else "")
    parts = [f"{result['parameter_count']:,} parameters (parent {parent['parameter_count']:,}), "
             f"{macs}size x{result['size_bytes'] / parent['size_bytes']:.2f}"]
    if speedups:
        best = max(points, key=lambda p: p["batch_size"])
        parts.append(f"p50 at batch {best['batch_size']}: {best['parent_p50_ms']} ms -> "
                     f"{best['result_p50_ms']} ms (x{best['speedup']:.2f}, measured in this run)")
    if "model" in acc and "reference" in acc and "top1" in acc["model"]:
        parts.append(f"top-1 {acc['reference']['top1'] * 100:.2f}% -> "
                     f"{acc['model']['top1'] * 100:.2f}%")
    if speed_claim and speed and faster is False:
        parts.append("NOT faster at every measured point")
    elif speed_claim and speed and faster is None:
        parts.append("speed inconclusive: " + "; ".join(
            f"bs={p['batch_size']}: {point_estimate(p)['reason']}" for p in points
            if point_estimate(p)["verdict"] == "inconclusive"))
    out = {"faster": faster, "smaller": smaller, "summary": "; ".join(parts) + "."}
    if speed_claim and speed:
        out["speed"] = speed["verdict"]
    return out


def environment() -> dict[str, Any]:
    import torch

    env = describe_environment()
    env["torch"] = torch.__version__
    return env
