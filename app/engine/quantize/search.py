"""quantize.auto's search: sensitivity per mode, fewest float layers per variant, then one
timing grid of every variant that meets the tolerance against the parent.

Stdlib-level imports at module top; onnx/onnxruntime inside the functions it calls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app.engine.data.feeds import FeedSource
from app.engine.measure.latency import measure_grid
from app.engine.base import Context
from app.engine.errors import ToleranceNotMet

LAYER_OPS = ("MatMul", "Gemm", "Conv", "Gather", "Attention")


def search(ctx: Context, params: Any, scratch: Path) -> dict[str, Any]:
    from app.engine.quantize import calibration as ort_static, ort_tools as ort_quant
    from app.engine.data.datasets import load_labels
    from app.engine.runtime.inputs import input_specs
    from app.engine.quantize.exclusions import nothing_to_quantize, resolve_exclusions, weighted_nodes
    from app.engine.quantize.analysis import op_counts
    from app.engine.quantize.sensitivity import Scorer, fewest_float_layers, layer_sensitivity
    from app.engine.runtime.sessions import create_session

    feeds = FeedSource(params, ctx.dataset_path)
    specs = input_specs(create_session(ctx.model_path, 1, "cpu")[0])
    labels = load_labels(ctx.dataset_path, feeds.samples(specs))
    modes = params.modes or (["static", "dynamic"] if "Conv" in op_counts(ctx.model_path)
                             else ["dynamic"])
    tolerance = params.tolerance(labels is not None)
    threads = max(params.threads)
    common = dict(batch_size=params.fidelity_batch_size, threads=threads, device=ctx.device,
                  task=params.task, tolerance=tolerance)
    with ort_quant.staged(ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                          min_opset=ort_static.STATIC_MIN_OPSET if "static" in modes else 11,
                          deadline_s=ctx.native_step_timeout_s) as stage:
        base = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes,
                                  params.exclude_op_types)
        layers = [n for n in weighted_nodes(stage.path, LAYER_OPS) if n["name"] not in base]
        if not layers:
            raise nothing_to_quantize(ctx.model_path, list(LAYER_OPS), "quantize.auto",
                                      params.preprocess)
        ctx.progress(0.03, "scoring parent")
        small = Scorer(ctx.model_path, feeds, samples=params.sensitivity_samples, **common)
        scorer = Scorer(ctx.model_path, feeds, samples=params.fidelity_samples, **common)

        def make(mode: str, per_channel: bool):
            def build(dst: Path, exclude: list[str] = (), only: list[str] | None = None) -> Path:
                opts = dict(per_channel=per_channel, reduce_range=params.reduce_range,
                            weight_type="int8", exclude=base + list(exclude), only=only)
                if mode == "dynamic":
                    ort_quant.dynamic(stage, dst, op_types=None, **opts)
                else:
                    ort_static.static(
                        stage, dst, reader=ort_static.calibration_reader(feeds, specs,
                                                                         params.samples),
                        calibration=params.calibration, fmt="qdq",
                        activation_type=params.activation_type, op_types=None, **opts)
                return dst
            return build

        tables, candidates, finalists = {}, [], {}
        for i, mode in enumerate(modes):
            span = (0.05 + 0.6 * i / len(modes), 0.05 + 0.6 * (i + 0.5) / len(modes))
            single = make(mode, params.per_channel[0])
            tables[mode] = layer_sensitivity(layers, lambda p, n: single(p, only=[n]),
                                             scratch, small, ctx.progress, span)
            ranking = [row["layer"] for row in tables[mode]]
            for per_channel in params.per_channel:
                name = f"{mode}{'-per-channel' if per_channel else ''}"
                ctx.progress(0.05 + 0.6 * (i + 0.5) / len(modes), f"searching {name}")
                build = make(mode, per_channel)
                k, tried = fewest_float_layers(
                    ranking, lambda k: build(scratch / f"{name}-{k}.onnx", ranking[:k]), scorer)
                for step in tried:
                    candidates.append({"name": name, "mode": mode, "per_channel": per_channel,
                                       **step, "timed": False, "chosen": False})
                if k is not None:
                    finalists[name] = {"mode": mode, "per_channel": per_channel,
                                       "excluded": ranking[:k], "float_layers": k,
                                       "path": scratch / f"{name}-{k}.onnx"}
        preprocess, opset = stage.preprocess, stage.opset
    if not finalists:
        best = max(candidates, key=lambda c: c["mean_cosine"] or -1.0)
        raise ToleranceNotMet(
            f"no quantized variant meets the tolerance {tolerance} even with all but one layer "
            f"in float (best: {best['name']} with {best['float_layers']} float layers, mean "
            f"cosine {best['mean_cosine']}, accuracy drop {best.get('accuracy_drop')}); "
            "loosen min_cosine/max_accuracy_drop, or use quantize.fp16")
    ctx.progress(0.7, "timing candidates")
    grid = measure_grid({"parent": ctx.model_path,
                         **{n: f["path"] for n, f in finalists.items()}},
                        params, feeds, device=ctx.device, progress=ctx.progress,
                        span=(0.7, 0.95), what=feeds.what)
    speed = {n: _geomean([p["parent"]["p50_ms"] / p[n]["p50_ms"] for p in grid["points"]])
             for n in finalists}
    chosen_name = max(speed, key=speed.get)
    for c in candidates:
        f = finalists.get(c["name"])
        if f and c["float_layers"] == f["float_layers"]:
            c.update(timed=True, chosen=c["name"] == chosen_name,
                     size_bytes=f["path"].stat().st_size, geomean_speedup=round(speed[c["name"]], 4),
                     p50_ms={str(p["batch_size"]): p[c["name"]]["p50_ms"] for p in grid["points"]})
    report_grid = {**grid, "points": [{**{k: v for k, v in p.items() if k not in finalists},
                                       "result": p[chosen_name]} for p in grid["points"]]}
    first = modes[0]
    return {
        "feeds": feeds, "grid": report_grid, "chosen": finalists[chosen_name],
        "chosen_path": finalists[chosen_name]["path"], "candidates": candidates,
        "sensitivity": {"mode": first, "per_channel": params.per_channel[0],
                        "samples": small.samples, "metric": "1 - mean cosine to the parent, "
                        "that layer alone quantized", "layers": tables[first],
                        "other_modes": {m: t for m, t in tables.items() if m != first}},
        "preprocess": preprocess, "opset": opset, "base_exclude": base,
        "op_types": sorted({n["op_type"] for n in layers}),
        "notes": [f"tolerance applied: {tolerance}; chose {chosen_name} (geometric-mean "
                  f"speedup {speed[chosen_name]:.2f}x over the measured points)"],
    }


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))
