from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Event = Literal["job.succeeded", "job.failed", "job.cancelled"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://ci.example.com/hooks/lathe", "events": ["job.succeeded", "job.failed"]}]})

    url: str = Field(max_length=2000, description="Where events are POSTed: http(s), a public address.")
    events: list[Event] = Field(default=["job.succeeded", "job.failed", "job.cancelled"], min_length=1,
                                description="Which job events to send.")


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[Event]
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Verifies each delivery's `webhook-signature` (Standard Webhooks). "
                                    "Shown only now: store it.")


class Attempt(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The `webhook-id` header: the same on every retry of this delivery.")
    event: Event
    job_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: list[Attempt]
    next_attempt_at: datetime | None = Field(description="When it is tried next (pending only).")
    created_at: datetime
    payload: dict[str, Any]
