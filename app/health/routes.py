from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.errors import problem

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={
    200: {"content": {"application/json": {"example": {"status": "ready", "database": "ok", "broker": "ok", "store": "ok"}}}},
    503: {"description": "The database, the broker or the artifact store (its S3 endpoint, credentials or bucket) "
                         "is unreachable, or `lathe serve`'s worker is down (problem+json)."},
})
def readyz(request: Request) -> JSONResponse:
    """The database, the broker and the artifact store are reachable; under `lathe serve`, its worker consumes jobs too.

    Only `lathe serve` owns a worker and knows its state (``worker``); `lathe api` leaves workers
    on other hosts to their own supervisor."""
    checks = {"database": "ok", "broker": "ok", "store": request.app.state.store.check()}
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if (worker := request.app.state.embedded_worker) is not None:
        checks["worker"] = worker.check()
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", **checks})
    return problem(503, "not_ready", "Not ready", "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
                   "/readyz", {"Retry-After": "5"}, **checks)
