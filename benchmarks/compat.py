"""The compatibility matrix: every technique on every model of the corpus (tests/support/corpus.py).

Each cell runs as the worker runs a job: the upload's inspection first (app.models.formats, with
the service's default limits: a refusal there is the 4xx the user would get), then
``app.engine.pipeline.run`` (the bounded session probe, then the technique) in a fresh work
folder. A success is verified here: the produced ONNX runs in onnxruntime on the entry's
dataset with the parent's output shapes; its fidelity is read from the technique's report.

    .venv/bin/python benchmarks/compat.py [--only cnn|legacy|bert|resnet-ts9 ...]
        [--techniques benchmark quantize.dynamic ...] [--jobs 2] [--cell-timeout 240]
        [--write docs/compatibility.md]

Prints the matrix and the success rates per technique against the targets of issue 13, and
(with --write) writes the same as Markdown. Cells run in child processes (``--jobs`` at a time);
one past ``--cell-timeout`` seconds is killed and reported as ``cell_timeout``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support import corpus  # noqa: E402
from tests.support.corpus import Entry  # noqa: E402

TECHNIQUES = ["benchmark", "quantize.dynamic", "quantize.static", "quantize.fp16", "quantize.int4",
              "prune.structured", "convert.onnx"]
PRUNABLE = {"cnn", "legacy", "transformer-encoder"}
FAMILIES = ["cnn", "legacy", "transformer-encoder", "decoder"]
# Issue 13's targets: share of cells that succeed, per technique and family ("all" = every family).
TARGETS = {**{t: {"all": 0.95} for t in TECHNIQUES[:5]},
           "prune.structured": {"cnn": 0.80, "transformer-encoder": 0.80},
           "convert.onnx": {"all": 1.0}}
MEASURE = {"batch_sizes": [1], "threads": [1], "warmup": 1, "min_runs": 3, "max_runs": 20,
           "min_seconds": 0.0, "max_seconds": 1.0}
QUANT = {**MEASURE, "fidelity_samples": 16, "fidelity_batch_size": 8}
PARAMS: dict[str, dict[str, Any]] = {
    "benchmark": {**MEASURE, "ci_target": None},
    "quantize.dynamic": QUANT,
    "quantize.static": {**QUANT, "samples": 16},
    "quantize.fp16": QUANT,
    "quantize.int4": QUANT,
    "prune.structured": {**MEASURE, "ratio": 0.3},
    "convert.onnx": {},
}
REASON_CHARS = 120


def applies(entry: Entry, technique: str) -> bool:
    if entry.expect == "upload_refused":
        return technique == "benchmark"  # one cell: the upload's refusal
    if entry.exporter == "torch.export":
        return technique == "convert.onnx"
    if technique == "convert.onnx":
        return False
    return technique != "prune.structured" or entry.family in PRUNABLE


def params_for(entry: Entry, technique: str) -> dict[str, Any]:
    params = dict(PARAMS[technique])
    if "batch_sizes" in params:  # what a user gives for a model with named dims and a vocabulary
        if entry.dims:
            params["dims"] = entry.dims
        if entry.int_high:
            params["int_high"] = entry.int_high
    return params


def _cell(status: str, started: float, error_type: str = "", reason: str = "", **extra: Any) -> dict[str, Any]:
    return {"status": status, "error_type": error_type, "reason": reason[:REASON_CHARS],
            "wall_s": round(time.monotonic() - started, 1), **extra}


def _upload(path: Path) -> tuple[int, str, str] | None:
    """What the upload would answer: None when accepted, else (status, problem type, detail)."""
    from app.errors import STATUS, LatheError
    from app.models.formats import inspect_model
    from app.settings import Settings

    settings = Settings()
    try:
        inspect_model(path, max_nodes=settings.max_graph_nodes, max_depth=settings.max_subgraph_depth)
    except LatheError as exc:
        status = next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)
        return status, exc.slug, exc.detail
    return None


def run_cell(entry: Entry, technique: str, timeout_s: float = 240.0) -> dict[str, Any]:
    """One cell, in this process: upload check, pipeline.run, verification of the output."""
    from app.engine import pipeline
    from app.engine.base import Context
    from app.engine.errors import TechniqueError

    started = time.monotonic()
    refused = _upload(entry.file)
    if entry.expect == "upload_refused":
        if refused and refused[0] == 422 and "save_as_external_data=False" in refused[2]:
            return _cell("ok", started, reason=f"refused at upload as expected ({refused[0]} {refused[1]})")
        return _cell("fail", started, "upload_accepted" if refused is None else refused[1],
                     "external data should be refused at upload with advice to re-save"
                     if refused is None else refused[2])
    if refused:
        return _cell("fail", started, f"upload_{refused[0]}_{refused[1]}", refused[2])
    plan = pipeline.from_request(technique, params_for(entry, technique), None)
    step = plan[0]
    with tempfile.TemporaryDirectory(prefix="compat-") as tmp:
        workdir = Path(tmp)
        ctx = Context(model_path=entry.file, params=step.params, workdir=workdir,
                      dataset_path=entry.data if step.technique.needs_dataset else None,
                      native_step_timeout_s=timeout_s)
        try:
            (result,) = pipeline.run(plan, ctx, workdir, lambda fraction, stage: None)
        except TechniqueError as exc:
            return _cell("fail", started, exc.type, exc.detail)
        except Exception as exc:  # noqa: BLE001 - the worker reports these as internal_error
            return _cell("fail", started, "internal_error", f"{type(exc).__name__}: {exc}",
                         trace=traceback.format_exc()[-2000:])
        fidelity = _fidelity(result.report)
        if result.output_path is None:
            return _cell("ok", started, fidelity=fidelity)
        problem = verify(entry, result.output_path)
        if problem:
            return _cell("fail", started, "verify_failed", problem, fidelity=fidelity)
        return _cell("ok", started, fidelity=fidelity)


def _fidelity(report: dict[str, Any]) -> str:
    """The worst output's mean cosine (or max |error|) against the parent, as reported."""
    found = _find(report, "fidelity")
    if isinstance(found, dict) and isinstance(found.get("outputs"), dict):
        cosines = [o.get("cosine_mean") for o in found["outputs"].values() if isinstance(o, dict)]
        cosines = [c for c in cosines if isinstance(c, (int, float))]
        if cosines:
            return f"cos {min(cosines):.4f}"
    error = _find(report, "max_abs_error")
    return f"max|err| {error:.2g}" if isinstance(error, (int, float)) else ""


