"""Mistakes a new user makes, answered with how to fix them (problem+json, 4xx)."""

from __future__ import annotations

import pytest

from tests.api.test_service import upload

PROBLEM = "application/problem+json"


@pytest.fixture
def model(api, mlp_onnx):
    return upload(api, mlp_onnx, name="my-mlp").json()


@pytest.mark.parametrize("body,status,says", [
    ({"technique": "quantize.dynamc"}, 422, ["did you mean 'quantize.dynamic'?"]),
    ({"technique": "quantize.dynamic", "params": {"per_chanel": True}}, 422,
     ["params.per_chanel", "did you mean 'per_channel'?", "'batch_sizes'"]),
    ({"technique": "quantize.dynamic", "params": {"batch_sizes": "eight"}}, 422,
     ["params.batch_sizes", "a list of integers", "e.g. ["]),
    ({"technique": "quantize.static"}, 422, ["POST /v1/datasets", "['x']", "dataset_id"]),
    ({"technique": "benchmark", "model_id": "my-mlp"}, 404, ["that is a model's name", "jobs take ids"]),
])
def test_job_mistakes(api, model, body, status, says):
    r = api.post("/v1/jobs", json={"model_id": model["id"], **body})
    assert r.status_code == status and r.headers["content-type"] == PROBLEM, r.text
    detail = r.json()["detail"]
    for text in says:
        assert text in detail, detail
    if body.get("model_id") == "my-mlp":
        assert model["id"] in detail


@pytest.mark.parametrize("kind", ["models", "datasets", "jobs", "webhooks"])
def test_a_404_names_what_is_missing(api, kind):
    r = api.get(f"/v1/{kind}/{'0' * 32}")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"].startswith(f"No {kind[:-1]} with id")
