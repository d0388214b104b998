"""The one builder of every quantization report: parent vs result measured in the same run
(size, p50 per batch size, accuracy/fidelity), the tolerance check and the verdict.

Stdlib/pydantic-level imports only at module top; the heavy ones happen inside functions.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.engine.measure.accuracy import compare_models
from app.engine.data.feeds import FeedSource
from app.engine.measure.fidelity import GENERATED_FIDELITY_SAMPLES, worst_cosine, worst_mean_cosine
from app.engine.measure.latency import measure_grid
from app.engine.measure.stats import tail_flag
from app.engine.quantize.params import QuantParams
from app.engine.base import Context
from app.engine.reports import SCHEMA_VERSION, checked
from app.engine.quantize.analysis import (node_summary, op_counts, qdq_compute, runtime_op_counts,
                                          saturation_note, verdict)
from app.engine.runtime.environment import describe_environment
from app.engine.runtime.model_info import inspect_onnx
from app.engine.runtime.sessions import providers_for


def evaluate_result(ctx: Context, params: QuantParams, output: Path, feeds: FeedSource,
                    span: tuple[float, float] = (0.15, 0.3)) -> dict[str, Any]:
    """Accuracy (with labels) and fidelity of ``output`` against the parent."""
    return compare_models(output, ctx.model_path, feeds, samples=params.fidelity_samples,
                          batch_size=params.fidelity_batch_size, threads=max(params.threads),
                          device=ctx.device, progress=ctx.progress, span=span, task=params.task,
                          stage="fidelity", strict_labels=False)


def tolerance_check(params: QuantParams, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Whether the result meets the tolerance; ``text`` says which figure decided."""
    accuracy = evaluation["accuracy"]
    return judge(params.tolerance(accuracy is not None and "error" not in accuracy), evaluation)


def judge(tol: dict[str, float | None], evaluation: dict[str, Any]) -> dict[str, Any]:
    """``evaluation`` (compare_models' shape) against the tolerance ``tol``: the one rule the
    verdict and quantize.auto's candidates are both judged by."""
    accuracy = evaluation["accuracy"]
    if accuracy is not None and "error" in accuracy:
        accuracy = None
    outputs = evaluation["fidelity"]["outputs"]
    cosine, worst = worst_mean_cosine(outputs), worst_cosine(outputs)
    if cosine is None:  # integer outputs only (class ids...): exact agreement stands in
        exact = [o["exact_match"] for o in outputs.values() if "exact_match" in o]
        cosine = worst = min(exact) if exact else None
    drop = accuracy.get("drop") if accuracy else None
    failed, passed = [], []
    for key, value, what in (("min_cosine", cosine, "mean cosine"),
                             ("min_cosine_per_sample", worst, "lowest per-sample cosine")):
        if tol.get(key) is not None:
            (passed if value is not None and value >= tol[key] else failed).append(
                f"{what} {value if value is None else round(value, 4)} vs {key} {tol[key]}")
    if tol["max_accuracy_drop_pt"] is not None:
        (passed if drop is not None and drop <= tol["max_accuracy_drop_pt"] else failed).append(
            f"accuracy drop {drop} pt vs max_accuracy_drop_pt {tol['max_accuracy_drop_pt']}")
    text = (f"OUTSIDE tolerance: {'; '.join(failed)}." if failed
            else f"Within tolerance: {'; '.join(passed)}.")
    return {**tol, "mean_cosine": cosine, "worst_cosine": worst, "accuracy_drop": drop,
            "within": not failed, "text": text}


def compare_point(point: dict) -> dict:
    """One measured point of a parent/result ``measure_grid`` as the report shows it: the
    speedup is the interleaved estimate (median per-round ratio, interval, verdict)."""
    parent, result = point["parent"], point["result"]
    est = result.get("vs_reference")
    tails = [f"{who}: {flag}" for who, x in (("parent", parent), ("result", result))
             if (flag := tail_flag(x["p50_ms"], x["p99_ms"]))]
    return {
        "batch_size": point["batch_size"],
        "threads": point["threads"],
        "parent_p50_ms": parent["p50_ms"],
        "result_p50_ms": result["p50_ms"],
        "speedup": est["speedup"] if est and est["speedup"] is not None
        else round(parent["p50_ms"] / result["p50_ms"], 4),
        "speedup_ci": est,
        "parent_p90_ms": parent["p90_ms"],
        "result_p90_ms": result["p90_ms"],
        "parent_p99_ms": parent["p99_ms"],
        "result_p99_ms": result["p99_ms"],
        "parent_cpu_p50_ms": parent.get("cpu_p50_ms"),
        "result_cpu_p50_ms": result.get("cpu_p50_ms"),
        "parent_runs": parent["runs"],
        "result_runs": result["runs"],
        "tail_outliers": tails,
        "host_load": point.get("host_load"),
        "input_shapes": point["input_shapes"],
    }


def fidelity_block(evaluation: dict[str, Any], requested: int) -> dict[str, Any]:
    """What the fidelity figures were computed on: the samples actually used, beside the
    number asked for and why they differ (generated inputs are capped; a dataset may be
    smaller)."""
    used = evaluation["samples"]
    out = {"source": evaluation["source"], "samples": used, "samples_requested": requested,
           "outputs": evaluation["fidelity"]["outputs"]}
    if used < requested:
        out["samples_note"] = (
            f"{used} of the {requested} requested samples were compared: "
            + (f"without a dataset, inputs are generated and capped at {GENERATED_FIDELITY_SAMPLES}"
               if evaluation["source"] == "generated" else f"the dataset has {used} samples"))
    return out


