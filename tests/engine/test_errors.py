"""One error vocabulary: every job error type is a member of one enum, raised only through a
class that fixes it, listed in the OpenAPI schema, and written in the problem+json types' casing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import errors as problems
from app.engine import errors as engine_errors
from app.engine.errors import TechniqueError
from app.jobs import errors as job_errors
from app.jobs.errors import JobErrorType
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# The only modules that may define an error class with a ``type``: the engine's, the service's.
HOMES = {ROOT / "app/engine/errors.py", ROOT / "app/jobs/errors.py"}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Functions that record a job's failure, with the error type as their first string argument.
FAILERS = {"fail", "_fail", "_kill"}


def _sources() -> list[Path]:
    return sorted(p for d in ("app", "workers") for p in (ROOT / d).rglob("*.py"))


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _error_classes() -> set[str]:
    return {c.__name__ for c in (TechniqueError, *_subclasses(TechniqueError))}


def _called(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def test_every_error_class_has_its_type_in_the_enum():
    classes = [TechniqueError, *_subclasses(TechniqueError)]
    assert {c.__module__ for c in classes} == {engine_errors.__name__, job_errors.__name__}
    for cls in classes:
        assert isinstance(cls.type, str) and cls.type in set(JobErrorType), cls
    # a type names one class: it is rebuilt from its type when it crosses a process boundary
    types = [c.type for c in classes]
    assert len(types) == len(set(types)), types
    for cls in classes:
        rebuilt = TechniqueError.of(cls.type, "detail")
        assert type(rebuilt) is cls and rebuilt.type == cls.type and rebuilt.detail == "detail"


def test_error_classes_live_in_the_two_vocabulary_modules():
    names = _error_classes()
    outside = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and path not in HOMES and any(
                    (b.id if isinstance(b, ast.Name) else getattr(b, "attr", None)) in names for b in node.bases):
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert outside == []


def test_no_raise_site_passes_a_free_string_type():
    names = _error_classes()
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = _called(node)
            if name in names and (any(k.arg == "type" for k in node.keywords) or len(node.args) > 1
                                  and name != "StepTimeout"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)[:80]}")
            if name in FAILERS and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                       for a in node.args[:3]):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)[:80]}")
    assert found == []


def test_openapi_lists_exactly_the_enum(tmp_path):
    doc = create_app(Settings(data_dir=tmp_path)).openapi()
    schemas = doc["components"]["schemas"]
    ref = schemas["JobError"]["properties"]["type"]["$ref"].rsplit("/", 1)[1]
    assert schemas[ref]["enum"] == [t.value for t in JobErrorType]


def test_job_errors_and_problem_types_share_snake_case(tmp_path):
    slugs = [c.slug for c in [problems.LatheError, *_subclasses(problems.LatheError)]]
    for path in _sources():  # problem types written out in full (the handlers', the body limit's)
        text = path.read_text()
        slugs += re.findall(r"urn:lathe:problem:([a-z][^\"'{ `)]+)", text)
        slugs += re.findall(r"problem\(\d+, \"([^\"]+)\"", text)
    assert len(slugs) > len(problems.STATUS)
    slugs += [t.value for t in JobErrorType]
    assert [s for s in slugs if not SNAKE.fullmatch(s)] == []
    # statuses Starlette raises itself get a slug from their phrase
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    assert client.get("/nope").json()["type"] == "urn:lathe:problem:not_found"
    assert client.delete("/healthz").json()["type"] == "urn:lathe:problem:method_not_allowed"


@pytest.mark.parametrize("stored", ["unsupported_model", "worker_lost", "invalid_stored_params", "step_timeout"])
def test_stored_error_types_read_back(stored):
    """Rows written before the enum existed hold these strings: they still validate."""
    from app.jobs.schemas import JobError

    assert JobError.model_validate({"type": stored, "detail": "x"}).type == stored


def _raise(type: str, detail: str) -> None:
    raise TechniqueError.of(type, detail)


def test_errors_cross_a_process_boundary_with_their_class(tmp_path):
    """A native step's child and a data-parallel rank send (type, detail) back: the parent raises
    the same class, so the job fails with the same type."""
    from app.engine.pytorch.ddp import _raise_failures
    from app.engine.runtime.isolate import run_bounded

    for cls in (engine_errors.InvalidParams, engine_errors.StepTimeout):
        with pytest.raises(cls) as info:
            run_bounded(_raise, cls.type, "the detail", deadline_s=60, step="raising")
        assert info.value.type == cls.type and info.value.detail == "the detail"
    (tmp_path / "error0.json").write_text('["dataset_mismatch", "labels out of range"]')
    with pytest.raises(engine_errors.DatasetMismatch, match="labels out of range"):
        _raise_failures([None], tmp_path)  # rank 0 wrote its error: its process is not read
