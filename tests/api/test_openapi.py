"""The API contract: typed per technique, valid OpenAPI, and the committed export up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_is_current():
    """docs/openapi.json is what `lathe openapi` prints: regenerate it after an API change."""
    now = subprocess.run([sys.executable, "-m", "app.cli", "openapi"], cwd=ROOT, capture_output=True, text=True, check=True)
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(now.stdout), \
        "docs/openapi.json is stale: run `lathe openapi > docs/openapi.json`"


def test_job_params_are_typed_per_technique(tmp_path):
    from openapi_spec_validator import validate

    from app.engine.catalog import all_techniques
    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path, reaper_interval_s=0))) as c:
        doc = c.get("/openapi.json").json()
    validate(doc)
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobCreate"}
    mapping = schemas["SingleJobCreate"]["discriminator"]["mapping"]
    assert set(mapping) == set(all_techniques()) == set(schemas["StepIn"]["discriminator"]["mapping"])
    dynamic = schemas[mapping["quantize.dynamic"].rsplit("/", 1)[-1]]
    params = schemas[dynamic["properties"]["params"]["$ref"].rsplit("/", 1)[-1]]
    per_channel = params["properties"]["per_channel"]
    assert per_channel["type"] == "boolean" and per_channel["default"] is False and per_channel["examples"]
    assert params.get("additionalProperties") is False  # unknown params are refused, and the schema says so
    pipeline = schemas["PipelineJobCreate"]["properties"]["steps"]
    assert "StepIn" in json.dumps(pipeline)
