"""Cursor pagination over time-ordered ids: ``{"items": [...], "next_cursor": ...}`` everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Cursor = Annotated[str | None, Query(max_length=64, pattern="^[0-9a-f]{32}$", description="`next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def paginate(session: Session, stmt: Select[Any], id_col: Any, cursor: str | None, limit: int,
             to_item: Callable[[Any], T]) -> Page[T]:
    """Newest first. The cursor is the last id returned; ids sort by creation time."""
    if cursor:
        stmt = stmt.where(id_col < cursor)
    rows = list(session.scalars(stmt.order_by(id_col.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[T](items=[to_item(r) for r in rows], next_cursor=rows[-1].id if more and rows else None)
