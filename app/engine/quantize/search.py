"""quantize.auto's search, cheapest evidence first:

1. whole-model candidates (every layer quantized), in order of expected speed, most promising
   first within a tier; once one meets the tolerance, the rest of its tier and every slower
   tier are skipped: in expectation they cannot beat it;
2. only when none meets it: per-layer sensitivity (once, on fewer samples, by groups past
   MAX_SCORED layers), then per tier a bisection over the ranking for the fewest
   most-sensitive layers kept in float (a tier expected slower than the parent only when no
   faster tier found an answer);
3. with several finalists, a race between them alone at the first batch size; then the chosen
   one timed in rounds interleaved with the parent over the grid (``time_and_choose``): that
   timing is the report's benchmark.

Fidelity is always judged against the parent's outputs computed once (``Scorer``). Every phase's
wall time goes in the report. Stdlib-level imports at module top; onnx/onnxruntime inside.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from app.engine.data.feeds import FeedSource
from app.engine.base import Context
from app.engine.errors import ToleranceNotMet, UnsupportedModel
from app.engine.data.datasets import load_labels
from app.engine.measure.latency import measure_grid
from app.engine.measure.stats import median, median_ci
from app.engine.quantize import calibration as ort_static, ort_tools as ort_quant
from app.engine.quantize.analysis import op_counts
from app.engine.quantize.exclusions import nothing_to_quantize, resolve_exclusions, weighted_nodes
from app.engine.quantize.sensitivity import Scorer, fewest_float_layers, layer_sensitivity
from app.engine.runtime.attention import fuse_attention_file
from app.engine.runtime.inputs import batch_conflict, input_specs
from app.engine.runtime.sessions import create_session

LAYER_OPS = ("MatMul", "Gemm", "Conv", "Gather", "Attention")
# Expected speed of a mode, higher is faster. Static integer kernels need no per-call
# activation quantization; dynamic ConvInteger is slow on CPU (often slower than float), while
# dynamic MatMulInteger is the fast path for transformers. Per-channel weights cost about
# nothing at run time (measured 13% FASTER than per-tensor at batch 32 on a digits CNN), so a
# tier's variants tie on speed and per-channel, the more accurate, goes first.
SPEED = {("static", True): 2, ("static", False): 2, ("dynamic", False): 1, ("dynamic", True): 1}
SLOW_WITH_CONV = {"dynamic": 0}  # speed 0: expected slower than the float parent


class Phases:
    """Wall seconds of each phase, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)


def plan(modes: list[str], per_channel: list[bool], has_conv: bool,
         integer: bool = False) -> list[dict[str, Any]]:
    """Whole-model candidates, fastest expected first; per-channel first within a tier. With
    ``integer`` (MatMuls are the only compute layers: transformers), static means the integer
    recipe (``smooth.integer_w8a8``: MatMulIntegerToFloat, padding-free ranges), which has
    per-channel weights only."""
    out = []
    for mode in modes:
        for pc in per_channel:
            if mode == "static" and integer and not pc:
                continue
            speed = SLOW_WITH_CONV.get(mode, SPEED[(mode, pc)]) if has_conv else SPEED[(mode, pc)]
            out.append({"name": f"{mode}-{'per-channel' if pc else 'per-tensor'}", "mode": mode,
                        "per_channel": pc, "speed": speed})
    return sorted(out, key=lambda c: (-c["speed"], not c["per_channel"]))


