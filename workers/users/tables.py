"""The `users` schema as SQLAlchemy Core tables (the migrations are the source of truth)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    Time,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData(schema="users")

departments = Table(
    "departments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("code", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("head_user_id", UUID(as_uuid=True)),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

users = Table(
    "users",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("username", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("first_name", Text, nullable=False),
    Column("last_name", Text, nullable=False),
    Column("phone", Text),
    Column("staff_number", Text),
    Column("role", Text, nullable=False),
    Column("department_id", UUID(as_uuid=True), ForeignKey("users.departments.id")),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("email_otp_enabled", Boolean, nullable=False, server_default="false"),
    Column("must_change_password", Boolean, nullable=False, server_default="true"),
    Column("last_login_at", DateTime(timezone=True)),
    Column("password_changed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

# The exact expressions the trigram indexes are built on (migration 0002), so the planner uses them.
USER_SEARCH = literal_column(
    "public.f_unaccent(lower(users.users.username || ' ' || users.users.email || ' ' || "
    "users.users.first_name || ' ' || users.users.last_name || ' ' || coalesce(users.users.staff_number, '')))"
)
# The directory shows summaries, which carry no e-mail: it is not searchable there either.
DIRECTORY_SEARCH = literal_column(
    "public.f_unaccent(lower(users.users.username || ' ' || users.users.first_name || ' ' || "
    "users.users.last_name || ' ' || coalesce(users.users.staff_number, '')))"
)
DEPARTMENT_SEARCH = literal_column(
    "public.f_unaccent(lower(users.departments.code || ' ' || users.departments.name))"
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("code", Text, nullable=False),
    Column("type", Text, nullable=False, server_default="general"),
    Column("department_id", UUID(as_uuid=True), ForeignKey("users.departments.id"), nullable=False),
    Column("floor", Integer),
    Column("capacity", Integer, nullable=False, server_default="1"),
    Column("price_per_day", Numeric(10, 2)),
    Column("status", Text, nullable=False, server_default="available"),  # available | maintenance (set by ADM)
    Column("on_duty_count", Integer, nullable=False, server_default="0"),  # kept by the scheduling side
    Column("amenities", ARRAY(Text), nullable=False, server_default="{}"),
    Column("description", Text),
    Column("notes", Text),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

services = Table(
    "services",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("code", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

service_rooms = Table(
    "service_rooms",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("service_id", UUID(as_uuid=True), ForeignKey("users.services.id"), nullable=False),
    Column("room_id", UUID(as_uuid=True), ForeignKey("users.rooms.id"), nullable=False),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("notes", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

shift_templates = Table(
    "shift_templates",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("name", Text, nullable=False),
    Column("shift_type", Text, nullable=False),
    Column("start_time", Time, nullable=False),
    Column("end_time", Time, nullable=False),
    Column("break_start_time", Time),
    Column("break_end_time", Time),
    Column("description", Text),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
)

room_schedules = Table(
    "room_schedules",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("room_id", UUID(as_uuid=True), ForeignKey("users.rooms.id"), nullable=False),
    Column("shift_template_id", UUID(as_uuid=True), ForeignKey("users.shift_templates.id")),
    Column("work_date", Date, nullable=False),
    Column("start_time", Time, nullable=False),
    Column("end_time", Time, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, server_default="scheduled"),
    Column("actual_end_at", DateTime(timezone=True)),
    Column("overtime_hours", Numeric(4, 2), nullable=False, server_default="0"),
    Column("notes", Text),
    Column("cancel_reason", Text),
    Column("created_by", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default="1"),
)

assignments = Table(
    "employee_room_assignments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("room_schedule_id", UUID(as_uuid=True), ForeignKey("users.room_schedules.id"), nullable=False),
    Column("employee_id", UUID(as_uuid=True), ForeignKey("users.users.id"), nullable=False),
    Column("room_id", UUID(as_uuid=True), ForeignKey("users.rooms.id"), nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_by", UUID(as_uuid=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default="1"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.users.id"), nullable=False),
    Column("algorithm", Text, nullable=False, server_default="ed25519"),
    Column("public_key", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("sealed_private_key", LargeBinary, nullable=False),  # never leaves the worker
    Column("nonce", LargeBinary, nullable=False),
    Column("kdf_salt", LargeBinary, nullable=False),
    Column("kdf_params", JSONB, nullable=False),
    Column("failed_attempts", Integer, nullable=False, server_default="0"),
    Column("locked_until", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", UUID(as_uuid=True)),
    Column("revoke_reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default="1"),
)

signatures = Table(
    "signatures",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("key_id", UUID(as_uuid=True), ForeignKey("users.signing_keys.id"), nullable=False),
    Column("signer_id", UUID(as_uuid=True), ForeignKey("users.users.id"), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("entity_type", Text, nullable=False),
    Column("entity_id", UUID(as_uuid=True), nullable=False),
    Column("content_sha256", Text, nullable=False),
    Column("statement", JSONB, nullable=False),
    Column("statement_bytes", LargeBinary, nullable=False),  # the exact canonical bytes that were signed
    Column("signature", Text, nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("signed_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
