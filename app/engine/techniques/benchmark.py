"""Technique ``benchmark``: latency/throughput of one model over batch sizes x thread counts.

Module top imports only pydantic/stdlib-level engine modules: the API lists techniques and
validates params without loading onnxruntime; the heavy imports happen inside ``run()``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from app.engine.feeds import FeedSource
from app.engine.measure import measure_grid, peak_rss_bytes, reset_peak_rss, rss_bytes
from app.engine.params import MeasureParams
from app.engine.registry import Context, Result, Technique, register

SCHEMA_VERSION = 1


class BenchmarkParams(MeasureParams):
    """Latency grid for one model; inputs come from the job's dataset or are generated."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"batch_sizes": [1, 8, 32], "threads": [1]},
                {"batch_sizes": [1, 16], "threads": [1, 4], "dims": {"seq_len": 128},
                 "int_high": 30522},
            ]
        }
    )


@register
class Benchmark(Technique):
    name = "benchmark"
    description = (
        "Measure inference latency (p50/p90/p99) and throughput with onnxruntime for each "
        "batch size and thread count, with warm-up, on the job's dataset or generated inputs."
    )
    Params = BenchmarkParams
    needs_dataset = False
    produces_model = False

    def run(self, ctx: Context) -> Result:
        from app.engine.environment import describe_environment
        from app.engine.inspect import inspect_onnx
        from app.engine.session import providers_for

        params = ctx.params
        if not isinstance(params, BenchmarkParams):  # tolerate a plain dict from a caller
            params = BenchmarkParams.model_validate(params)
        ctx.progress(0.0, "loading")
        info = inspect_onnx(ctx.model_path)
        environment = describe_environment()
        notes = _thread_notes(params.threads, environment)
        _, device_note = providers_for(ctx.device)
        if device_note:
            notes.append(device_note)

        peak_scope = "job" if reset_peak_rss() else "process_lifetime"
        rss_before = rss_bytes()
        feeds = FeedSource(params, ctx.dataset_path)
        grid = measure_grid({"model": ctx.model_path}, params, feeds, device=ctx.device,
                            progress=ctx.progress, span=(0.02, 0.98), what=feeds.what)
        rss_after = rss_bytes()
        ctx.progress(0.99, "report")

        results = []
        for point in grid["points"]:
            stats = point["model"]
            results.append({"batch_size": point["batch_size"], "threads": point["threads"],
                            **{k: v for k, v in stats.items() if k != "batch_size"},
                            "input_shapes": point["input_shapes"]})
        report: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "technique": self.name,
            "model": {
                "size_bytes": ctx.model_path.stat().st_size,
                "parameter_count": info["parameter_count"],
                "opset": info["opset"],
            },
            "device": ctx.device,
            "provider": grid["provider"],
            "results": results,
            "skipped": grid["skipped"],
            # The first session's creation includes one-time costs (kernel registration...).
            "session_create_ms": results[0]["session_create_ms"],
            "memory": {
                "rss_before_session_bytes": rss_before,
                "rss_after_runs_bytes": rss_after,
                # Peak RSS of the worker process (Python, onnxruntime, every session of this
                # job, inputs); "job" scope when the kernel counter could be reset at start.
                "process_peak_rss_bytes": peak_rss_bytes(),
                "peak_scope": peak_scope,
            },
            "inputs": feeds.describe(grid["specs"]),
            "environment": environment,
            "notes": notes,
        }
        return Result(report=report)


def _thread_notes(threads: list[int], environment: dict[str, Any]) -> list[str]:
    """Say when a thread count exceeds the cores this process can use (results then measure
    contention, which users tend to read as "threads do not help")."""
    usable = environment.get("usable_cores") or environment.get("logical_cores") or 0
    limit = environment.get("cgroup_cpu_limit")
    if limit:
        usable = min(usable, max(1, int(limit))) if usable else max(1, int(limit))
    over = [t for t in threads if usable and t > usable]
    if not over:
        return []
    return [f"threads {over} exceed the {usable} core(s) available to this process; those "
            "points measure oversubscription"]
