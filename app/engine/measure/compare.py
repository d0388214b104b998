"""Technique ``compare``: several models benchmarked in one process, interleaved, on the same
inputs, with ratios to the first (the job's model) and, given a dataset, their accuracy.

Module top imports only pydantic/stdlib-level modules; onnxruntime inside ``run()``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from app.engine.data.feeds import FeedSource
from app.engine.params import MeasureParams, ModelId
from app.engine.base import Context, Result, Technique, register
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.errors import UnsupportedModel


class CompareParams(MeasureParams):
    """The job's model first, then ``model_ids``; every point times all of them in rounds."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model_ids": ["0193a1b2c3d4e5f60718293a4b5c6d81"], "batch_sizes": [1, 32]}]})

    model_ids: list[ModelId] = Field(
        min_length=1, max_length=7, description="Models to compare with the job's model (ids from /v1/models).",
        json_schema_extra={"examples": [["0193a1b2c3d4e5f60718293a4b5c6d81"]]})
    ci_target: float | None = Field(default=0.02, gt=0.0, le=0.5, description=(
        "Repeat rounds until every model's p50 is known to this relative +-95% interval "
        "(or max_seconds per model runs out)."))
    accuracy_samples: int = Field(default=512, ge=1, le=100_000, description=(
        "With a dataset: samples used for each model's accuracy (labels) and fidelity to the first."))


@register
class Compare(Technique):
    name = "compare"
    description = ("Benchmark several models in one worker process, interleaved (A B C, C B A, ...) on the "
                   "same inputs, with speedups over the job's model (median per-round ratio, 95% interval) and accuracy on the dataset if given.")
    Params = CompareParams
    model_params = ("model_ids",)

    def run(self, ctx: Context) -> Result:
        from app.engine.runtime.environment import describe_environment
        from app.engine.measure.accuracy import compare_models
        from app.engine.measure.speedup import merge_host_load, time_paired
        from app.engine.runtime.inputs import batch_conflict, input_specs
        from app.engine.runtime.sessions import create_session, sweep_providers, used_provider

        params: CompareParams = self.params_of(ctx)
        own = ctx.model_id or "job-model"
        ids = [own, *(i for i in dict.fromkeys(params.model_ids) if i != own)]
        paths = {own: ctx.model_path, **{i: ctx.models[i] for i in params.model_ids}}
        feeds = FeedSource(params, ctx.dataset_path)
        providers, notes = sweep_providers(ctx.device, None)
        grid = [(p, t, b) for p in providers for t in params.threads for b in params.batch_sizes]
        points, skipped = [], []
        for n, (provider, threads, batch) in enumerate(grid):
            stage = f"compare bs={batch} threads={threads}"
            ctx.progress(0.7 * n / len(grid), stage)
            sessions = {i: create_session(paths[i], threads, ctx.device, provider)[0] for i in ids}
            specs = input_specs(sessions[own])
            if conflict := batch_conflict(specs, batch):
                skipped.append({"batch_size": batch, "reason": conflict})
                continue
            paired = time_paired(sessions, feeds(specs, batch), batch_size=batch, params=params,
                                 reference=own, threads=threads, what=feeds.what,
                                 tick=lambda: ctx.progress(0.7 * n / len(grid), stage))
            results = paired["timings"]
            first = results[own]["p50_ms"]
            points.append({"batch_size": batch, "threads": threads, "provider": used_provider(sessions[own]),
                           "results": results, "ratios": {i: round(r["p50_ms"] / first, 4) for i, r in results.items()},
                           "host_load": paired["host_load"]})
        if not points:
            raise UnsupportedModel(f"no requested batch size can be fed to the job's model: {skipped[0]['reason']}")
        accuracy = None
        if ctx.dataset_path is not None:
            accuracy = {}
            for k, i in enumerate(ids):
                ctx.progress(0.7 + 0.28 * k / len(ids), f"accuracy of model {k + 1}")
                accuracy[i] = compare_models(paths[i], None if i == own else ctx.model_path, feeds,
                                             samples=params.accuracy_samples, batch_size=32, threads=max(params.threads),
                                             device=ctx.device, progress=lambda f, s: None, strict_labels=False)
        return Result(report=checked({
            "schema_version": SCHEMA_VERSION, "technique": self.name,
            "models": [{"id": i, "label": "job model" if i == own else i,
                        "size_bytes": paths[i].stat().st_size} for i in ids],
            "points": points, "skipped": skipped, "accuracy": accuracy,
            "host_load": merge_host_load([p["host_load"] for p in points]),
            "inputs": feeds.describe(specs), "environment": describe_environment(), "notes": notes,
            "summary": _summary(ids, points),
        }))


def _summary(ids: list[str], points: list[dict[str, Any]]) -> str:
    """Per model: its speedup range over the job's model and the verdict of every point
    together (``speedup.overall_verdict``): a busy host gives "inconclusive", never a flip."""
    from app.engine.measure.speedup import overall_verdict

    parts = []
    for i in ids[1:]:
        ests = [p["results"][i]["vs_reference"] for p in points]
        speedups = [e["speedup"] for e in ests if e["speedup"] is not None]
        span = f"speedup {min(speedups):.2f}x to {max(speedups):.2f}x" if speedups else "no speedup"
        parts.append(f"{i}: {span} over the job model ({overall_verdict(ests)['verdict']})")
    return "; ".join(parts)
