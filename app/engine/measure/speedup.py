"""Parent-vs-candidate speed, measured so that a busy host cannot flip the answer.

Every comparison of two models (a technique's parent and result, quantize.auto's finalists,
``compare``) goes through ``time_paired``: the models are alternated in rounds on the same
feed and session settings, the speedup is a ratio *per round* (so a burst of load from another
process hits both sides of that ratio), and the answer is the median ratio with a
distribution-free confidence interval. CPU time is read beside wall time, and the load other
processes put on the host during the measurement is recorded (``HostLoadProbe``).
``speed_verdict`` then says "faster"/"slower" only when the interval excludes 1 by more than
the noise threshold, and "inconclusive" with the reason otherwise. On a busy host the estimate
is the CPU-time ratio (the wall-time one must agree in direction): contention stretches long
runs more than short ones, so wall-time ratios there drift far from a quiet host's.

Only stdlib at module top: technique modules import this, and the API imports those.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.engine.errors import InferenceFailed
from app.engine.measure.stats import CI_CHECK_NS, CONFIDENCE, median, median_ci, median_ci_rel, summarize

THRESHOLD = 0.03  # a speedup under 3% is within the run-to-run noise of a shared CPU
BUSY_FILL = 0.9  # share of the cores that, filled by others and us, makes the host "busy"
MIN_ROUNDS = 6  # the fewest rounds for which the median's 95% interval exists (params.min_rounds: 10 by default)
STARVED = 0.85  # this process got under 85% of the CPU time its wall time asked for
SLOW_RUN_NS = 10_000_000  # runs over 10 ms: one per model per round, so rounds stay short


# --- verdicts ---------------------------------------------------------------------------------

def speed_verdict(speedup: float | None, low: float | None, high: float | None, *,
                  basis: str = "wall", check: float | None = None,
                  host_load: Mapping[str, Any] | None = None,
                  threshold: float = THRESHOLD) -> dict[str, str]:
    """"faster" / "slower" only when the interval [low, high] of the speedup (reference time /
    candidate time, in ``basis`` time) excludes 1 and the median is more than ``threshold``
    away from it; else "inconclusive", with the reason. On a busy host the estimate is the
    CPU-time one and ``check``, the wall-time ratio, must not point the other way (nor be
    missing); ``host_load``'s summary then ends the reason."""
    busy = bool(host_load and host_load.get("busy"))
    load_txt = f"; {host_load['summary']}" if busy and host_load and host_load.get("summary") else ""
    if speedup is None or low is None or high is None:
        return {"verdict": "inconclusive",
                "reason": f"too few interleaved rounds for a confidence interval{load_txt}"}
    span = f"{speedup:.2f}x in {basis} time, {CONFIDENCE:.0%} interval {low:.2f}x to {high:.2f}x"
    if low <= 1.0 <= high:
        return {"verdict": "inconclusive", "reason": f"the interval straddles 1 ({span}){load_txt}"}
    direction = "faster" if low > 1.0 else "slower"
    effect = speedup - 1.0 if direction == "faster" else 1.0 / speedup - 1.0
    if effect < threshold:
        return {"verdict": "inconclusive", "reason": (
            f"{direction} by under {threshold:.0%} ({span}), within measurement noise{load_txt}")}
    other = "wall" if basis == "cpu" else "CPU"
    if busy and (check is None or (check > 1.0) != (direction == "faster")):
        check_txt = "not measured" if check is None else f"{check:.2f}x"
        return {"verdict": "inconclusive", "reason": (
            f"{basis} time says {direction} ({span}) but the {other}-time ratio ({check_txt}) "
            f"does not agree{load_txt}")}
    if busy and check is not None and abs(math.log(speedup / check)) > math.log(1.25):
        # Other processes' time slices stretch a long run more than a short one, so under
        # contention the wall ratio drifts from what a quiet host shows; CPU time does not.
        load_txt += (f"; the {other}-time ratio was {check:.2f}x: contention stretches long "
                     "runs more than short ones, so a busy host's wall-time ratio is not the model's")
    return {"verdict": direction, "reason": f"{direction}: {span}{load_txt}"}


