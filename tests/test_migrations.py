"""Alembic upgrade head → downgrade base → upgrade head, on a fresh PostgreSQL database."""

from __future__ import annotations

from sqlalchemy import inspect

from app.cli import run_migrations
from app.db import make_engine
from app.settings import Settings
from tests.support.deploy import scratch_pg_database

TABLES = {"tenants", "api_keys", "model_records", "dataset_records", "job_records", "idempotency_keys", "blobs"}


def test_upgrade_downgrade_postgres(tmp_path):
    with scratch_pg_database() as url:
        settings = Settings(data_dir=tmp_path, database_url=url)
        engine = make_engine(url)
        run_migrations(settings)
        assert TABLES <= set(inspect(engine).get_table_names())
        run_migrations(settings, "base", downgrade=True)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        run_migrations(settings)
        assert TABLES <= set(inspect(engine).get_table_names())
        engine.dispose()
