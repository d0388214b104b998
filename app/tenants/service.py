"""Tenants and API keys. Keys are 256-bit random tokens stored as sha256 digests.

A plain digest (not a slow KDF) is right for high-entropy random tokens: there is nothing to
brute-force, and lookup by digest is one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.records import ApiKeyRecord, TenantRecord

KEY_PREFIX = "lk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> TenantRecord:
    tenant = session.scalar(select(TenantRecord).where(TenantRecord.name == name))
    if tenant is None:
        tenant = TenantRecord(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> str:
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKeyRecord(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def tenant_for_key(session: Session, key: str) -> TenantRecord | None:
    row = session.scalar(
        select(ApiKeyRecord).where(ApiKeyRecord.key_hash == hash_key(key), ApiKeyRecord.revoked_at.is_(None))
    )
    return session.get(TenantRecord, row.tenant_id) if row else None
