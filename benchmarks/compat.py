"""The compatibility matrix: every technique on every model of the corpus (tests/support/corpus.py).

Each cell runs as the worker runs a job (tests/support/matrix.py: the upload's inspection, then
``app.engine.pipeline.run``), engine-direct (no API or broker), and its output is verified in
onnxruntime against the parent's output shapes; the fidelity is read from the report.

    .venv/bin/python benchmarks/compat.py [--only cnn|legacy|bert|resnet-ts9 ...]
        [--techniques benchmark quantize.dynamic ...] [--jobs 2] [--cell-timeout 240]
        [--write docs/compatibility.md]

Prints the matrix and the success rates per technique against the targets of issue 13, and
(with --write) writes the same as Markdown. Cells run in child processes (``--jobs`` at a time);
one past ``--cell-timeout`` seconds is killed and reported as ``cell_timeout``.
"""

from __future__ import annotations

import argparse
import json
import re
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support import corpus  # noqa: E402
from tests.support.corpus import Entry  # noqa: E402
from tests.support.matrix import REASON_CHARS, TECHNIQUES, applies, run_cell  # noqa: E402

FAMILIES = ["cnn", "legacy", "transformer-encoder", "decoder"]
# Issue 13's targets: share of cells that succeed, per technique and family ("all" = every family).
RESULTS = corpus.CACHE / "compat-results.json"
TARGETS = {**{t: {"all": 0.95} for t in TECHNIQUES[:5]},
           "prune.structured": {"cnn": 0.80, "transformer-encoder": 0.80},
           "convert.onnx": {"all": 1.0}}


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
        return "refused at upload (expected)" if result["reason"].startswith("refused at upload") \
            else f"ok {result['wall_s']:.0f}s"
    return f"**{result['error_type']}**"


def rates(entries: list[Entry], techniques: list[str],
          results: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for t in techniques:
        row: dict[str, Any] = {"technique": t}
        for family in ["all", *FAMILIES]:
            cells = [results[e.name, t] for e in entries if (e.name, t) in results and not e.expect
                     and (family == "all" or e.family == family)]
            ok = sum(c["status"] == "ok" for c in cells)
            na = sum(c.get("error_type") == "not_applicable" for c in cells)
            row[family] = (ok, len(cells) - na, na)
        row["target"] = TARGETS.get(t, {})
        row["met"] = all(row[f][1] and row[f][0] / row[f][1] >= goal for f, goal in row["target"].items())
        rows.append(row)
    return rows


def markdown(entries: list[Entry], techniques: list[str], results: dict[tuple[str, str], dict[str, Any]],
             wall_s: float, command: str) -> str:
    def pct(cell: tuple[int, int, int]) -> str:
        ok, n, na = cell
        rate = f"{100 * ok / n:.0f}% ({ok}/{n})" if n else "–"
        return f"{rate}, {na} n/a" if na else rate

    lines = ["# Compatibility matrix", "",
             f"Generated by `{command}` (do not edit by hand; rerun it to regenerate). "
             f"The corpus is tests/support/corpus.py (version {corpus.VERSION}); the whole run took "
             f"{wall_s / 60:.1f} min.", "",
             "Each cell is the upload's inspection, then `app.engine.pipeline.run` (the worker's path) "
             "with small measurement params; `ok` means the technique succeeded and its output model ran "
             "in ONNX Runtime with the parent's output shapes. Otherwise the cell names the error type "
             "(details below). A `not_applicable` cell is a correct refusal: the model has nothing the "
             "technique works on (4-bit MatMul quantization of a convolution-only net); such cells are "
             "counted as n/a, outside the rate.", "", "## Success rates vs targets (issue 13)", "",
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
    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    for e, t, r in failures:
        groups[r["error_type"], t, signature(r["reason"])].append((e, r))
    lines[-2:] = ["| error type | technique | cells | models | reason (of the first) |", "|---|---|---|---|---|"]
    for (kind, t, _), items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        models = ", ".join(sorted({e.model for e, _ in items}))
        lines.append(f"| {kind} | {t} | {len(items)} | {models} | {_md(items[0][1]['reason'][:2 * REASON_CHARS])} |")
    lines += ["", "## Every failure", "", "| model | technique | error type | reason (first "
              f"{REASON_CHARS} chars) | wall s |", "|---|---|---|---|---|"]
    lines += [f"| {e.name} | {t} | {r['error_type']} | {_md(r['reason'][:REASON_CHARS])} | {r['wall_s']} |"
              for e, t, r in failures]
    refused = [e for e in entries if e.error]
    lines += ["", "## Exports the exporters refused", "", "| model | exporter | opset | why |", "|---|---|---|---|"]
    lines += [f"| {e.model} | {e.exporter} | {e.opset or '–'} | {_md(e.error[:200])} |" for e in refused]
    fidelity = Counter(results[k].get("fidelity", "") != "" for k in results if results[k]["status"] == "ok")
    lines += ["", f"Fidelity to the parent was in the report of {fidelity[True]} of the "
              f"{sum(fidelity.values())} successful cells (benchmark reports none).", ""]
    return "\n".join(lines)


def signature(reason: str) -> str:
    """A failure's reason without its particulars (quoted names, numbers, shapes), to group by."""
    reason = re.sub(r"'[^']*'|\[[^\]]*\]|\S*\d\S*", "…", reason)
    return reason[:REASON_CHARS]


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
    ap.add_argument("--results", type=Path, default=RESULTS, help="every cell's result, as JSON")
    ap.add_argument("--from-results", action="store_true",
                    help="don't run anything: print (and --write) the tables of the last run's --results")
    args = ap.parse_args(argv)
    started = time.monotonic()
    entries = corpus.build(select(args.only), log=lambda m: print(m, file=sys.stderr, flush=True))
    entries.sort(key=lambda e: (FAMILIES.index(e.family), e.model, e.exporter, e.opset or 0))
    if args.from_results:
        saved = json.loads(args.results.read_text())
        results = {(c["entry"], c["technique"]): c for c in saved["cells"]}
        elapsed = saved["wall_s"]
    else:
        results = run_matrix(entries, args.techniques, args.jobs, args.cell_timeout,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
        elapsed = time.monotonic() - started
        args.results.write_text(json.dumps({"wall_s": elapsed, "cells": [
            {"entry": name, "technique": t, **r} for (name, t), r in results.items()]}, indent=1))
    command = "python benchmarks/compat.py" + (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --techniques {' '.join(args.techniques)}" if args.techniques != TECHNIQUES else "") + \
        (f" --write {args.write}" if args.write else "")
    text = markdown(entries, args.techniques, results, elapsed, command)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
