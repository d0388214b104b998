"""What a job runs: one technique, or a pipeline of steps whose outputs feed each other.

Used by the API (validate before queueing, with the exact field in the error) and by the worker
(rebuild the typed steps from the stored row, run them, report). A pipeline is stored as
technique "pipeline" with params ``{"steps": [{"technique", "params"}, ...]}``, every step's
params normalised.

Stored params also hold their Params version under ``VERSION``, a key no params field can have:
the worker upgrades params stored by an older release (``Params.upgrade``) and refuses those
of a newer one; clients never see it (``public``) and may not send it.
"""

from __future__ import annotations

import concurrent.futures

import difflib
import json

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.engine.base import Context, Params, Result, Source, Technique
from app.engine.catalog import all_techniques
from app.engine.errors import InvalidParams, TechniqueError
from app.engine.reports import checked, pipeline_report
from app.engine.pytorch.loading import is_pt2
from app.engine.runtime.keras_archive import sniff as keras_kind
from app.engine.runtime.isolate import run_bounded
from app.engine.runtime.normalize import normalized
from app.engine.runtime.sessions import probe_session

PIPELINE = "pipeline"
MAX_STEPS = 8
VERSION = "_version"  # pydantic fields never start with "_"


@dataclass
class Step:
    technique: type[Technique]
    params: Params

    @property
    def name(self) -> str:
        return self.technique.name

    def stored(self) -> dict[str, Any]:
        return {"technique": self.name, "params": self.stored_params()}

    def stored_params(self) -> dict[str, Any]:
        return {**self.params.model_dump(mode="json"), VERSION: self.technique.Params.params_version}


def _step(name: str, params: dict[str, Any], loc: list[Any], stored: bool = False) -> Step:
    technique = all_techniques().get(name)
    if technique is None:
        close = difflib.get_close_matches(str(name), list(all_techniques()), n=1, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise InvalidParams(f"{'.'.join(map(str, loc[1:] + ['technique']))}: unknown technique {name!r}; "
                            f"{hint}known: {sorted(all_techniques())}.",
                            extra={"errors": [{"loc": loc + ["technique"], "msg": "unknown technique"}]})
    if stored and isinstance(params, dict):
        params = _current(technique, params, loc)
    try:
        return Step(technique, technique.Params.model_validate(params))
    except ValidationError as exc:
        errors = [{"loc": loc + ["params", *e["loc"]], "msg": _advice(technique.Params, e), "type": e["type"]}
                  for e in exc.errors()]
        first = errors[0]
        raise InvalidParams(f"{'.'.join(map(str, first['loc'][1:]))}: {first['msg']}", extra={"errors": errors}) from None


def _advice(params: type[Params], error: Any) -> str:
    """pydantic's message, plus what would be right: the valid names for an unknown field (the
    closest first), the expected type and an example for a value of the wrong type."""
    msg, field = error["msg"], error["loc"][0] if error["loc"] else None
    fields = params.model_fields
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(field), list(fields), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        return f"unknown parameter for this technique; {hint}valid ones: {sorted(fields)}"
    if field in fields and len(error["loc"]) == 1 and error["type"].endswith("_type"):
        schema = params.model_json_schema()["properties"].get(field, {})
        examples = [e for e in schema.get("examples", []) if e is not None]
        expected = _described(schema)
        return f"{msg} ({expected}{f', e.g. {json.dumps(examples[0])}' if examples else ''})"
    return msg


def _described(schema: dict[str, Any]) -> str:
    """A JSON schema's type in words: "a list of integers", "a number or null"..."""
    names = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
             "object": "an object", "null": "null"}
    if "anyOf" in schema:
        return "expected " + " or ".join(_described(s).removeprefix("expected ") for s in schema["anyOf"])
    if schema.get("type") == "array":
        item = schema.get("items", {}).get("type")
        return f"expected a list of {item}s" if item in ("integer", "number", "string", "object") else "expected a list"
    if "enum" in schema:
        return f"expected one of {schema['enum']}"
    return "expected " + names.get(schema.get("type", ""), "another type")


def _current(technique: type[Technique], params: dict[str, Any], loc: list[Any]) -> dict[str, Any]:
    """Stored params as the current version's fields: rows from before versions are version 1."""
    params = dict(params)
    version, current = params.pop(VERSION, 1), technique.Params.params_version
    if not isinstance(version, int) or not 1 <= version <= current:
        raise InvalidParams(f"{'.'.join(map(str, loc + ['params']))}: stored as version {version!r} of "
                            f"{technique.name}'s params; this release reads versions 1 to {current}.")
    return params if version == current else technique.Params.upgrade(params, version)


def from_request(technique: str | None, params: dict[str, Any], steps: list[dict[str, Any]] | None) -> list[Step]:
    if (technique is None) == (steps is None):
        raise InvalidParams("Give either `technique` (with `params`) or `steps`, not both.",
                           extra={"errors": [{"loc": ["body", "technique"], "msg": "technique xor steps"}]})
    if steps is None:
        return [_step(technique, params, ["body"])]
    if not 1 <= len(steps) <= MAX_STEPS:
        raise InvalidParams(f"steps: a pipeline has 1 to {MAX_STEPS} steps.")
    plan = [_step(s["technique"], s.get("params", {}), ["body", "steps", i]) for i, s in enumerate(steps)]
    for i, step in enumerate(plan[:-1]):
        if not step.technique.produces_model:
            raise InvalidParams(f"steps.{i}: {step.name} produces no model, so nothing can feed step {i + 1}; "
                               "put it last (or run it as its own job).")
    return plan


def stored(plan: list[Step]) -> tuple[str, dict[str, Any]]:
    if len(plan) == 1:
        return plan[0].name, plan[0].stored_params()
    return PIPELINE, {"steps": [s.stored() for s in plan]}


