"""Reading the users schema: rows to views, lookups shared by the handlers."""

from __future__ import annotations

import functools
from typing import Any
from uuid import UUID

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import Role, UserRef
from contracts.errors import NotFound, reference_error
from contracts.users import DepartmentView, UserDetail, UserSummary
from workers.users.tables import departments, rooms, users

USER_COLUMNS = [c for c in users.c if c.name != "password_hash"]


def camel(name: str) -> str:
    """`department_id` → `departmentId` (field names in events and errors)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def display_name(row: Any) -> str:
    return f"{row.first_name} {row.last_name}"


def user_detail(row: Any) -> UserDetail:
    return UserDetail(
        id=row.id, display_name=display_name(row), role=Role(row.role), username=row.username,
        first_name=row.first_name, last_name=row.last_name, department_id=row.department_id,
        staff_number=row.staff_number, is_active=row.is_active, email=row.email, phone=row.phone,
        email_otp_enabled=row.email_otp_enabled, must_change_password=row.must_change_password,
        last_login_at=row.last_login_at, created_by=row.created_by, created_at=row.created_at,
        updated_at=row.updated_at, deleted_at=row.deleted_at, version=row.version,
    )


def user_summary(row: Any) -> UserSummary:
    return UserSummary(
        id=row.id, display_name=display_name(row), role=Role(row.role), username=row.username,
        first_name=row.first_name, last_name=row.last_name, department_id=row.department_id,
        staff_number=row.staff_number, is_active=row.is_active,
    )


def user_ref(row: Any) -> UserRef:
    return UserRef(id=row.id, display_name=display_name(row), role=Role(row.role))


@functools.cache
def _load_user_sql(live: bool, lock: bool, with_hash: bool) -> str:
    """The text of the hottest read of the worker (GET /users/{id}, every sign-in, every change
    of a user): plain SQL, so no statement is rebuilt and no cache key computed per call."""
    cols = ", ".join(c.name for c in (users.c if with_hash else USER_COLUMNS))
    sql = f"SELECT {cols} FROM users.users WHERE id = $1"
    if live:
        sql += " AND deleted_at IS NULL"
    if lock:
        sql += " FOR UPDATE"
    return sql


async def load_user(conn: AsyncConnection, user_id: UUID, *, live: bool = True, lock: bool = False,
                    with_hash: bool = False) -> Row[Any]:
    row = (await conn.exec_driver_sql(_load_user_sql(live, lock, with_hash), (user_id,))).first()
    if row is None:
        raise NotFound("no such user")
    return row


async def live_department(conn: AsyncConnection, department_id: UUID, field: str = "departmentId") -> Row[Any]:
    """A body reference to a department: it must be live and active (422 otherwise)."""
    row = (
        await conn.execute(
            select(departments.c.id, departments.c.is_active, departments.c.head_user_id)
            .where(departments.c.id == department_id, departments.c.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        raise reference_error(field, "invalid_reference", "no such department")
    if not row.is_active:
        raise reference_error(field, "inactive_reference", "the department is not active")
    return row


async def department_view(conn: AsyncConnection, department_id: UUID, *, counts: bool = True,
                          live_only: bool = True) -> DepartmentView:
    d = departments
    head = users.alias("head")
    stmt = (
        select(d, head.c.first_name, head.c.last_name, head.c.role.label("head_role"))
        .select_from(d.outerjoin(head, head.c.id == d.c.head_user_id))
        .where(d.c.id == department_id)
    )
    if live_only:
        stmt = stmt.where(d.c.deleted_at.is_(None))
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such department")
    user_count = room_count = None
    if counts:
        user_count = (
            await conn.execute(
                select(func.count()).select_from(users)
                .where(users.c.department_id == department_id, users.c.deleted_at.is_(None))
            )
        ).scalar_one()
        room_count = await live_room_count(conn, department_id)
    return _department(row, user_count=user_count, room_count=room_count)


async def live_room_count(conn: AsyncConnection, department_id: UUID) -> int:
    """Live rooms of a department (its detail's `roomCount`; a delete is refused while any)."""
    return (
        await conn.execute(
            select(func.count()).select_from(rooms)
            .where(rooms.c.department_id == department_id, rooms.c.deleted_at.is_(None))
        )
    ).scalar_one()


def _department(row: Any, *, user_count: int | None = None, room_count: int | None = None) -> DepartmentView:
    head_ref = None
    if row.head_user_id is not None and getattr(row, "first_name", None) is not None:
        head_ref = UserRef(id=row.head_user_id, display_name=f"{row.first_name} {row.last_name}",
                           role=Role(row.head_role))
    return DepartmentView(
        id=row.id, code=row.code, name=row.name, description=row.description, head_user_id=row.head_user_id,
        head_user=head_ref, is_active=row.is_active, created_at=row.created_at, updated_at=row.updated_at,
        deleted_at=row.deleted_at, version=row.version, user_count=user_count, room_count=room_count,
    )


department_from_row = _department
