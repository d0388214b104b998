"""``Idempotency-Key`` on POST, as the IETF Idempotency-Key draft describes: the first answer is
stored in the same transaction as what it created, with a fingerprint of what the request asked
for; a repeat with the same key (same tenant, same route) gets that answer again.

- A repeat asking for something else (another body, another file) is refused with 422: replaying
  the first answer would tell the client its second request was done when it was not.
- A repeat whose resource has since been deleted is answered 410: the stored answer would claim
  the resource exists. Re-creating it instead would hand back a different id than the first
  answer under the same key; the client that deleted it sends a new key to create it again.
- A repeat racing the first request (not yet committed) is answered 409; retrying gets the answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, Gone, IdempotencyKeyReused
from app.records import IdempotencyRecord

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Repeat a POST safely: a repeated key returns the first request's answer; the same key with a "
                "different request is 422, and 410 once what it created was deleted.",
    examples=["7d0c8e52-upload-resnet"])]


def fingerprint(**parts: Any) -> str:
    """sha256 of what a request asks for, independent of key order and JSON spacing."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def replay(session: Session, tenant_id: str, key: str | None, route: str, request_fingerprint: Callable[[], str],
           record: type) -> JSONResponse | None:
    """The stored answer for a repeated key, or None for a new one. ``request_fingerprint`` is only
    called for a repeat (hashing an upload costs a pass over the file); ``record`` is the kind of
    resource the route creates."""
    if key is None:
        return None
    row = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key, IdempotencyRecord.route == route))
    if row is None:
        return None
    if row.fingerprint is not None and row.fingerprint != request_fingerprint():
        raise IdempotencyKeyReused("This Idempotency-Key was used for a different request (another body or file); "
                                   "use a new key for a new request.")
    created = row.body["content"].get("id")
    if created is not None and session.get(record, created) is None:
        raise Gone(f"The request with this Idempotency-Key created {created!r}, which has since been deleted; "
                   "use a new key to create it again.")
    return JSONResponse(row.body["content"], status_code=row.status_code,
                        headers={**row.body.get("headers", {}), "Idempotent-Replayed": "true"})


def remember(session: Session, tenant_id: str, key: str | None, route: str, request_fingerprint: str,
             status_code: int, content: BaseModel, headers: dict[str, Any] | None = None) -> None:
    if key is None:
        return
    session.add(IdempotencyRecord(tenant_id=tenant_id, key=key, route=route, status_code=status_code,
                                  fingerprint=request_fingerprint,
                                  body={"content": content.model_dump(mode="json"), "headers": headers or {}}))
    try:
        session.flush()
    except IntegrityError:
        # The same key raced us and won: roll this request back entirely (its rows and files included).
        raise Conflict("A request with this Idempotency-Key is being processed; retry to get its answer.") from None
