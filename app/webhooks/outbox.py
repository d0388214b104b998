"""Webhook events into the outbox, and the Standard Webhooks signature.

``record_job_end`` runs inside the transaction that ends a job (app.jobs.transitions): the
deliveries commit with the job's final status or not at all, so an event is never lost between
a job ending and its sending, whatever process dies when. The workers' dispatcher
(app.webhooks.dispatcher) sends them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.records import DeliveryRecord, JobRecord, WebhookRecord

EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``
    under the secret's base64-decoded key (https://www.standardwebhooks.com)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def record_job_end(session: Session, job_id: str) -> int:
    """One pending delivery per subscription of the job's tenant to its end event; how many."""
    from app.jobs.schemas import JobOut

    tenant_id = session.scalar(select(JobRecord.tenant_id).where(JobRecord.id == job_id))
    hooks = list(session.scalars(select(WebhookRecord).where(WebhookRecord.tenant_id == tenant_id)))
    if not hooks:
        return 0
    job = session.get(JobRecord, job_id)
    assert job is not None
    session.refresh(job)  # its status was set by a bulk UPDATE
    event = f"job.{job.status}"
    hooks = [h for h in hooks if event in h.events]
    now = utcnow()
    data = JobOut.model_validate(job).model_dump(mode="json")
    for hook in hooks:
        session.add(DeliveryRecord(webhook_id=hook.id, tenant_id=job.tenant_id, job_id=job.id, event=event,
                                   payload={"type": event, "timestamp": now.isoformat(), "data": data},
                                   status="pending", attempts=[], next_attempt_at=now))
    return len(hooks)
