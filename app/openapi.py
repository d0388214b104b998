"""The OpenAPI document, typed where the routes can't say it themselves.

``POST /v1/jobs`` validates ``params`` against the technique it names, at run time, so that a
mistake gets advice (app.engine.pipeline); the route's own model therefore types ``params`` as
an object. Here the document says what is really accepted: the body is one of a variant per
technique, discriminated by ``technique``, each with that technique's params (defaults,
bounds, examples), or a pipeline whose steps are the same union. Swagger UI shows each one.

``lathe openapi > docs/openapi.json`` exports it (tests/api/test_openapi.py fails when
the committed copy is stale).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.engine.catalog import all_techniques

REF = "#/components/schemas/{model}"


def _component(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def typed_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc["components"]["schemas"]
    job, step = schemas["JobCreate"], schemas["StepIn"]
    single_keys = {k: v for k, v in job["properties"].items() if k != "steps"}
    steps_variants, job_variants = {}, {}
    for name, technique in sorted(all_techniques().items()):
        params = technique.Params.model_json_schema(ref_template=REF)
        for key, value in params.pop("$defs", {}).items():
            if schemas.setdefault(key, value) != value:  # two models of one name: rename one
                raise RuntimeError(f"OpenAPI component {key!r} of {name}'s params clashes with another")
        params_name = f"{_component(name)}_params"
        schemas[params_name] = params
        typed = {"type": "string", "const": name, "enum": [name]}
        params_ref = {"$ref": REF.format(model=params_name), "description": technique.description}
        steps_variants[name] = f"{_component(name)}_step"
        schemas[steps_variants[name]] = {
            "type": "object", "title": f"step: {name}", "additionalProperties": False, "required": ["technique"],
            "properties": {"technique": typed, "params": params_ref}}
        job_variants[name] = f"{_component(name)}_job"
        schemas[job_variants[name]] = {
            "type": "object", "title": name, "additionalProperties": False, "required": ["model_id", "technique"],
            "description": technique.description,
            "properties": {**single_keys, "technique": typed, "params": params_ref}}

    def union(variants: dict[str, str]) -> dict[str, Any]:
        return {"oneOf": [{"$ref": REF.format(model=v)} for v in variants.values()],
                "discriminator": {"propertyName": "technique",
                                  "mapping": {k: REF.format(model=v) for k, v in variants.items()}}}

    schemas["StepIn"] = {**union(steps_variants), "title": "StepIn", "description": step.get("description", "")}
    pipeline = {"type": "object", "title": "pipeline", "additionalProperties": False, "required": ["model_id", "steps"],
                "properties": {k: v for k, v in job["properties"].items() if k not in ("technique", "params")}}
    schemas["PipelineJobCreate"] = pipeline
    schemas["SingleJobCreate"] = {**union(job_variants), "title": "one technique"}
    schemas["JobCreate"] = {"title": "JobCreate", "examples": job.get("examples", []),
                            "oneOf": [{"$ref": REF.format(model="SingleJobCreate")},
                                      {"$ref": REF.format(model="PipelineJobCreate")}]}
    app.openapi_schema = doc
    return doc
