"""Webhook subscriptions: create (the secret shown once), list, delete; where they may point."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.records import DeliveryRecord, WebhookRecord
from app.repository import get_owned, owned
from app.settings import Settings
from app.tenants.service import Tenant
from app.webhooks.addresses import RefusedAddress, check_url
from app.webhooks.outbox import new_secret


def create(session: Session, settings: Settings, tenant: Tenant, url: str, events: list[str]) -> tuple[WebhookRecord, str]:
    try:
        check_url(url, settings.webhook_allow_private)
    except RefusedAddress as exc:
        raise InvalidInput(f"Webhook url refused: {exc}.") from None
    secret = new_secret()
    hook = WebhookRecord(tenant_id=tenant.id, url=url, events=sorted(set(events)), secret=secret)
    session.add(hook)
    session.flush()
    return hook, secret


def list_stmt(tenant: Tenant):
    return owned(WebhookRecord, tenant.id)


def get(session: Session, tenant: Tenant, webhook_id: str) -> WebhookRecord:
    return get_owned(session, WebhookRecord, tenant.id, webhook_id, "webhook")


def delete(session: Session, tenant: Tenant, webhook_id: str) -> None:
    session.delete(get(session, tenant, webhook_id))  # its deliveries go with it (ON DELETE CASCADE)


def deliveries_stmt(session: Session, tenant: Tenant, webhook_id: str):
    get(session, tenant, webhook_id)
    return select(DeliveryRecord).where(DeliveryRecord.webhook_id == webhook_id,
                                        DeliveryRecord.tenant_id == tenant.id)
