"""Technique ``benchmark``: latency/throughput of one model over batch sizes x thread counts.

Module top imports only pydantic/stdlib-level engine modules: the API lists techniques and
validates params without loading onnxruntime; the heavy imports happen inside ``run()``.
"""

from __future__ import annotations

from typing import Any

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.fields import FieldInfo

from app.engine.data.feeds import FeedSource
from app.engine.measure.latency import measure_grid, peak_rss_bytes, reset_peak_rss, rss_bytes
from app.engine.params import MeasureParams
from app.engine.base import Context, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked


def _field(name: str, value: Any) -> Any:
    """The same field as MeasureParams (bounds, description) with this technique's default."""
    base = MeasureParams.model_fields[name]
    return FieldInfo.merge_field_infos(base, default=value, json_schema_extra={"examples": [value]})


class BenchmarkParams(MeasureParams):
    """A sweep over batch sizes x threads x providers; inputs from the job's dataset or generated.
    Each point is repeated until its p50 is known to +-ci_target (or max_seconds runs out)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"batch_sizes": [1, 8, 32], "threads": [1]},
                {"batch_sizes": [1, 8, 32, 64], "threads": [1, 2], "max_latency_ms": 20},
                {"batch_sizes": [1, 16], "threads": [1, 4], "dims": {"seq_len": 128},
                 "int_high": 30522},
            ]
        }
    )

    ci_target: float | None = _field("ci_target", 0.02)
    max_runs: int = _field("max_runs", 100_000)
    max_seconds: float = _field("max_seconds", 10.0)
    providers: list[Literal["cpu", "cuda", "tensorrt"]] | None = Field(
        default=None, min_length=1, max_length=3,
        description="Execution providers to sweep; null = every one this worker has for the "
        "job's device (cpu: CPU; gpu: TensorRT and CUDA when present). Missing ones are noted.",
        json_schema_extra={"examples": [None, ["cuda", "tensorrt"]]},
    )
    max_latency_ms: float | None = Field(
        default=None, gt=0, le=600_000,
        description="Latency SLA (on each point's p99): the report recommends the batch size, "
        "threads and provider with the highest throughput whose p99 is within it, or says none is.",
        json_schema_extra={"examples": [None, 20.0]},
    )
    min_throughput: float | None = Field(
        default=None, gt=0,
        description="Optional second SLA: items per second the recommendation must reach.",
        json_schema_extra={"examples": [None, 1000.0]},
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
        from app.engine.runtime.environment import describe_environment
        from app.engine.runtime.model_info import inspect_onnx
        from app.engine.runtime.sessions import sweep_providers

        params = self.params_of(ctx)
        ctx.progress(0.0, "loading")
        info = inspect_onnx(ctx.model_path)
        environment = describe_environment()
        notes = _thread_notes(params.threads, environment)
        providers, missing = sweep_providers(ctx.device, params.providers)
        notes.extend(missing)
        if ctx.device == "gpu" and providers == ["CPUExecutionProvider"]:
            notes.append("device 'gpu' was requested but this onnxruntime build has neither "
                         "CUDAExecutionProvider nor TensorrtExecutionProvider; measured on CPU")

        peak_scope = "job" if reset_peak_rss() else "process_lifetime"
        rss_before = rss_bytes()
        feeds = FeedSource(params, ctx.dataset_path)
        grid = measure_grid({"model": ctx.model_path}, params, feeds, device=ctx.device,
                            progress=ctx.progress, span=(0.02, 0.98), what=feeds.what,
                            providers=providers)
        rss_after = rss_bytes()
        ctx.progress(0.99, "report")

        results = []
        for point in grid["points"]:
            stats = point["model"]
            results.append({"batch_size": point["batch_size"], "threads": point["threads"],
                            "provider": point["provider"],
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
            "noisy_points": sum(1 for r in results if r.get("noisy")),
            "host_load": grid["host_load"],
            "recommendation": recommend(results, params.max_latency_ms, params.min_throughput),
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
        return Result(report=checked(report))


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


def recommend(results: list[dict[str, Any]], max_latency_ms: float | None,
              min_throughput: float | None) -> dict[str, Any]:
    """The point with the highest throughput whose p99 meets the SLA (p99, not p50: an SLA is
    about the slow requests too)."""
    from app.engine.measure.stats import tail_flag

    sla = {"max_latency_ms": max_latency_ms, "min_throughput": min_throughput, "latency_stat": "p99"}
    ok = [r for r in results
          if (max_latency_ms is None or r["p99_ms"] <= max_latency_ms)
          and (min_throughput is None or r["throughput_items_per_s"] >= min_throughput)]
    # A p99 far above its p50 is interference more often than the model: say so wherever it
    # decided something (the pick, or a point the SLA turned down on that p99 alone).
    flags = [f"batch {r['batch_size']}, {r['threads']} thread(s): {flag}" for r in results
             if (flag := tail_flag(r["p50_ms"], r["p99_ms"]))
             and max_latency_ms is not None and r["p99_ms"] > max_latency_ms]
    if not ok:
        fastest = min(results, key=lambda r: r["p99_ms"])
        return {"sla": sla, "best": None, "flags": flags, "reason": (
            f"no measured point meets the SLA; the lowest p99 was {fastest['p99_ms']} ms "
            f"(batch {fastest['batch_size']}, {fastest['threads']} thread(s)) at "
            f"{fastest['throughput_items_per_s']} items/s")}
    best = max(ok, key=lambda r: r["throughput_items_per_s"])
    if flag := tail_flag(best["p50_ms"], best["p99_ms"]):
        flags.insert(0, f"the recommended point: {flag}")
    pick = {k: best[k] for k in ("batch_size", "threads", "provider", "p50_ms", "p99_ms", "throughput_items_per_s")}
    why = "highest throughput" + (f" with p99 <= {max_latency_ms} ms" if max_latency_ms is not None else "")
    if min_throughput is not None:
        why += f" and >= {min_throughput} items/s"
    noisy = " (this point is noisy: re-run before relying on it)" if best.get("noisy") else ""
    return {"sla": sla, "best": pick, "flags": flags,
            "reason": f"{why} of {len(results)} measured points{noisy}"}
