"""Latency measurement: one model's timing (``time_runs``), the batch x threads grid around it
that also runs every comparison (through ``speedup.time_paired``), and process memory readings.

Only stdlib at module top (technique modules import this; the API imports those); numpy,
psutil and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.engine.runtime.inputs import batch_conflict, input_specs
from app.engine.params import MeasureParams
from app.engine.base import Device, ProgressFn
from app.engine.errors import InferenceFailed, UnsupportedModel
from app.engine.measure.speedup import HostLoadProbe, merge_host_load, time_paired
from app.engine.measure.stats import CI_CHECK_NS, median, median_ci_rel, summarize
from app.engine.runtime.sessions import create_session, run_session, short_reason, used_provider

TICK_NS = 500_000_000
FeedFn = Callable[[Sequence[Mapping[str, Any]], int], dict[str, Any]]


def time_runs(
    session: Any,
    feed: Mapping[str, Any],
    *,
    batch_size: int,
    params: MeasureParams,
    session_create_ms: float | None = None,
    what: str = "generated",
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Warm up, then time ``session.run`` until min_runs and min_seconds are both met
    (or max_runs / max_seconds is hit). Latency is wall time of one run, outputs included.

    ``tick`` is called about every TICK_NS between runs (outside the timed span): it is how a
    long point reports that it is alive and learns that its job was cancelled (it may raise)."""
    deadline = time.perf_counter_ns() + int(params.max_seconds * 1e9)
    warm = 0
    for warm in range(1, params.warmup + 1):  # at least one: it also surfaces run errors
        run_session(session, feed, what)
        if time.perf_counter_ns() >= deadline:
            break
    times: list[int] = []
    cpu: list[int] = []
    timed = 0
    min_ns = int(params.min_seconds * 1e9)
    next_tick = time.perf_counter_ns() + TICK_NS
    next_ci = 0
    while True:
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        try:
            session.run(None, feed)
        except Exception as exc:  # a later run failing after a good warm-up: still user-facing
            raise InferenceFailed(f"onnxruntime failed during timing ({short_reason(exc)})") from None
        t1 = time.perf_counter_ns()
        cpu.append(time.process_time_ns() - c0)
        times.append(t1 - t0)
        timed += t1 - t0
        if len(times) >= params.max_runs or t1 >= deadline:
            break
        if len(times) >= params.min_runs and timed >= min_ns:
            if params.ci_target is None:
                break
            if t1 >= next_ci:  # sorting every run would cost more than the runs of a small model
                if median_ci_rel(times) <= params.ci_target:
                    break
                next_ci = t1 + CI_CHECK_NS
        if tick is not None and t1 >= next_tick:
            tick()  # outside the try: a cancellation raised here must reach the worker as is
            next_tick = time.perf_counter_ns() + TICK_NS
    return {**summarize(times, batch_size), "cpu_p50_ms": round(median(cpu) / 1e6, 4),
            "warmup_runs": warm,
            # True when max_seconds cut timing short of min_runs: fewer samples, wider error.
            "budget_exhausted": len(times) < params.min_runs,
            "noisy": params.ci_target is not None and median_ci_rel(times) > params.ci_target,
            "session_create_ms": None if session_create_ms is None else round(session_create_ms, 3)}


def measure_grid(
    models: Mapping[str, Path],
    params: MeasureParams,
    make_feed: FeedFn,
    *,
    device: Device,
    progress: ProgressFn,
    span: tuple[float, float] = (0.0, 1.0),
    what: str = "generated",
    providers: Sequence[str | None] = (None,),
) -> dict[str, Any]:
    """Time every model in ``models`` at every (provider, threads, batch) point.

    For each point all models get the SAME feed in the same process. With several models
    the point is a comparison: ``speedup.time_paired`` interleaves them in rounds, every
    model after the first carries ``vs_reference`` (its speedup over the first, with interval
    and verdict). Every point carries ``host_load``. Returns ``points`` (one per measured
    point, ``{label: stats}``), ``skipped`` batch sizes, ``specs``, ``provider`` and
    ``host_load`` over all points.
    """
    specs: list[dict[str, Any]] | None = None
    points: list[dict[str, Any]] = []
    skipped: dict[int, str] = {}
    provider = ""
    total = len(providers) * len(params.threads) * len(params.batch_sizes)
    step = 0
    for wanted, threads in ((p, t) for p in providers for t in params.threads):
        sessions = {k: create_session(p, threads, device, wanted) for k, p in models.items()}
        first = next(iter(sessions.values()))[0]
        provider = used_provider(first)
        if specs is None:
            specs = input_specs(first)
        for batch in params.batch_sizes:
            step += 1
            conflict = batch_conflict(specs, batch)
            if conflict:
                skipped[batch] = conflict
                continue
            fraction = span[0] + (span[1] - span[0]) * (step - 1) / total
            stage = f"benchmark bs={batch} threads={threads}" + (f" {provider}" if len(providers) > 1 else "")
            progress(fraction, stage)
            feed = make_feed(specs, batch)
            point: dict[str, Any] = {
                "batch_size": batch,
                "threads": threads,
                "provider": provider,
                "input_shapes": {k: [int(d) for d in v.shape] for k, v in feed.items()},
            }
            tick = lambda: progress(fraction, stage)  # noqa: E731
            if len(sessions) == 1:
                label, (session, create_ms) = next(iter(sessions.items()))
                probe = HostLoadProbe().start()
                point[label] = time_runs(session, feed, batch_size=batch, params=params,
                                         session_create_ms=create_ms, what=what, tick=tick)
                point["host_load"] = probe.stop(threads=threads)
            else:  # a comparison: interleaved rounds, speedups vs the first model
                paired = time_paired({k: s for k, (s, _) in sessions.items()}, feed,
                                     batch_size=batch, params=params, threads=threads, what=what,
                                     tick=tick)
                for label, (_, create_ms) in sessions.items():
                    point[label] = {**paired["timings"][label],
                                    "session_create_ms": None if create_ms is None else round(create_ms, 3)}
                point["host_load"] = paired["host_load"]
            points.append(point)
            del feed
        del sessions, first  # free the sessions' arenas before the next thread count
    if not points:
        raise UnsupportedModel(
            f"no requested batch size can be fed to this model: {next(iter(skipped.values()))}"
        )
    return {
        "points": points,
        "host_load": merge_host_load([p["host_load"] for p in points]),
        "skipped": [{"batch_size": b, "reason": r} for b, r in skipped.items()],
        "specs": specs,
        "provider": provider,
    }


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: "5" > /proc/self/clear_refs) so that
    ``peak_rss_bytes`` covers this job rather than the worker's whole life. False if the
    platform does not allow it; the peak then covers the process lifetime."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS of the whole process (all threads, any model loaded in it), not one model."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
