"""Request dependencies: everything built in the lifespan, handed out through ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app import logs
from app.db import transaction
from app.errors import Unauthorized
from app.settings import Settings
from app.store import Store
from app.tenants.service import Tenant


def _session(request: Request) -> Iterator[Session]:
    """One transaction per request: commit on success, roll back on error. Services only flush."""
    with transaction(request.app.state.sessionmaker) as session:
        yield session


# scope="function": commit before the response is sent, so a client that reads what it just
# created never races the commit (and after-commit hooks, such as enqueueing, have run).
SessionDep = Annotated[Session, Depends(_session, scope="function")]


# Plain lookups are ``async def``: FastAPI runs sync dependencies in a thread pool, a hop that
# costs more than the lookup.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
CeleryDep = Annotated[Celery, Depends(_celery)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `lathe keys create --tenant NAME`.")


async def _tenant(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Tenant:
    """Async, with its own short session on a cache miss: most requests authenticate from the
    key cache without a database round trip or a thread-pool hop."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("Send 'Authorization: Bearer <api key>'.")
    cache = request.app.state.key_cache
    tenant = cache.cached(creds.credentials)
    if tenant is None:
        tenant = await run_in_threadpool(cache.lookup, request.app.state.sessionmaker, creds.credentials)
    if tenant is None:
        raise Unauthorized("This API key is not valid.")
    logs.bind(tenant=tenant.name)
    return tenant


TenantDep = Annotated[Tenant, Depends(_tenant)]
