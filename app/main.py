"""The FastAPI application: engines, sessions, store and the Celery client built in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import metrics
from app.logs import RequestIdMiddleware
from app.openapi import typed_openapi

from app import errors
from app.datasets.routes import router as datasets_router
from app.db import make_engine, make_sessionmaker
from app.headers import SecurityHeadersMiddleware
from app.health.routes import router as health_router
from app.jobs.reaper import Reaper
from app.jobs.routes import router as jobs_router
from app.webhooks.routes import router as webhooks_router
from app.limits import MULTIPART_OVERHEAD, BodyLimitMiddleware
from app.models.routes import router as models_router
from app.queue import make_celery
from app.engine.catalog import all_techniques
from app.settings import Settings
from app.store import open_store
from app.supervisor import WorkerSupervisor
from app.tenants.service import KeyCache
from app.techniques.routes import router as techniques_router

DESCRIPTION = """
Upload a trained model, run optimization techniques on it (quantization, benchmarking, ...),
download the result and a report measured against the original in the same run.

Every `/v1` route needs `Authorization: Bearer <api key>` (click **Authorize**). Errors are
RFC 9457 `application/problem+json`.
"""

SMALL_BODY = 1024 * 1024  # JSON bodies (jobs) are small


def create_app(settings: Settings | None = None, embedded_worker: WorkerSupervisor | None = None) -> FastAPI:
    """embedded_worker: `lathe serve`'s worker, whose state /readyz reports; None in production."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        all_techniques()  # import the catalog once, before requests arrive on many threads
        engine = make_engine(settings.sqlalchemy_url)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.store = open_store(settings)
        app.state.celery = make_celery(settings)
        app.state.key_cache = KeyCache(settings.auth_cache_s)
        app.state.embedded_worker = embedded_worker
        reaper = Reaper(app.state.sessionmaker, app.state.celery, settings)
        if settings.reaper_interval_s > 0:
            reaper.start()
        yield
        if reaper.is_alive():
            reaper.stop()
        engine.dispose()

    # Swagger UI and ReDoc from the package's own copies: /docs must work without internet.
    app = FastAPIOffline(title="Lathe", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                         static_url="/docs-static", swagger_ui_parameters={"persistAuthorization": True})
    errors.install(app)
    app.openapi = lambda: typed_openapi(app)  # type: ignore[method-assign]

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/models":
            return settings.max_model_bytes + MULTIPART_OVERHEAD
        if method == "POST" and path.rstrip("/") == "/v1/datasets":
            return settings.max_dataset_bytes + MULTIPART_OVERHEAD
        return SMALL_BODY

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    metrics.install(app)
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: every line of the request carries its id
    app.add_middleware(SecurityHeadersMiddleware)  # added last: outermost, sees the 413 too
    for router in (health_router, models_router, datasets_router, techniques_router, jobs_router,
                   webhooks_router):
        app.include_router(router)
    return app
