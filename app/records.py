"""ORM records. Named *Record so they never clash with "model" in the ML sense."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, new_id, utcnow

Id = String(32)



NAME_MAX = 255  # the name columns' size


def clean_name(name: str | None, fallback: str | None) -> str:
    """A display name only (files are stored by hash, downloads sanitise their file name).

    The user's ``name`` is kept as sent, "team/resnet" included, less control characters; the
    upload's file name, the fallback, is a path on the client's disk: only its last part is kept.
    """
    raw = name or ("" if fallback is None else fallback.replace("\\", "/").rsplit("/", 1)[-1])
    cleaned = "".join(ch for ch in raw if ch.isprintable()).strip()
    if len(cleaned) > NAME_MAX:  # a long file name, or a job's output named from a long name
        cleaned = f"{cleaned[:NAME_MAX - 65]}…{cleaned[-64:]}"  # the end says what it is: keep it
    return cleaned or "unnamed"

class TenantRecord(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKeyRecord(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ModelRecord(Base):
    __tablename__ = "model_records"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_records.id", ondelete="SET NULL"), index=True)
    # The job that produced this model (no FK: jobs reference models too, and a cycle of FKs
    # makes deletes order-dependent for no gain).
    job_id: Mapped[str | None] = mapped_column(Id, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DatasetRecord(Base):
    __tablename__ = "dataset_records"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    num_samples: Mapped[int] = mapped_column(BigInteger)
    arrays: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BlobRecord(Base):
    """A file in the artifact store, shared by every model and dataset row with its content.

    The row is what writers lock: an upload claims it before writing the file, and the file is
    only removed by a transaction that holds the lock and finds no row referencing it
    (app/blobs.py)."""

    __tablename__ = "blobs"
    uri: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobRecord(Base):
    __tablename__ = "job_records"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("model_records.id", ondelete="SET NULL"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_records.id", ondelete="SET NULL"))
    technique: Mapped[str] = mapped_column(String(100), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    output_model_id: Mapped[str | None] = mapped_column(ForeignKey("model_records.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # last sent to the broker


class IdempotencyRecord(Base):
    """The first answer to a POST carrying an Idempotency-Key, replayed for repeats."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key", "route"),)
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(100))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    # sha256 of what the request asked for: a repeat asking for something else is refused (NULL: stored before 0003).
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookRecord(Base):
    """A tenant's subscription: job events POSTed to ``url``, signed with ``secret`` (Standard
    Webhooks). The secret is shown once, at creation; it is kept to sign deliveries."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeliveryRecord(Base):
    """One event for one webhook: the outbox row, written in the transaction that ended the job
    (so no event is lost between the job's end and its sending), then sent and retried by the
    workers' dispatcher until it succeeds or its attempts run out."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)  # the webhook-id header
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("job_records.id", ondelete="SET NULL"))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
