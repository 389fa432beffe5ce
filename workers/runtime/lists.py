"""Paged lists (spec README §4): whitelisted sort, exact totals up to 10,000, then a lower bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import MAX_WINDOW, ListParams, parse_sort
from contracts.errors import BadRequest


def order_by(sort: list[str], columns: Mapping[str, ColumnElement[Any]], default: str,
             tiebreak: ColumnElement[Any]) -> list[Any]:
    """Sort fields come only from `columns`; a name outside it is refused, never passed to SQL."""
    keys = parse_sort(",".join(sort) if sort else None, tuple(columns), default)
    clauses: list[Any] = []
    for key in keys:
        column = columns[key.lstrip("-")]
        clauses.append(column.desc().nulls_last() if key.startswith("-") else column.asc().nulls_last())
    clauses.append(tiebreak.desc() if keys[0].startswith("-") else tiebreak.asc())
    return clauses


async def fetch_page(conn: AsyncConnection, stmt: Select[Any], params: ListParams,
                     sort_columns: Mapping[str, ColumnElement[Any]], default_sort: str,
                     tiebreak: ColumnElement[Any]) -> tuple[list[Any], int, bool]:
    """(rows, total, total_is_lower_bound) for one page of `stmt`."""
    params.window_check()
    if params.page < 1 or params.limit < 1:
        raise BadRequest("page and limit start at 1", code="bad_request", field="page")
    ordered = stmt.order_by(*order_by(params.sort, sort_columns, default_sort, tiebreak))
    rows = (await conn.execute(ordered.limit(params.limit).offset((params.page - 1) * params.limit))).all()
    if params.page == 1 and len(rows) < params.limit:
        return rows, len(rows), False
    capped = (
        stmt.with_only_columns(literal(1), maintain_column_froms=True).order_by(None).limit(MAX_WINDOW + 1).subquery()
    )
    total = (await conn.execute(select(func.count()).select_from(capped))).scalar_one()
    if total > MAX_WINDOW:
        return rows, MAX_WINDOW + 1, True
    return rows, total, False


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` as a substring, with its own wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
