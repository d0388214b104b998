"""One cell of the compatibility matrix: a corpus entry (tests/support/corpus.py) x a technique,
run as the worker runs a job, its output verified. Shared by benchmarks/compat.py (the whole
matrix) and tests/engine/test_compat_slice.py (the CI slice).

A cell is the upload's inspection first (app.models.formats, with the service's default limits: a
refusal there is the 4xx the user would get), then ``app.engine.pipeline.run`` (the bounded
session probe, then the technique) in a fresh work folder, with small measurement params and the
dims/vocabulary a user would give. A success is verified: the produced ONNX runs in onnxruntime
on the entry's dataset with the parent's output shapes; the fidelity is read from the report.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.support.corpus import Entry

TECHNIQUES = ["benchmark", "quantize.dynamic", "quantize.static", "quantize.fp16", "quantize.int4",
              "prune.structured", "convert.onnx"]
PRUNABLE = {"cnn", "legacy", "transformer-encoder"}
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
REASON_CHARS = 120  # in the tables
DETAIL_CHARS = 400  # kept in the results


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
    return {"status": status, "error_type": error_type, "reason": reason[:DETAIL_CHARS],
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
    names = [i.name for i in session.get_inputs()]
    if not set(names) <= set(feeds):  # a converted program names its inputs after forward's parameters
        feeds = dict(zip(names, feeds.values()))
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
