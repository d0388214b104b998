"""Request dependencies: everything built in the lifespan, handed out through ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.records import TenantRecord
from app.settings import Settings
from app.store import LocalStore
from app.tenants.service import tenant_for_key


def _session(request: Request) -> Iterator[Session]:
    """One transaction per request: commit on success, roll back on error. Services only flush."""
    session = request.app.state.sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": commit before the response is sent, so a client that reads what it just
# created never races the commit (and after-commit hooks, such as enqueueing, have run).
SessionDep = Annotated[Session, Depends(_session, scope="function")]


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> LocalStore:
    return request.app.state.store


def _celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[LocalStore, Depends(_store)]
CeleryDep = Annotated[Celery, Depends(_celery)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `lathe keys create --tenant NAME`.")


def _tenant(session: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> TenantRecord:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("Send 'Authorization: Bearer <api key>'.")
    tenant = tenant_for_key(session, creds.credentials)
    if tenant is None:
        raise Unauthorized("This API key is not valid.")
    return tenant


TenantDep = Annotated[TenantRecord, Depends(_tenant)]
