from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from app import idempotency
from app.deps import CeleryDep, SessionDep, SettingsDep, TenantDep
from app.engine.reports import AnyReport
from app.idempotency import IdempotencyKey
from app.jobs import events, service
from app.jobs.page import report_page
from app.reports.render import CSP_HEADER
from app.jobs.schemas import JobCreate, JobOut, Status
from app.pagination import Cursor, Limit, Page, paginate
from app.records import JobRecord
from app.repository import get_owned

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ROUTE_CREATE = "POST /v1/jobs"

ERRORS = {
    401: {"description": "Missing or invalid API key (problem+json)."},
    404: {"description": "No such job for this tenant (problem+json)."},
}


@router.post("", status_code=202, response_model=JobOut, responses={
    422: {"description": "Unknown technique, params not matching its schema (the exact field is named), missing dataset."},
    429: {"description": "The tenant has too many queued or running jobs; see Retry-After."},
    **ERRORS,
})
def create_job(body: JobCreate, response: Response, tenant: TenantDep, session: SessionDep, celery: CeleryDep,
               settings: SettingsDep, idempotency_key: IdempotencyKey = None) -> Any:
    """Queue a technique on a model. Params are validated before anything is queued."""
    asked = idempotency.fingerprint(body=body.model_dump(mode="json"))
    if cached := idempotency.replay(session, tenant.id, idempotency_key, ROUTE_CREATE, lambda: asked, JobRecord):
        return cached
    job = service.create(session, celery, settings, tenant, body)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    idempotency.remember(session, tenant.id, idempotency_key, ROUTE_CREATE, asked, 202, JobOut.model_validate(job),
                         {"Location": response.headers["Location"]})
    return job


@router.get("", response_model=Page[JobOut], responses=ERRORS)
def list_jobs(tenant: TenantDep, session: SessionDep, status: Status | None = None, model_id: str | None = None,
              technique: str | None = None, cursor: Cursor = None, limit: Limit = 50) -> Page[JobOut]:
    """Jobs of this tenant, newest first, optionally filtered."""
    stmt = service.list_stmt(tenant, status, model_id, technique)
    return paginate(session, stmt, JobRecord.id, cursor, limit, JobOut.model_validate)


@router.get("/{job_id}", response_model=JobOut, responses={
    304: {"description": "With If-None-Match: the job still has that ETag (after waiting, with ?wait=)."}, **ERRORS})
async def get_job(job_id: str, tenant: TenantDep, request: Request, response: Response, settings: SettingsDep,
                  wait: Annotated[float | None, Query(ge=0, le=events.MAX_WAIT_S, description=(
                      "Long-poll: answer as soon as the job differs from the state the client holds (its ETag, "
                      "sent as If-None-Match; without one, the state at the time of the request), has ended, "
                      "or after this many seconds."))] = None,
                  if_none_match: Annotated[str | None, Header()] = None) -> Any:
    """One job. Its ETag changes with every change a client could see (status, progress, stage...)."""
    maker = request.app.state.sessionmaker
    seen = if_none_match.strip().removeprefix("W/").strip('"') if if_none_match else None
    if wait:
        state = await events.wait_for_change(maker, tenant.id, job_id, seen, wait, settings.events_poll_s)
    else:
        state = await events.read(maker, tenant.id, job_id)
    tag = events.fingerprint(state)
    if seen == tag:
        return Response(status_code=304, headers={"ETag": events.etag(tag)})
    response.headers["ETag"] = events.etag(tag)
    return state


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": (
        "Server-Sent Events: `event: job` with the job (as GET /v1/jobs/{id}) at every change, `event: end` "
        "with the ended job as the last event, `: ping` comments every 15 s. Each event's `id` is the job's "
        "ETag: reconnect with `Last-Event-ID` and only a newer state is sent.")}, **ERRORS})
async def job_events(job_id: str, tenant: TenantDep, request: Request, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Follow a job live instead of polling it."""
    maker = request.app.state.sessionmaker
    await events.read(maker, tenant.id, job_id)  # a 404 problem+json, not an empty stream
    body = events.stream(maker, tenant.id, job_id, last_event_id, settings.events_poll_s, request.is_disconnected)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: {"description": "The job already ended."}, **ERRORS})
def cancel_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobRecord:
    """Cancel a queued job at once; a running one stops at its next progress check."""
    return service.cancel(session, tenant, job_id)


@router.get("/{job_id}/report.html", response_class=HTMLResponse, responses={
    200: {"description": "A self-contained HTML page (inline SVG charts, no external requests).",
          "content": {"text/html": {"example": "<!doctype html><html>...</html>"}}},
    409: {"description": "The job has no report yet."}, **ERRORS,
})
def get_report_html(job_id: str, tenant: TenantDep, session: SessionDep,
                    download: Annotated[bool, Query(description="Send as a file download.")] = False) -> HTMLResponse:
    """The report as a page people look at: summary, latency and throughput charts, the Pareto
    front of candidates, environment, lineage and the raw numbers. `?download=true` saves it."""
    job = get_owned(session, JobRecord, tenant.id, job_id, "job")
    html = report_page(session, job, service.report(session, tenant, job_id))
    headers = {"Content-Security-Policy": CSP_HEADER}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="lathe-report-{job.id}.html"'
    return HTMLResponse(html, headers=headers)


@router.get("/{job_id}/report", response_model=AnyReport, responses={
    409: {"description": "The job has no report yet."}, **ERRORS,
})
def get_report(job_id: str, tenant: TenantDep, session: SessionDep) -> JSONResponse:
    """The job's report (JSON): measurements of the baseline and result, the environment, a
    verdict; its shape depends on `technique` (a pipeline's holds each step's report)."""
    # Sent as stored (the engine checked it against its model when the job ran): re-serializing
    # through the model would add every absent optional field to reports of older jobs.
    return JSONResponse(service.report(session, tenant, job_id))