def public(technique: str, params: Any) -> Any:
    """A job row's params as the API shows them: what the client sent, normalised."""
    if not isinstance(params, dict):
        return params
    if technique == PIPELINE and isinstance(params.get("steps"), list):
        return {**params, "steps": [{**s, "params": public(s.get("technique"), s.get("params"))}
                                    if isinstance(s, dict) else s for s in params["steps"]]}
    return {k: v for k, v in params.items() if k != VERSION}


def from_row(technique: str, params: Any) -> list[Step]:
    """Raises InvalidParams, like from_request, when a stored row no longer validates: a row
    written before an upgrade may name a technique or a field this version no longer has."""
    if technique != PIPELINE:
        return [_step(technique, params, [], stored=True)]
    steps = params.get("steps") if isinstance(params, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("technique"), str) for s in steps):
        raise InvalidParams("steps: not a list of {technique, params}.")
    return [_step(s["technique"], s.get("params", {}), ["steps", i], stored=True) for i, s in enumerate(steps)]


def referenced_models(plan: list[Step]) -> list[str]:
    """Model ids the steps' params name (e.g. evaluate's reference_model_id): the API checks the
    tenant owns each before queueing, the worker hands their files over in ``ctx.models``."""
    ids: list[str] = []
    for step in plan:
        for name in step.technique.model_params:
            value = getattr(step.params, name)
            ids.extend(value if isinstance(value, list) else [value] if value else [])
    return ids


def run(plan: list[Step], ctx: Context, workdir: Path, progress: Callable[[float, str], None]) -> list[Result]:
    """Run the steps, each one's output feeding the next; progress is split evenly between them.

    The job's own ONNX model is first opened in a bounded child (graph optimisation is native
    code a hostile graph can keep busy), then normalised (``runtime.normalize``: old-ecosystem
    files made modern, so every technique reads weights as initializers and feeds only real
    inputs; the first step's report says what changed); later steps read models this
    pipeline wrote. A first step that never opens the model (``opens_model`` False: an
    exporter) gets the job's file as it is. Each step after the first gets the one before as
    ``ctx.source`` (its technique, params and report)."""
    results: list[Result] = []
    model_path, parent_path, source = ctx.model_path, ctx.parent_path, ctx.source
    normalization = None
    onnx = not is_pt2(model_path) and keras_kind(model_path) is None  # .pt2 and Keras go to convert.onnx
    if onnx and plan[0].technique.opens_model:
        progress(0.0, "loading")
        model_path, normalization = _probed_and_normalized(model_path, workdir, ctx.native_step_timeout_s)
    first_path = model_path
    n = len(plan)
    for i, step in enumerate(plan):
        step_dir = workdir / f"step-{i}" if n > 1 else workdir
        step_dir.mkdir(exist_ok=True)
        label = f"step {i + 1}/{n} {step.name}: " if n > 1 else ""

        def step_progress(fraction: float, stage: str, i=i, label=label) -> None:
            progress((i + max(0.0, min(1.0, fraction))) / n, f"{label}{stage}")

        step_ctx = replace(ctx, model_path=model_path, parent_path=parent_path, params=step.params,
                           workdir=step_dir, progress=step_progress, source=source)
        result = step.technique().run(step_ctx)
        if i == 0 and normalization is not None:
            result.report = checked({**result.report, "normalization": normalization})
        results.append(result)
        if result.output_path is not None:
            parent_path, model_path = model_path, result.output_path
            source = Source(step.name, step.params.model_dump(mode="json"), result.report)
    producers = [(step, r) for step, r in zip(plan, results) if r.output_path is not None]
    if len(producers) >= 2 and onnx:
        from app.engine.quantize.report import end_to_end

        progress(0.995, "end to end: job input vs final output")
        quiet = replace(ctx, progress=lambda fraction, stage: None)
        trained = [step.name for step in plan if step.technique.trains_on_dataset(step.params)]
        try:
            results[-1].end_to_end = end_to_end(quiet, first_path, producers[-1][1].output_path,
                                                producers[-1][0].params, trained)
        except TechniqueError as exc:  # every step succeeded: the job stands, the gap is said
            results[-1].end_to_end = {"summary": f"not measured end to end: {exc}"}
    return results


def _probed_and_normalized(model_path: Path, workdir: Path, deadline_s: float) -> tuple[Path, Any]:
    """Open the model in onnxruntime and normalise it, two bounded children side by side (on
    MiniLM, 0.8 s and 1.2 s one after the other). The probe's failure is the job's error even
    when the normaliser also failed: it says the model cannot run at all."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        probe = pool.submit(run_bounded, probe_session, str(model_path), deadline_s=deadline_s,
                            step="onnxruntime session creation", cwd=workdir)
        try:
            result = normalized(model_path, workdir, deadline_s)
        except BaseException:
            probe.result()  # raises the probe's error, if any, in place of the normaliser's
            raise
        probe.result()
    return result


def last_output(output_ids: list[str | None]) -> str | None:
    """The job's output model: the one the last model-producing step wrote."""
    return next((o for o in reversed(output_ids) if o is not None), None)


def report(plan: list[Step], results: list[Result], model_id: str | None,
           output_ids: list[str | None]) -> dict[str, Any]:
    """The job's report: a single step's own, or the pipeline's with every step's inside.
    ``output_ids``: the model each step produced (None for a step that produces none)."""
    if len(plan) == 1:
        return results[0].report
    steps = [{"technique": step.name, "params": step.params.model_dump(mode="json"), "output_model_id": produced,
              "report": result.report} for step, result, produced in zip(plan, results, output_ids)]
    return pipeline_report(model_id, last_output(output_ids), steps, results[-1].end_to_end)