def search(ctx: Context, params: Any, scratch: Path, reference: Path | None = None) -> dict[str, Any]:
    """Quantize ``ctx.model_path``; candidates are scored and timed against ``reference``
    (default: the same model; quantize.auto's pruning passes the unpruned original)."""
    phase = Phases()
    with phase("prepare"):
        feeds = FeedSource(params, ctx.dataset_path)
        reference = reference or ctx.model_path
        parent_session = create_session(reference, max(params.threads), ctx.device)[0]
        specs = input_specs(parent_session)
        labels = load_labels(ctx.dataset_path, feeds.samples(specs))
        ops = op_counts(ctx.model_path)
        has_conv = "Conv" in ops
        # The integer recipe quantizes MatMuls with constant weights, nothing else: only where
        # those are all the compute layers (transformers) does it stand for "static". Not in the
        # default modes: on MiniLM it was not faster than dynamic at batch 1 in every run and it
        # leaves the embeddings float (58.7 MB vs 22.9 MB), see ``modes``' description.
        integer = not has_conv and "Gemm" not in ops and "MatMul" in ops
        modes = params.modes or (["static", "dynamic"] if has_conv else ["dynamic"])
        order = plan(modes, params.per_channel, has_conv, integer)
        tolerance = params.tolerance(labels is not None)
        # A batch and a single sample (another batch size) to check the fused graph on.
        check = [feeds(specs, min(4, feeds.samples(specs) or 4)), feeds(specs, 1, start=1)] \
            if params.fuse_attention and "Softmax" in ops else None
    fusion: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        stage = base = layers = None

        def build(cand: dict, dst: Path, exclude: list[str] = (),
                  only: list[str] | None = None) -> Path:
            opts = dict(per_channel=cand["per_channel"], reduce_range=params.reduce_range,
                        weight_type="int8", exclude=base + list(exclude), only=only)
            if cand["mode"] == "dynamic":
                ort_quant.dynamic(stage, dst, op_types=None, **opts)
            elif integer:  # the transformer recipe; ``only`` as its complement
                float_too = [n["name"] for n in layers if n["name"] not in only] if only else []
                done = ort_static.smooth_static(
                    stage, dst, reader=ort_static.calibration_reader(feeds, specs, params.samples),
                    alpha=None, mask_padding=True, per_channel=True, fmt="integer", op_types=["MatMul"],
                    exclude=base + list(exclude) + float_too)
                if not done["quantized"] and not only and not exclude:  # a group of Gathers may
                    raise UnsupportedModel("the integer recipe found no MatMul with a constant "
                                           "weight to quantize")
            else:
                ort_static.static(
                    stage, dst, reader=ort_static.calibration_reader(feeds, specs, params.samples),
                    calibration=params.calibration, fmt="qdq",
                    activation_type=params.activation_type, op_types=None, **opts)
            return without_shape_hints(dst)

        def stage_and_build_first() -> Path:
            """Staging (opset, pre-processing) and the first candidate, always built: child
            processes this thread waits on while the search's own process computes the
            parent's outputs, the other half of the search's fixed cost."""
            nonlocal stage, base, layers
            nonlocal fusion
            stage = stack.enter_context(ort_quant.staged(
                ctx.model_path, ctx.workdir, preprocess=params.preprocess,
                min_opset=ort_static.STATIC_MIN_OPSET if "static" in modes else 11,
                deadline_s=ctx.native_step_timeout_s, shapes=False))
            if check is not None:
                fused = stage.scratch / "attention.onnx"
                fusion = stage.run(fuse_attention_file, stage.path, fused, check,
                                   step="attention fusion")
                if fusion["fused"]:
                    stage.path = fused
            base = resolve_exclusions(ctx.model_path, stage.path, params.exclude_nodes,
                                      params.exclude_op_types)
            layers = [n for n in weighted_nodes(stage.path, LAYER_OPS) if n["name"] not in base]
            if not layers:
                raise nothing_to_quantize(ctx.model_path, list(LAYER_OPS), "quantize.auto",
                                          params.preprocess)
            return attempt(order[0], scratch / f"{order[0]['name']}-0.onnx")

        def attempt(cand: dict, dst: Path) -> Path | UnsupportedModel:
            """A whole-model candidate, or why the quantizer refused it: the search goes on to
            the next one (e.g. the integer recipe on an export it cannot read)."""
            try:
                return build(cand, dst)
            except UnsupportedModel as exc:
                return exc

        ctx.progress(0.03, "scoring parent")
        with concurrent.futures.ThreadPoolExecutor(1) as pool, phase("prepare"):
            first_build = pool.submit(stage_and_build_first)
            try:
                scorer = Scorer(reference, feeds, samples=params.fidelity_samples,
                                batch_size=params.fidelity_batch_size, threads=max(params.threads),
                                device=ctx.device, task=params.task, tolerance=tolerance,
                                session=parent_session)
                del parent_session
            finally:
                first_build.exception()  # never leave the child steps running past this block
            first_path = first_build.result()  # raises what staging or the quantizer raised
        rows, finalists, evaluations = [], [], {}
        with phase("whole_model"):
            for i, cand in enumerate(order):
                ctx.progress(0.05 + 0.25 * i / len(order), f"trying {cand['name']}")
                row = {"name": cand["name"], "mode": cand["mode"],
                       "per_channel": cand["per_channel"], "float_layers": 0,
                       "phase": "whole_model"}
                winner = next((f for f in finalists if f["speed"] >= cand["speed"]), None)
                if winner:
                    rows.append({**row, "skipped": f"{winner['name']} already meets the "
                                 "tolerance and is expected at least as fast"})
                    continue
                path = first_path if i == 0 else attempt(cand, scratch / f"{cand['name']}-0.onnx")
                if isinstance(path, UnsupportedModel):
                    rows.append({**row, "failed": str(path)})
                    continue
                evaluation = scorer.evaluate(path)
                rows.append({**row, **scorer.figures(evaluation)})
                cand["score"] = rows[-1]
                if rows[-1]["meets_tolerance"]:
                    finalists.append({**cand, "excluded": [], "float_layers": 0, "path": path})
                    evaluations[cand["name"]] = evaluation
                else:
                    path.unlink(missing_ok=True)
        sensitivity = None
        if not finalists:
            # Per tier, the variant that came closest bisects; one ranking serves them all.
            tiers: dict[int, dict] = {}
            scored = [c for c in order if "score" in c]
            if not scored:  # every quantizer refused the model: say why the first one did
                raise UnsupportedModel(next(r["failed"] for r in rows if "failed" in r))
            for cand in scored:
                best = tiers.get(cand["speed"])
                if best is None or _badness(cand["score"]) < _badness(best["score"]):
                    tiers[cand["speed"]] = cand
            variants = [tiers[s] for s in sorted(tiers, reverse=True)]
            with phase("sensitivity"):
                first = variants[0]
                table, group = layer_sensitivity(
                    layers, lambda p, names: build(first, p, only=names), scratch, scorer,
                    params.sensitivity_samples, ctx.progress, (0.3, 0.5))
                ranking = [row["layer"] for row in table]
                sensitivity = {"mode": first["mode"], "per_channel": first["per_channel"],
                               "samples": scorer.covered(params.sensitivity_samples),
                               "metric": "1 - mean cosine to the parent, that layer (or its "
                               "group) alone quantized", "group_size": group, "layers": table}
            with phase("bisection"):
                for cand in variants:
                    if finalists and cand["speed"] == 0:
                        rows.append({"name": cand["name"], "mode": cand["mode"],
                                     "per_channel": cand["per_channel"], "phase": "bisection",
                                     "skipped": f"{finalists[0]['name']} meets the tolerance "
                                     "and this mode is expected slower than the parent here"})
                        continue
                    ctx.progress(0.5, f"bisecting {cand['name']}")

                    def partial(k: int, cand=cand) -> Path:
                        return build(cand, scratch / f"{cand['name']}-{k}.onnx", ranking[:k])

                    k, tried = fewest_float_layers(ranking, partial, scorer)
                    rows += [{"name": cand["name"], "mode": cand["mode"],
                              "per_channel": cand["per_channel"], "phase": "bisection", **t}
                             for t in tried]
                    if k is not None:
                        path = scratch / f"{cand['name']}-{k}.onnx"
                        finalists.append({**cand, "excluded": ranking[:k], "float_layers": k,
                                          "path": path})
                        evaluations[cand["name"]] = scorer.full[path]
        preprocess, opset = stage.preprocess, stage.opset
    if not finalists:
        best = min((r for r in rows if "meets_tolerance" in r), key=_badness)
        raise ToleranceNotMet(
            f"no quantized variant meets the tolerance {tolerance} even with all but one layer "
            f"in float (best: {best['name']} with {best['float_layers']} float layers, mean "
            f"cosine {best['mean_cosine']}, lowest per-sample cosine {best['cosine_min']}, "
            f"accuracy drop {best.get('accuracy_drop')} pt); loosen min_cosine/"
            "min_cosine_per_sample/max_accuracy_drop_pt, or use quantize.fp16")
    with phase("timing"):
        ctx.progress(0.7, "timing finalists against the parent")
        grid, chosen, why = time_and_choose(reference, finalists, params, feeds, ctx, specs)
    for row in rows:
        row.update(timed=False, chosen=False)
        f = next((f for f in finalists if f["name"] == row["name"]), None)
        if f and row.get("float_layers") == f["float_layers"] and "skipped" not in row:
            row.update(timed=True, chosen=f is chosen, size_bytes=f["path"].stat().st_size)
            if f is chosen:  # timed against the parent over the whole grid
                row.update(geomean_speedup=round(_geomean([p[f["name"]]["speedup"]
                                                           for p in grid["points"]]), 4),
                           p50_ms={str(p["batch_size"]): p[f["name"]]["p50_ms"]
                                   for p in grid["points"]})
            else:  # raced against the others only
                row.update(p50_ms=grid["timing"]["race"]["p50_ms"][f["name"]])
    report_grid = {**grid, "points": [{**{k: v for k, v in p.items()
                                          if k not in {f["name"] for f in finalists}},
                                       "result": p[chosen["name"]]} for p in grid["points"]]}
    return {
        "feeds": feeds, "grid": report_grid, "chosen": chosen, "chosen_path": chosen["path"],
        "evaluation": evaluations[chosen["name"]], "candidates": rows,
        "sensitivity": sensitivity, "preprocess": preprocess, "opset": opset,
        "base_exclude": base, "op_types": sorted({n["op_type"] for n in layers}),
        "integer_static": integer,
        "search": {"phases": phase.seconds, "sensitivity_ran": sensitivity is not None,
                   "order": [c["name"] for c in order],
                   "finalists": [f["name"] for f in finalists], "timing": grid["timing"],
                   "attention_fusion": fusion},
        "notes": [f"tolerance applied: {tolerance}; chose {chosen['name']} with "
                  f"{chosen['float_layers']} layer(s) in float: {why}"]
        + ([f"{fusion['fused']} attention block(s) rewritten as onnxruntime's "
            "com.microsoft.MultiHeadAttention before quantizing (outputs equal to the parent's "
            f"within {fusion['max_abs_diff']:.1g} on sample inputs); the result runs on "
            "onnxruntime only"] if fusion and fusion["fused"] else []),
    }


