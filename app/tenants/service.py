"""Tenants and API keys. Keys are 256-bit random tokens stored as sha256 digests.

A plain digest (not a slow KDF) is right for high-entropy random tokens: there is nothing to
brute-force, and lookup by digest is one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

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


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Hold the tenant's row until this transaction ends, so that quota checks of parallel
    requests (count, then insert) run one after another.

    A no-op UPDATE rather than SELECT ... FOR UPDATE: SQLite has no row locks, but a write takes
    its database write lock at once, and the reads after it see every committed row; PostgreSQL
    takes a FOR NO KEY UPDATE row lock, which does not hold up inserts that merely reference the
    tenant (uploads, other tenants' work)."""
    session.execute(update(TenantRecord).where(TenantRecord.id == tenant_id).values(name=TenantRecord.name)
                    .execution_options(synchronize_session=False))


def create_key(session: Session, tenant_name: str) -> str:
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKeyRecord(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke by the full key or by its printed prefix (first 10 characters). Returns how many."""
    from app.db import utcnow

    rows = session.scalars(select(ApiKeyRecord).where(
        (ApiKeyRecord.key_hash == hash_key(key_or_prefix)) | (ApiKeyRecord.prefix == key_or_prefix[:10]),
        ApiKeyRecord.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    session.flush()
    return len(rows)


def tenant_for_key(session: Session, key: str) -> TenantRecord | None:
    row = session.scalar(
        select(ApiKeyRecord).where(ApiKeyRecord.key_hash == hash_key(key), ApiKeyRecord.revoked_at.is_(None))
    )
    return session.get(TenantRecord, row.tenant_id) if row else None


@dataclass(frozen=True)
class Tenant:
    """Who a request acts for: all the request path needs of a tenant."""

    id: str
    name: str


class KeyCache:
    """Valid keys → tenant, for ``ttl`` seconds, so most requests skip two queries.

    A revoked key keeps working in a process for at most ``ttl`` seconds. Unknown keys are
    never cached (a flood of random keys can't grow the cache)."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[Tenant, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Tenant | None:
        with self._lock:
            hit = self._entries.get(hash_key(key))
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def lookup(self, sessions: sessionmaker[Session], key: str) -> Tenant | None:
        with sessions() as session:
            record = tenant_for_key(session, key)
            if record is None:
                return None
            tenant = Tenant(record.id, record.name)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[hash_key(key)] = (tenant, time.monotonic() + self.ttl)
        return tenant