def build_report(ctx: Context, params: QuantParams, *, technique: str, output: Path,
                 quantization: dict[str, Any], looked_for: list[str], notes: list[str],
                 mode: str = "int8", feeds: FeedSource | None = None,
                 evaluation: dict[str, Any] | None = None, grid: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure (unless ``evaluation``/``grid`` were measured already, e.g. by quantize.auto
    with labels "parent"/"result") and assemble the report."""
    feeds = feeds or FeedSource(params, ctx.dataset_path)
    if evaluation is None:
        evaluation = evaluate_result(ctx, params, output, feeds)
    if grid is None:
        grid = measure_grid({"parent": ctx.model_path, "result": output}, params, feeds,
                            device=ctx.device, progress=ctx.progress, span=(0.3, 0.97),
                            what=feeds.what)
    ctx.progress(0.98, "report")
    scratch = Path(tempfile.mkdtemp(prefix="report-", dir=ctx.workdir))
    try:
        runtime = runtime_op_counts(output, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    nodes = node_summary(op_counts(ctx.model_path), op_counts(output), looked_for,
                         qdq_compute(output))
    environment = describe_environment()
    fidelity = fidelity_block(evaluation, params.fidelity_samples)
    worst = worst_cosine(fidelity["outputs"])
    notes = [n for n in [providers_for(ctx.device)[1], *notes] if n]
    if mode == "int8" and "reduce_range" in quantization:
        notes.append(saturation_note(bool(quantization.get("per_channel")),
                                     bool(quantization["reduce_range"]), environment, worst))
    tolerance = tolerance_check(params, evaluation)
    comparison = [compare_point(p) for p in grid["points"]]
    sizes = (ctx.model_path.stat().st_size, output.stat().st_size)
    size_ratio = round(sizes[1] / sizes[0], 4)
    info = (inspect_onnx(ctx.model_path), inspect_onnx(output))
    report = {
        "schema_version": SCHEMA_VERSION,
        "technique": technique,
        "parent": {"size_bytes": sizes[0], "parameter_count": info[0]["parameter_count"]},
        "result": {"size_bytes": sizes[1], "parameter_count": info[1]["parameter_count"]},
        "size_ratio": size_ratio,
        "quantization": quantization,
        "nodes": nodes,
        "runtime_ops": dict(sorted(runtime.items())) if runtime is not None else None,
        "device": ctx.device,
        "provider": grid["provider"],
        "comparison": comparison,
        "host_load": grid.get("host_load"),
        "skipped": grid["skipped"],
        "fidelity": fidelity,
        "accuracy": evaluation["accuracy"],
        "tolerance": {k: v for k, v in tolerance.items() if k != "text"},
        "verdict": verdict(comparison, size_ratio, nodes, grid["provider"], worst,
                           tolerance=tolerance, runtime=runtime, mode=mode,
                           host_load=grid.get("host_load")),
        "inputs": feeds.describe(grid["specs"]),
        "environment": environment,
        "notes": [n for n in notes if n],
        **(extra or {}),
    }
    return checked(report)


def end_to_end(ctx: Context, first: Path, final: Path, params: Any,
               trained_by: list[str] | None = None) -> dict[str, Any]:
    """A pipeline's job input vs its last output, measured together in one run (each step's
    report compares only with the step before; the product of those speedups was never
    measured): size, accuracy/fidelity on the job's dataset, interleaved speedup per point.
    ``params``: the last model-producing step's (its grid and fidelity settings; a step
    without fidelity settings gets their defaults). ``trained_by``: the steps that trained on
    the job's dataset (their accuracy here includes their training samples: said in notes)."""
    if not isinstance(params, QuantParams):
        params = QuantParams.model_validate({k: getattr(params, k) for k in QuantParams.model_fields
                                             if hasattr(params, k)})
    feeds = FeedSource(params, ctx.dataset_path)
    e2e = replace(ctx, model_path=first, params=params)
    evaluation = evaluate_result(e2e, params, final, feeds, span=(0.0, 0.3))
    grid = measure_grid({"parent": first, "result": final}, params, feeds, device=ctx.device,
                        progress=ctx.progress, span=(0.3, 1.0), what=feeds.what)
    comparison = [compare_point(p) for p in grid["points"]]
    sizes = (first.stat().st_size, final.stat().st_size)
    tolerance = tolerance_check(params, evaluation)
    return {
        "parent": {"size_bytes": sizes[0]},
        "result": {"size_bytes": sizes[1]},
        "size_ratio": round(sizes[1] / sizes[0], 4),
        "comparison": comparison,
        "host_load": grid.get("host_load"),
        "fidelity": fidelity_block(evaluation, params.fidelity_samples),
        "accuracy": evaluation["accuracy"],
        "tolerance": {k: v for k, v in tolerance.items() if k != "text"},
        "summary": "; ".join(
            [f"job input vs final output at batch {c['batch_size']}: {c['speedup']:.2f}x"
             + (f" ({c['speedup_ci']['verdict']})" if (c.get("speedup_ci") or {}).get("verdict") else "")
             for c in comparison if c.get("speedup") is not None]
            + [tolerance["text"]]),
        "notes": [f"{', '.join(trained_by)} trained on this dataset, so these accuracy and "
                  "fidelity figures include its training samples (optimistic); score on held-out "
                  "data with an evaluate job"] if trained_by else [],
    }
