from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.deps import SessionDep, SettingsDep, TenantDep
from app.pagination import Cursor, Limit, Page, paginate
from app.records import DeliveryRecord, WebhookRecord
from app.webhooks import service
from app.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

ERRORS = {
    401: {"description": "Missing or invalid API key (problem+json)."},
    404: {"description": "No such webhook for this tenant (problem+json)."},
}


@router.post("", status_code=201, response_model=WebhookCreated, responses={
    422: {"description": "Not an http(s) URL, or one resolving to a loopback, private or link-local address."},
    **ERRORS})
def create_webhook(body: WebhookCreate, response: Response, tenant: TenantDep, session: SessionDep,
                   settings: SettingsDep) -> Any:
    """Subscribe to this tenant's job events. Deliveries follow Standard Webhooks: `webhook-id`,
    `webhook-timestamp` and `webhook-signature` headers, the signature keyed by the `secret`
    returned here once; retried with backoff until a 2xx."""
    hook, secret = service.create(session, settings, tenant, body.url, list(body.events))
    response.headers["Location"] = f"/v1/webhooks/{hook.id}"
    return WebhookCreated(**WebhookOut.model_validate(hook).model_dump(), secret=secret)


@router.get("", response_model=Page[WebhookOut], responses=ERRORS)
def list_webhooks(tenant: TenantDep, session: SessionDep, cursor: Cursor = None, limit: Limit = 50) -> Page[WebhookOut]:
    return paginate(session, service.list_stmt(tenant), WebhookRecord.id, cursor, limit, WebhookOut.model_validate)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=ERRORS)
def get_webhook(webhook_id: str, tenant: TenantDep, session: SessionDep) -> Any:
    return service.get(session, tenant, webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses=ERRORS)
def delete_webhook(webhook_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    """Unsubscribe; its pending deliveries are dropped."""
    service.delete(session, tenant, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut], responses=ERRORS)
def list_deliveries(webhook_id: str, tenant: TenantDep, session: SessionDep, cursor: Cursor = None,
                    limit: Limit = 50) -> Page[DeliveryOut]:
    """Every delivery of this webhook, newest first: each attempt's status code or error, and
    when a pending one is tried next."""
    return paginate(session, service.deliveries_stmt(session, tenant, webhook_id), DeliveryRecord.id, cursor, limit,
                    DeliveryOut.model_validate)
