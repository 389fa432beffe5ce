"""The `users` schema as SQLAlchemy Core tables (the migrations are the source of truth)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import UUID

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
