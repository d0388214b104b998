"""OpenAPI fuzzing with schemathesis against the real app (in process, SQLite, real worker not
needed): every generated request must get a non-5xx answer that matches the documented schema.

About 1,000 cases: FUZZ_EXAMPLES per operation times the operations in the schema.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from app.cli import run_migrations
from app.db import make_engine, make_sessionmaker, transaction
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_key

FUZZ_EXAMPLES = max(80, int(os.environ.get("LATHE_FUZZ_EXAMPLES", "80")))


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), reaper_interval_s=0)
    run_migrations(settings)
    engine = make_engine(settings.sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as s:
        key = create_key(s, "fuzz")
    engine.dispose()
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: engine, store, Celery client on app.state
        yield app, key


def test_no_server_error_and_schema_holds(fuzz_app):
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    count = {"cases": 0}
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            # Half the cases authenticated (to reach the handlers), half as generated.
            headers = {"Authorization": f"Bearer {key}"} if count["cases"] % 2 == 0 else None
            count["cases"] += 1
            case.call_and_validate(headers=headers, checks=checks)

        fuzz()
    assert len(operations) >= 15
    assert count["cases"] >= 1000, count
