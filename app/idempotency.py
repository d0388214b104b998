"""``Idempotency-Key`` on POST: the first answer is stored in the same transaction as what it
created, and a repeat with the same key (same tenant, same route) gets that answer again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.records import IdempotencyRecord

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Repeat a POST safely: a repeated key returns the first request's answer.",
    examples=["7d0c8e52-upload-resnet"])]


def replay(session: Session, tenant_id: str, key: str | None, route: str) -> JSONResponse | None:
    if key is None:
        return None
    row = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key, IdempotencyRecord.route == route))
    if row is None:
        return None
    return JSONResponse(row.body["content"], status_code=row.status_code,
                        headers={**row.body.get("headers", {}), "Idempotent-Replayed": "true"})


def remember(session: Session, tenant_id: str, key: str | None, route: str, status_code: int,
             content: BaseModel, headers: dict[str, Any] | None = None) -> None:
    if key is None:
        return
    session.add(IdempotencyRecord(tenant_id=tenant_id, key=key, route=route, status_code=status_code,
                                  body={"content": content.model_dump(mode="json"), "headers": headers or {}}))
    try:
        session.flush()
    except IntegrityError:
        # The same key raced us and won: roll this request back entirely (its rows included).
        raise Conflict("A request with this Idempotency-Key is being processed; retry to get its answer.") from None
