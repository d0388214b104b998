"""Database engine and sessions (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import DateTime, Engine, TypeDecorator, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


def new_id() -> str:
    """32 hex chars: 48 bits of milliseconds then 80 random bits.

    Sorting by id sorts by creation time (cursor pagination needs no second column) and the
    random part makes ids unguessable.
    """
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # API and worker write concurrently
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run ``fn`` once the session's transaction commits (never if it rolls back)."""
    session.info.setdefault("after_commit", []).append(fn)


def after_rollback(session: Session, fn: Callable[[], None]) -> None:
    """Run ``fn`` once the session's transaction ends without committing: undo what the database
    cannot, such as a file written for a row that was never committed."""
    session.info.setdefault("after_rollback", []).append(fn)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info["committed"] = True


@event.listens_for(Session, "after_transaction_end")
def _run_hooks(session: Session, transaction) -> None:
    # At the end of the outermost transaction, once its connection is back in the pool: a hook
    # that opens a transaction of its own never holds two connections (parallel requests doing
    # that could take the whole pool and wait on each other).
    if transaction.parent is not None:
        return
    committed = session.info.pop("committed", False)
    hooks = {True: session.info.pop("after_commit", []), False: session.info.pop("after_rollback", [])}
    for fn in hooks[committed]:
        fn()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work outside a request (CLI, worker): commit on success, roll back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
