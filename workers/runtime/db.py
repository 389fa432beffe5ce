"""Database access for workers: one async engine per process, SQLAlchemy Core over asyncpg."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.settings import Settings


def make_engine(settings: Settings, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=4,
        pool_pre_ping=False,
        pool_recycle=1800,
        hide_parameters=True,  # an error's text must never carry its parameters (hashes, sealed keys) to a log
        connect_args={"server_settings": {"application_name": "imaging-worker"}},
    )


def constraint_of(exc: IntegrityError | DBAPIError) -> str | None:
    """The name of the constraint an integrity error violated, if Postgres said."""
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    return getattr(cause, "constraint_name", None)


def sqlstate_of(exc: DBAPIError) -> str | None:
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    if isinstance(cause, asyncpg.PostgresError):
        return cause.sqlstate
    return getattr(orig, "sqlstate", None)
