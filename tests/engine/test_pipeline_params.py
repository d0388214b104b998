"""Every technique's documented params survive the trip a job makes: validated and stored by the
API (plan.stored), written to the row as JSON, loaded back by the worker (plan.from_row). The
stored params carry their Params version, so a later release can upgrade a queued job's params."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from pydantic import Field

from app.engine.base import Params, Technique
from app.engine.catalog import all_techniques
from app.engine.errors import InvalidParams as InvalidInput
from app.engine import pipeline as plan
from app.jobs.schemas import JobOut

EXAMPLES = [(name, i, example) for name, technique in sorted(all_techniques().items())
            for i, example in enumerate(technique.Params.model_json_schema().get("examples", []))]


def _through_the_row(technique: str, params: dict) -> tuple[str, dict]:
    """What the job row's JSON column gives back."""
    return technique, json.loads(json.dumps(params))


def test_every_technique_documents_an_example():
    documented = {name for name, _, _ in EXAMPLES}
    assert documented == set(all_techniques())


@pytest.mark.parametrize(("name", "i", "example"), EXAMPLES, ids=[f"{n}-{i}" for n, i, _ in EXAMPLES])
def test_example_round_trips(name, i, example):
    steps = plan.from_request(name, example, None)  # the API's validation
    technique, row = _through_the_row(*plan.stored(steps))
    assert row[plan.VERSION] == all_techniques()[name].Params.params_version
    loaded = plan.from_row(technique, row)  # the worker's
    assert [(s.technique, s.params) for s in loaded] == [(s.technique, s.params) for s in steps]
    # the client reads back what it sent, normalised, without the stored version
    assert plan.public(technique, row) == steps[0].params.model_dump(mode="json")


def test_pipeline_round_trips():
    techniques = all_techniques()
    first = {name: example for name, _, example in reversed(EXAMPLES)}
    producers = sorted(name for name in first if techniques[name].produces_model)
    body = [{"technique": name, "params": first[name]} for name in producers[:plan.MAX_STEPS - 1]]
    body.append({"technique": "benchmark", "params": first["benchmark"]})
    steps = plan.from_request(None, {}, body)
    technique, row = _through_the_row(*plan.stored(steps))
    assert technique == plan.PIPELINE and len(row["steps"]) == len(body) == plan.MAX_STEPS
    loaded = plan.from_row(technique, row)
    assert [(s.technique, s.params) for s in loaded] == [(s.technique, s.params) for s in steps]
    assert plan.public(technique, row) == {"steps": [{"technique": s.name, "params": s.params.model_dump(mode="json")}
                                          for s in steps]}


def test_job_out_hides_the_stored_version():
    single = plan.stored(plan.from_request("quantize.dynamic", {"per_channel": True}, None))
    pipeline = plan.stored(plan.from_request(None, {}, [{"technique": "prune.structured"},
                                                        {"technique": "benchmark"}]))
    for technique, params in (single, pipeline):
        out = JobOut.model_validate({
            "id": "j", "model_id": "m", "dataset_id": None, "technique": technique, "params": params,
            "device": "cpu", "status": "queued", "progress": 0.0, "stage": None, "error": None,
            "output_model_id": None, "attempts": 0, "created_at": "2026-01-01T00:00:00Z",
            "started_at": None, "finished_at": None})
        assert plan.VERSION not in json.dumps(out.model_dump(mode="json")), out.params


def test_a_client_cannot_send_the_version():
    with pytest.raises(InvalidInput, match="unknown parameter for this technique"):
        plan.from_request("benchmark", {plan.VERSION: 1}, None)


def test_a_row_from_before_versions_loads_as_version_1():
    _, row = plan.stored(plan.from_request("benchmark", {"batch_sizes": [1]}, None))
    del row[plan.VERSION]
    assert plan.from_row("benchmark", row)[0].params.batch_sizes == [1]


def test_a_row_from_a_newer_release_is_refused():
    _, row = plan.stored(plan.from_request("benchmark", {}, None))
    row[plan.VERSION] = all_techniques()["benchmark"].Params.params_version + 1
    with pytest.raises(InvalidInput, match="reads versions 1 to"):
        plan.from_row("benchmark", row)


class _RenamedParams(Params):
    """Version 2 renamed ``ratio`` to ``sparsity``."""

    params_version: ClassVar[int] = 2
    sparsity: float = Field(0.5, ge=0, le=1)

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        data = dict(data)
        data["sparsity"] = data.pop("ratio")
        return data


class _Renamed(Technique):
    name = "test.renamed"
    description = "a technique whose params changed after jobs were stored"
    Params = _RenamedParams


def test_an_older_row_is_upgraded(monkeypatch):
    monkeypatch.setitem(all_techniques(), _Renamed.name, _Renamed)
    for technique, row in ((_Renamed.name, {"ratio": 0.25, plan.VERSION: 1}),
                           (plan.PIPELINE, {"steps": [{"technique": _Renamed.name,
                                                       "params": {"ratio": 0.25, plan.VERSION: 1}}]})):
        assert plan.from_row(technique, row)[0].params == _RenamedParams(sparsity=0.25)
    _, row = plan.stored(plan.from_request(_Renamed.name, {"sparsity": 0.25}, None))
    assert row == {"sparsity": 0.25, plan.VERSION: 2}
