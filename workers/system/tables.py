"""The `system` schema as SQLAlchemy Core tables (the migrations are the source of truth)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData(schema="system")

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("message_id", UUID(as_uuid=True), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("last_occurred_at", DateTime(timezone=True), nullable=False),
    Column("repeat_count", Integer, nullable=False),
    Column("actor_id", UUID(as_uuid=True)),
    Column("actor_role", Text),
    Column("actor_system", Text),
    Column("session_id", Text),
    Column("action", Text, nullable=False),
    Column("target_type", Text),
    Column("target_id", Text),
    Column("patient_ids", ARRAY(UUID(as_uuid=True)), nullable=False),
    Column("outcome", Text, nullable=False),
    Column("ip", Text),
    Column("user_agent", Text),
    Column("correlation_id", UUID(as_uuid=True)),
    Column("details", JSONB, nullable=False),
    Column("coalesce_key", Text),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("recipient_id", UUID(as_uuid=True), nullable=False),
    Column("sender_id", UUID(as_uuid=True)),
    Column("type", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("related_entity_type", Text),
    Column("related_entity_id", Text),
    Column("is_read", Boolean, nullable=False),
    Column("read_at", DateTime(timezone=True)),
    Column("source_event_id", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False),
)
