"""The runtime's own tables, one pair per domain schema: the inbox and the outbox."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, Table, Text, func
from sqlalchemy.dialects.postgresql import UUID


def stamp_columns() -> list[Column]:
    """created_at, updated_at and version (optimistic concurrency, ETag) of a domain row."""
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("version", Integer, nullable=False, server_default="1"),
    ]


def inbox_table(metadata: MetaData, schema: str) -> Table:
    """Message ids already processed, with the reply to replay on a redelivery."""
    return Table(
        "inbox",
        metadata,
        Column("message_id", UUID(as_uuid=True), primary_key=True),
        Column("type", Text, nullable=False),
        Column("reply", LargeBinary, nullable=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )


def outbox_table(metadata: MetaData, schema: str) -> Table:
    """Events committed with their change, waiting to be published with a confirm.

    `available_at` is a lease: the process that committed the row publishes it at once and
    deletes it; only when that has not happened by `available_at` does any sweeper take it.
    """
    return Table(
        "outbox",
        metadata,
        Column("message_id", UUID(as_uuid=True), primary_key=True),
        Column("routing_key", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("available_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        schema=schema,
    )