def without_shape_hints(path: Path) -> Path:
    """Strip, in place, the shape annotations (``value_info``) pre-processing left in a built
    candidate. They decide which fusions onnxruntime applies when it loads the model: with them,
    MiniLM's Add + LayerNormalization pairs fuse into SkipLayerNormalization, and on a 1-thread
    AVX-512 host that fused form measured 2.25x FP32 at batch 1 and 1.85x at 32, the bare one
    2.93x and 2.68x (same operators otherwise); on the digits CNN the bare form was as fast or
    faster. Earlier versions built both forms and raced them: the bare one won every race
    measured (MiniLM, digits CNN, two sessions), so the search now builds only the bare form and
    spends that time nowhere. onnxruntime infers the shapes at load either way."""
    model = onnx.load(str(path))
    if len(model.graph.value_info):
        del model.graph.value_info[:]
        onnx.save(model, str(path))
    return path


def _badness(row: dict) -> tuple[float, float]:
    return (row.get("accuracy_drop") or 0.0, row["error"])


def time_and_choose(parent: Path, finalists: list[dict], params: Any, feeds: FeedSource,
                    ctx: Context, specs: list[dict]) -> tuple[dict[str, Any], dict, str]:
    """With several finalists, a race first: they alone (not the parent) in interleaved rounds
    at the first batch size that fits the model, ``choose`` on their per-round ratios; then
    the chosen one against the parent over the whole grid, which is the report's benchmark.
    Every extra model in the grid's rounds costs as much as its share at every point (on
    MiniLM at batch 32, a finalist's is a third of the parent's), the race only at the
    cheapest point. Returns (grid, chosen, why); the grid's ``timing`` has the race's rounds."""
    race = None
    if len(finalists) > 1:
        fits = [b for b in params.batch_sizes if not batch_conflict(specs, b)] or params.batch_sizes
        race = time_finalists({f["name"]: f["path"] for f in finalists},
                              params.model_copy(update={"batch_sizes": fits[:1]}), feeds, ctx,
                              span=(0.7, 0.75), reference=finalists[0]["name"])
        chosen, why = choose(finalists, race)
    else:
        chosen, why = choose(finalists, {"points": []})
    grid = time_finalists({"parent": parent, chosen["name"]: chosen["path"]}, params, feeds, ctx,
                          span=(0.75, 0.95))
    if race is not None:
        grid["timing"]["race"] = {
            "method": f"the finalists alone in interleaved rounds at batch {race['points'][0]['batch_size']}; "
                      f"ratio = {finalists[0]['name']}'s time / the other's, per round",
            "points": race["timing"]["points"],
            "p50_ms": {f["name"]: {str(p["batch_size"]): p[f["name"]]["p50_ms"] for p in race["points"]}
                       for f in finalists}}
    return grid, chosen, why