# --- host load ------------------------------------------------------------------------------

class HostLoadProbe:
    """CPU used by the whole host and by this process between ``start`` and ``stop``: what is
    left is other processes' load (and the hypervisor's steal)."""

    def start(self) -> HostLoadProbe:
        import psutil

        self.cores = psutil.cpu_count() or 1
        self.wall0 = time.perf_counter()
        self.sys0 = psutil.cpu_times()
        self.own0 = _own_cpu_s()
        self.load0 = _loadavg()
        return self

    def stop(self, *, threads: int = 1) -> dict[str, Any]:
        import psutil

        wall = max(time.perf_counter() - self.wall0, 1e-9)
        sys1, own = psutil.cpu_times(), _own_cpu_s() - self.own0
        delta = {f: max(0.0, getattr(sys1, f) - getattr(self.sys0, f)) for f in sys1._fields}
        # guest time is already inside user/nice on Linux; count each second once
        total = sum(v for k, v in delta.items() if k not in ("guest", "guest_nice")) or 1e-9
        idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
        steal = delta.get("steal", 0.0)
        busy_all = max(0.0, total - idle - steal)
        others = max(0.0, busy_all - own)
        share = min(1.0, own / (wall * max(1, min(threads, self.cores))))
        others_frac = others / total
        # busy: other processes plus our threads filled (nearly) every core, or we visibly waited
        # for a core, or the hypervisor took a noticeable share. "Nearly": the CPU accounting
        # is coarse, and two spinning hogs beside one thread on 2 cores measured right at the
        # limit (others 1.0 core + ours 1 = 2) as often as above it.
        busy = (others_frac * self.cores + min(threads, self.cores) >= BUSY_FILL * self.cores
                or share < STARVED or steal / total >= 0.05)
        out = {
            "cores": self.cores,
            "wall_s": round(wall, 3),
            "own_cpu_s": round(own, 3),
            "own_cpu_share": round(share, 3),
            "others_cpu_percent": round(100 * others_frac, 1),
            "others_cores": round(others / total * self.cores, 2),
            "steal_percent": round(100 * steal / total, 1),
            "loadavg_1m": [self.load0, _loadavg()],
            "busy": busy,
        }
        out["summary"] = (
            f"host busy: other processes used {out['others_cpu_percent']:g}% of the CPU "
            f"({out['others_cores']:g} of {self.cores} cores) and this process got "
            f"{100 * share:.0f}% of the CPU time its {threads} thread(s) could use"
            + (f", steal {out['steal_percent']:g}%" if out["steal_percent"] >= 1 else "")
            if busy else
            f"host quiet: other processes used {out['others_cpu_percent']:g}% of the CPU")
        return out


