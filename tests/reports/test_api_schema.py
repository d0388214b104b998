"""``GET /v1/jobs/{id}/report`` is typed in the OpenAPI schema: a union of every technique's
report model and the pipeline report, discriminated by ``technique``."""

from __future__ import annotations

from app.engine import catalog
from app.main import create_app


def test_the_report_endpoint_has_the_report_schema():
    spec = create_app().openapi()
    schema = spec["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    mapping = schema["discriminator"]["mapping"]
    assert schema["discriminator"]["propertyName"] == "technique"
    assert set(mapping) == set(catalog.all_techniques()) | {"pipeline"}
    components = spec["components"]["schemas"]
    for ref in mapping.values():
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components
    steps = components["PipelineReport"]["properties"]["steps"]["items"]["$ref"].rsplit("/", 1)[1]
    assert "discriminator" in str(components[steps]["properties"]["report"])