def choose(finalists: list[dict], grid: dict) -> tuple[dict, str]:
    """The first finalist (fastest expected), unless another was measured faster than it at
    every point: the 95% interval of the per-round ratio (other / first, rounds aligned: both
    ran in the same rounds) above 1. One noisy timing cannot overturn the expectation."""
    chosen = finalists[0]
    why = ("the only finalist (the others failed the tolerance or were skipped)"
           if len(finalists) == 1 else
           "expected fastest, and no other finalist was measured faster at every point")
    for other in finalists[1:]:
        gains = []
        for p in grid["points"]:
            wins = [r_o / r_c for r_o, r_c in zip(p[other["name"]]["round_speedups"],
                                                   p[chosen["name"]]["round_speedups"], strict=True)]
            low, _high = median_ci(wins)
            gains.append((median(wins) if wins else 0.0, low))
        if gains and all(low is not None and low > 1.0 for _, low in gains):
            chosen = other
            why = (f"measured faster than {finalists[0]['name']} at every point (median per-round "
                   f"ratio {min(g for g, _ in gains):.2f}x to {max(g for g, _ in gains):.2f}x, "
                   "95% interval above 1)")
    return chosen, why


def time_finalists(models: dict[str, Path], params: Any, feeds: FeedSource, ctx: Context,
                   span: tuple[float, float], reference: str = "parent") -> dict[str, Any]:
    """The ONE place quantize.auto times models: ``measure_grid`` with ``reference`` (the parent,
    or in a race the first finalist) first, so at each (threads, batch) point the models run
    in interleaved rounds (``measure.speedup.time_paired``) and each one's speedup is the
    median of its per-round ratios to the reference, with interval and verdict. Each model's
    point also gets ``speedup``, ``round_speedups`` and ``rounds`` at top level; the grid gets
    ``timing``."""
    grid = measure_grid(models, params, feeds, device=ctx.device, progress=ctx.progress, span=span,
                        what=feeds.what)
    for point in grid["points"]:
        for label in models:
            if vs := point[label].get("vs_reference"):
                point[label].update(speedup=vs["speedup"], round_speedups=vs["round_speedups"],
                                    rounds=vs["rounds"])
        if reference != "parent":  # a race: the reference is a finalist ``choose`` reads too
            rounds = len(next((point[k]["round_speedups"] for k in models if k != reference), []))
            point[reference].update(speedup=1.0, round_speedups=[1.0] * rounds, rounds=rounds)
    grid["timing"] = {
        "method": "parent and finalists in interleaved rounds per point (measure.speedup.time_paired); "
                  "speedup = median over rounds of parent time / candidate time (CPU time on a busy host)",
        "points": [{"batch_size": p["batch_size"], "threads": p["threads"],
                    **{k: p[k]["round_speedups"] for k in models if k != reference}}
                   for p in grid["points"]]}
    return grid


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))