def _find(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            if (found := _find(item, key)) is not None:
                return found
    return None


def _outputs(path: Path, feeds: dict[str, Any]) -> list[tuple[int, ...]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return [tuple(o.shape) for o in session.run(None, {k: v for k, v in feeds.items() if k in names})]


def verify(entry: Entry, output: Path) -> str:
    """'' when the produced model runs in onnxruntime on the entry's data with the parent's output
    shapes, else what differs."""
    import numpy as np

    with np.load(entry.data) as data:
        feeds = {k: data[k][:2] for k in data.files}
    if entry.exporter == "torch.export":
        import torch

        program = torch.export.load(str(entry.file))  # our own corpus file, not an upload
        with torch.no_grad():
            out = program.module()(*(torch.from_numpy(v) for v in feeds.values()))
        expected = [tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])]
    else:
        expected = _outputs(entry.file, feeds)
    try:
        got = _outputs(output, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"the output does not run in onnxruntime: {type(exc).__name__}: {exc}"
    return "" if got == expected else f"output shapes {got} differ from the parent's {expected}"


# ---------------------------------------------------------------- running many cells


def _serve(conn) -> None:
    import torch

    torch.set_num_threads(1)
    while (task := conn.recv()) is not None:
        entry, technique, timeout_s = task
        try:
            conn.send(run_cell(Entry(**entry), technique, timeout_s))
        except Exception as exc:  # noqa: BLE001
            conn.send({"status": "fail", "error_type": "harness_error", "reason": f"{type(exc).__name__}: {exc}"[:REASON_CHARS],
                       "wall_s": 0.0})


class _Child:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs,))  # not daemonic: cells start their own children
        self.proc.start()

    def run(self, entry: Entry, technique: str, timeout_s: float) -> dict[str, Any] | None:
        self.conn.send((asdict(entry), technique, timeout_s))
        # the cell's own deadlines are timeout_s per native step: leave it room before the kill
        if self.conn.poll(timeout_s * 1.5 + 30):
            return self.conn.recv()
        return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def run_matrix(entries: list[Entry], techniques: list[str], jobs: int, timeout_s: float,
               log=print) -> dict[tuple[str, str], dict[str, Any]]:
    cells = [(e, t) for e in entries if not e.error for t in techniques if applies(e, t)]
    todo: queue.Queue = queue.Queue()
    for cell in cells:
        todo.put(cell)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    lock = threading.Lock()

    def slot() -> None:
        child = _Child()
        while True:
            try:
                entry, technique = todo.get_nowait()
            except queue.Empty:
                break
            started = time.monotonic()
            result = child.run(entry, technique, timeout_s)
            if result is None:
                child.kill()
                child = _Child()
                result = {"status": "fail", "error_type": "cell_timeout", "wall_s": round(time.monotonic() - started, 1),
                          "reason": f"killed after {time.monotonic() - started:.0f} s"}
            with lock:
                results[entry.name, technique] = result
                log(f"[{len(results)}/{len(cells)}] {entry.name} {technique}: {result['status']} "
                    f"{result.get('error_type', '')} {result['wall_s']} s {result.get('reason', '')[:80]}")
        child.close()

    threads = [threading.Thread(target=slot) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ---------------------------------------------------------------- tables


def _short_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "·"
    if result["status"] == "ok":
        return f"ok {result['wall_s']:.0f}s"
    return f"**{result['error_type']}**"


def rates(entries: list[Entry], techniques: list[str],
          results: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for t in techniques:
        row: dict[str, Any] = {"technique": t}
        for family in ["all", *FAMILIES]:
            cells = [results[e.name, t] for e in entries if (e.name, t) in results
                     and (family == "all" or e.family == family)]
            ok = sum(c["status"] == "ok" for c in cells)
            row[family] = (ok, len(cells))
        row["target"] = TARGETS.get(t, {})
        row["met"] = all(row[f][1] and row[f][0] / row[f][1] >= goal for f, goal in row["target"].items())
        rows.append(row)
    return rows


def markdown(entries: list[Entry], techniques: list[str], results: dict[tuple[str, str], dict[str, Any]],
             wall_s: float, command: str) -> str:
    def pct(pair: tuple[int, int]) -> str:
        ok, n = pair
        return f"{100 * ok / n:.0f}% ({ok}/{n})" if n else "–"

    lines = ["# Compatibility matrix", "",
             f"Generated by `{command}` (do not edit by hand; rerun it to regenerate). "
             f"The corpus is tests/support/corpus.py (version {corpus.VERSION}); the whole run took "
             f"{wall_s / 60:.1f} min.", "",
             "Each cell is the upload's inspection, then `app.engine.pipeline.run` (the worker's path) "
             "with small measurement params; `ok` means the technique succeeded and its output model ran "
             "in ONNX Runtime with the parent's output shapes. Otherwise the cell names the error type "
             "(details below).", "", "## Success rates vs targets (issue 13)", "",
             "| technique | all | cnn | legacy | encoders | decoders | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rates(entries, techniques, results):
        target = ", ".join(f"{f} ≥ {g:.0%}" for f, g in row["target"].items()) or "–"
        lines.append(f"| {row['technique']} | {pct(row['all'])} | {pct(row['cnn'])} | {pct(row['legacy'])} | "
                     f"{pct(row['transformer-encoder'])} | {pct(row['decoder'])} | {target} | "
                     f"{'yes' if row['met'] else '**no**'} |")
    lines += ["", "## Matrix", "", "| model | family | exporter | opset | " + " | ".join(techniques) + " |",
              "|---" * (4 + len(techniques)) + "|"]
    for e in entries:
        cells = ["export refused" if e.error and i == 0 else _short_cell(results.get((e.name, t)))
                 for i, t in enumerate(techniques)]
        lines.append(f"| {e.name} | {e.family} | {e.exporter} | {e.opset or '–'} | " + " | ".join(cells) + " |")
    failures = [(e, t, results[e.name, t]) for e in entries for t in techniques
                if (e.name, t) in results and results[e.name, t]["status"] != "ok"]
    lines += ["", "## Failures, grouped", "", "| error type | technique | cells | first reason |", "|---|---|---|---|"]
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for e, t, r in failures:
        groups[r["error_type"], t].append((e, r))
    for (kind, t), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {kind} | {t} | {len(items)} | {_md(items[0][1]['reason'])} |")
    lines += ["", "## Every failure", "", "| model | technique | error type | reason (first "
              f"{REASON_CHARS} chars) | wall s |", "|---|---|---|---|---|"]
    lines += [f"| {e.name} | {t} | {r['error_type']} | {_md(r['reason'])} | {r['wall_s']} |" for e, t, r in failures]
    refused = [e for e in entries if e.error]
    lines += ["", "## Exports the exporters refused", "", "| model | exporter | opset | why |", "|---|---|---|---|"]
    lines += [f"| {e.model} | {e.exporter} | {e.opset or '–'} | {_md(e.error[:200])} |" for e in refused]
    fidelity = Counter(results[k].get("fidelity", "") != "" for k in results if results[k]["status"] == "ok")
    lines += ["", f"Fidelity to the parent was in the report of {fidelity[True]} of the "
              f"{sum(fidelity.values())} successful cells (benchmark reports none).", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def select(only: list[str] | None) -> list[str] | None:
    """Entry names for --only: families, models or entries."""
    if not only:
        return None
    every = corpus.all_names()
    families = {name: spec.family for name, spec in corpus.specs().items()}
    return [n for n in every if n in only or n.rsplit("-", 1)[0] in only
            or families.get(n.rsplit("-", 1)[0]) in only or (n.startswith("legacy") and "legacy" in only)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="families (cnn, legacy, transformer-encoder, decoder), models or entries")
    ap.add_argument("--techniques", nargs="*", default=TECHNIQUES, choices=TECHNIQUES)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cell-timeout", type=float, default=240.0, help="seconds per native step of a cell")
    ap.add_argument("--write", type=Path, help="write the Markdown here (docs/compatibility.md)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    entries = corpus.build(select(args.only), log=lambda m: print(m, file=sys.stderr, flush=True))
    entries.sort(key=lambda e: (FAMILIES.index(e.family), e.model, e.exporter, e.opset or 0))
    results = run_matrix(entries, args.techniques, args.jobs, args.cell_timeout,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    command = "python benchmarks/compat.py" + (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --techniques {' '.join(args.techniques)}" if args.techniques != TECHNIQUES else "") + \
        (f" --write {args.write}" if args.write else "")
    text = markdown(entries, args.techniques, results, time.monotonic() - started, command)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