def merge_host_load(loads: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The whole measurement's host load from its points': wall-weighted, worst flagged."""
    loads = [x for x in loads if x]
    if not loads:
        return None
    wall = sum(x["wall_s"] for x in loads) or 1e-9

    def weighted(key: str) -> float:
        return sum(x[key] * x["wall_s"] for x in loads) / wall

    busy = [x for x in loads if x["busy"]]
    worst = max(busy or loads, key=lambda x: (x["others_cpu_percent"], -x["own_cpu_share"]))
    out = {"cores": loads[0]["cores"], "wall_s": round(wall, 3),
           "own_cpu_s": round(sum(x["own_cpu_s"] for x in loads), 3),
           "own_cpu_share": round(weighted("own_cpu_share"), 3),
           "others_cpu_percent": round(weighted("others_cpu_percent"), 1),
           "others_cores": round(weighted("others_cores"), 2),
           "steal_percent": round(weighted("steal_percent"), 1),
           "loadavg_1m": [loads[0]["loadavg_1m"][0], loads[-1]["loadavg_1m"][-1]],
           "busy": bool(busy), "busy_points": len(busy), "points": len(loads)}
    out["summary"] = (f"host busy at {len(busy)} of {len(loads)} measured points; worst: "
                      f"{worst['summary']}" if busy else
                      f"host quiet: other processes used {out['others_cpu_percent']:g}% of the CPU")
    return out


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the one comparison ---------------------------------------------------------------------

def time_paired(sessions: Mapping[str, Any], feed: Mapping[str, Any], *, batch_size: int,
                params: Any, reference: str | None = None, threads: int = 1,
                chunk: int | None = None, what: str = "generated",
                tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time ``sessions`` (label -> onnxruntime session, all built with the same settings) on
    the same ``feed`` in interleaved rounds: each round runs every model ``chunk`` times (by
    default 5, or 1 for models slower than SLOW_RUN_NS), in the order reversed every other
    round (A B, B A, ...) so neither side always runs second.

    Returns ``{"timings": {label: stats}, "host_load": {...}}``. Each stats dict is
    ``summarize`` of its wall times plus ``cpu_p50_ms``; every label but ``reference`` (default:
    the first) also has ``vs_reference`` (``estimate``): the median over rounds of (reference's
    median time in the round / this model's) in wall time, or in CPU time on a busy host, its
    95% interval, both ratios, the number of rounds and the ``speed_verdict``.

    Stops when every model has ``params.min_runs`` runs and ``params.min_seconds`` of timed
    runs, there are at least ``params.min_rounds`` rounds and (with ``params.ci_target``) every ratio's
    interval is within +-ci_target; or when ``params.max_runs`` per model or
    ``params.max_seconds`` per model (all models together) runs out."""
    from app.engine.runtime.sessions import run_session, short_reason

    labels = list(sessions)
    reference = reference or labels[0]
    if reference not in sessions:
        raise ValueError(f"reference {reference!r} is not one of the timed models {labels}")
    slowest = 0
    for session in sessions.values():
        for _ in range(params.warmup):
            t0 = time.perf_counter_ns()
            run_session(session, feed, what)
            slowest = max(slowest, time.perf_counter_ns() - t0)
    if chunk is None:
        chunk = 1 if slowest > SLOW_RUN_NS else 5
    min_rounds = max(MIN_ROUNDS, getattr(params, "min_rounds", MIN_ROUNDS))
    chunk = max(1, min(chunk, params.max_runs // min_rounds))  # room for min_rounds rounds
    wall: dict[str, list[int]] = {k: [] for k in labels}
    cpu: dict[str, list[int]] = {k: [] for k in labels}
    ratios: dict[str, list[float]] = {k: [] for k in labels if k != reference}
    cpu_ratios: dict[str, list[float]] = {k: [] for k in ratios}
    deadline = time.perf_counter_ns() + int(params.max_seconds * 1e9) * len(labels)
    min_ns = int(params.min_seconds * 1e9)
    timed = dict.fromkeys(labels, 0)
    probe = HostLoadProbe().start()
    rounds, next_ci = 0, 0

    def settled(now: int) -> bool:
        nonlocal next_ci
        if rounds < min_rounds or any(len(wall[k]) < params.min_runs or timed[k] < min_ns for k in labels):
            return False
        if params.ci_target is None:
            return True
        if now < next_ci:  # sorting every round would cost more than a tiny model's rounds
            return False
        next_ci = now + CI_CHECK_NS
        return all(median_ci_rel(r) <= params.ci_target for r in ratios.values())

    while True:
        order = labels if rounds % 2 == 0 else labels[::-1]
        this_wall: dict[str, list[int]] = {}
        this_cpu: dict[str, list[int]] = {}
        for label in order:
            session, ws, cs = sessions[label], [], []
            for _ in range(chunk):
                c0, t0 = time.process_time_ns(), time.perf_counter_ns()
                try:
                    session.run(None, feed)
                except Exception as exc:  # a run failing after a good warm-up: still user-facing
                    raise InferenceFailed(f"onnxruntime failed during timing ({short_reason(exc)})") from None
                t1, c1 = time.perf_counter_ns(), time.process_time_ns()
                ws.append(t1 - t0)
                cs.append(c1 - c0)
            this_wall[label], this_cpu[label] = ws, cs
            wall[label] += ws
            cpu[label] += cs
            timed[label] += sum(ws)
        rounds += 1
        ref_w, ref_c = median(this_wall[reference]), median(this_cpu[reference])
        for label in ratios:
            w, c = median(this_wall[label]), median(this_cpu[label])
            ratios[label].append(ref_w / w if w > 0 else math.inf)
            if c > 0 and ref_c > 0:  # CPU clocks can tick coarser than a tiny model's run
                cpu_ratios[label].append(ref_c / c)
        if tick is not None:
            tick()
        now = time.perf_counter_ns()
        if settled(now) or now >= deadline or min(len(w) for w in wall.values()) >= params.max_runs:
            break
    host_load = probe.stop(threads=threads)
    timings: dict[str, dict[str, Any]] = {}
    for label in labels:
        stats = {**summarize(wall[label], batch_size),
                 "cpu_p50_ms": round(median(cpu[label]) / 1e6, 4),
                 "noisy": params.ci_target is not None and label in ratios
                 and median_ci_rel(ratios[label]) > params.ci_target}
        if label in ratios:
            stats["vs_reference"] = {**estimate(ratios[label], cpu_ratios[label], host_load, reference),
                                     # wall-time ratio of each round, aligned across labels by round
                                     "round_speedups": [round(x, 4) for x in ratios[label]]}
        timings[label] = stats
    return {"timings": timings, "host_load": host_load}


def estimate(ratios: Sequence[float], cpu_ratios: Sequence[float],
             host_load: Mapping[str, Any] | None, reference: str = "reference") -> dict[str, Any]:
    """The speedup over ``reference`` from per-round ratios, with interval and verdict. Its
    basis is wall time, or CPU time on a busy host: there, other processes' time slices land
    unevenly on long and short runs (measured here: a 3.0x CPU-time speedup read 3.5x to 22x
    in wall time), while CPU time counts only this process's own work."""
    busy = bool(host_load and host_load.get("busy"))
    have_cpu = len(cpu_ratios) >= max(6, len(ratios) // 2)
    basis = "cpu" if busy and have_cpu else "wall"
    main = cpu_ratios if basis == "cpu" else ratios
    mid = median(main) if main else None
    low, high = median_ci(main)
    wall_mid = median(ratios) if ratios else None
    cpu_mid = median(cpu_ratios) if have_cpu else None
    check = (wall_mid if basis == "cpu" else cpu_mid) if busy else None

    def r4(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {"reference": reference, "basis": basis,
            "speedup": r4(mid), "ci_low": r4(low), "ci_high": r4(high),
            "confidence": CONFIDENCE, "rounds": len(ratios),
            "wall_speedup": r4(wall_mid), "cpu_speedup": r4(cpu_mid),
            **speed_verdict(mid, low, high, basis=basis, check=check, host_load=host_load)}


def overall_verdict(estimates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several points' verdicts as one: "faster" when every point is faster, "slower" when
    some are slower and none faster, "mixed" when both, else "inconclusive". ``faster`` is
    True / False / None (None: the measurement could not tell, which is not "not faster")."""
    kinds = [e["verdict"] for e in estimates]
    if kinds and all(k == "faster" for k in kinds):
        verdict = "faster"
    elif "slower" in kinds:
        verdict = "mixed" if "faster" in kinds else "slower"
    else:
        verdict = "inconclusive"
    faster = True if verdict == "faster" else False if verdict in ("slower", "mixed") else None
    return {"verdict": verdict, "faster": faster}


def point_estimate(point: Mapping[str, Any]) -> Mapping[str, Any]:
    """A report's comparison point's interleaved estimate (``speedup_ci``); a point without
    one (assembled from bare p50s) gets the verdict its speedup alone allows: no interval."""
    est = point.get("speedup_ci")
    if est:
        return est
    s = point["speedup"]
    return speed_verdict(s, s, s)
