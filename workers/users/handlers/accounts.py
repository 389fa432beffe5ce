"""Staff accounts (ADM): create, list, read, change, disable/enable, delete/restore, reset."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page, Role, UserRef
from contracts.errors import Conflict, Invalid, check_version
from contracts.users import (
    CreateUser,
    DeleteUser,
    DepartmentHeadAssigned,
    DisableUser,
    EnableUser,
    GetUser,
    GetUserRefs,
    GetUserStats,
    ListUsers,
    PasswordChanged,
    ResetPassword,
    RestoreUser,
    RevokeReason,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserDetail,
    UserDirectory,
    UserDisabled,
    UserEnabled,
    UserEventBase,
    UserRestored,
    UserStats,
    UserSummary,
    UserUpdated,
)
from workers.runtime.db import constraint_of
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.auth import revoke_all
from workers.users.passwords import check_policy
from workers.users.queries import (
    USER_COLUMNS,
    camel,
    display_name,
    live_department,
    load_user,
    user_detail,
    user_ref,
    user_summary,
)
from workers.users.tables import DIRECTORY_SEARCH, USER_SEARCH, departments, users

_UNIQUE_FIELDS = {
    "uq_users_username": "username",
    "uq_users_email": "email",
    "uq_users_staff_number": "staffNumber",
}
_SORT = {
    "username": users.c.username,
    "email": users.c.email,
    "staffNumber": users.c.staff_number,
    "lastName": users.c.last_name,
    "createdAt": users.c.created_at,
    "lastLoginAt": users.c.last_login_at,
}


def user_event(kind: type[UserEventBase], row: Any, changed: list[str] | None = None) -> UserEventBase:
    return kind(
        user_id=row.id, username=row.username, display_name=display_name(row), role=Role(row.role),
        department_id=row.department_id, staff_number=row.staff_number, is_active=row.is_active,
        version=row.version, changed_fields=changed or [],
    )


def _already_exists(exc: IntegrityError) -> Conflict:
    field = _UNIQUE_FIELDS.get(constraint_of(exc) or "")
    if field is None:
        raise exc
    return Conflict(f"a live user already has this {field}", code="already_exists", field=field)


def _is_admin(uow: UnitOfWork) -> bool:
    return uow.actor.role == Role.SYSTEM_ADMIN


def _state(row: Any) -> str:
    if row.deleted_at is not None:
        return "deleted"
    return "active" if row.is_active else "disabled"


def _invalid_transition(row: Any, target: str) -> Conflict:
    current = _state(row)
    return Conflict(f"cannot go from {current} to {target}", code="invalid_transition",
                    currentState=current, targetState=target)


async def ensure_not_last_admin(uow: UnitOfWork, row: Any) -> None:
    """Refuse to leave the system without an active administrator (409 last_admin)."""
    if row.role != Role.SYSTEM_ADMIN or not row.is_active or row.deleted_at is not None:
        return
    admins = (
        await uow.conn.execute(
            select(users.c.id)
            .where(users.c.role == Role.SYSTEM_ADMIN, users.c.is_active, users.c.deleted_at.is_(None))
            .with_for_update()
        )
    ).scalars().all()
    if not set(admins) - {row.id}:
        raise Conflict("this is the last active system administrator", code="last_admin")


async def clear_head(uow: UnitOfWork, user_id: UUID, *, keep_department: UUID | None = None) -> None:
    """A head who leaves their department, or is disabled or deleted, stops heading it."""
    stmt = (
        update(departments)
        .where(departments.c.head_user_id == user_id)
        .values(head_user_id=None, updated_at=uow.now, version=departments.c.version + 1)
        .returning(departments)
    )
    if keep_department is not None:
        stmt = stmt.where(departments.c.id != keep_department)
    for d in (await uow.conn.execute(stmt)).all():
        uow.emit(DepartmentHeadAssigned(
            department_id=d.id, code=d.code, name=d.name, head_user_id=None, is_active=d.is_active,
            version=d.version, previous_head_user_id=user_id,
        ))


# ---------------------------------------------------------------- reads


@registry.handles(ListUsers)
async def list_users(q: ListUsers, uow: UnitOfWork) -> Page[UserDetail]:
    stmt = select(*USER_COLUMNS)
    if not q.include_deleted:
        stmt = stmt.where(users.c.deleted_at.is_(None))
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(USER_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(USER_SEARCH)))
    if q.role:
        stmt = stmt.where(users.c.role.in_([r.value for r in q.role]))
    if q.role_not:
        stmt = stmt.where(not_(users.c.role.in_([r.value for r in q.role_not])))
    if q.department_id is not None:
        stmt = stmt.where(users.c.department_id == q.department_id)
    if q.is_active is not None:
        stmt = stmt.where(users.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", users.c.id)
    return Page(items=[user_detail(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(UserDirectory)
async def user_directory(q: UserDirectory, uow: UnitOfWork) -> Page[UserSummary]:
    stmt = select(*USER_COLUMNS).where(users.c.deleted_at.is_(None), users.c.is_active)
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(DIRECTORY_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(DIRECTORY_SEARCH)))
    if q.role:
        stmt = stmt.where(users.c.role.in_([r.value for r in q.role]))
    if q.department_id is not None:
        stmt = stmt.where(users.c.department_id == q.department_id)
    sort = {k: _SORT[k] for k in ("username", "lastName", "createdAt")}
    rows, total, lower = await fetch_page(uow.conn, stmt, q, sort, "lastName", users.c.id)
    return Page(items=[user_summary(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetUser)
async def get_user(q: GetUser, uow: UnitOfWork) -> UserDetail | UserSummary:
    full = _is_admin(uow) or q.id == uow.actor.user_id
    row = await load_user(uow.conn, q.id, live=not _is_admin(uow))
    return user_detail(row) if full else user_summary(row)


@registry.handles(GetUserStats)
async def user_stats(q: GetUserStats, uow: UnitOfWork) -> UserStats:
    live = users.c.deleted_at.is_(None)
    totals = (
        await uow.conn.execute(
            select(
                func.count().filter(live),
                func.count().filter(and_(live, users.c.is_active)),
                func.count().filter(and_(live, not_(users.c.is_active))),
                func.count().filter(not_(live)),
            )
        )
    ).one()
    by_role = dict(
        (await uow.conn.execute(select(users.c.role, func.count()).where(live).group_by(users.c.role))).all()
    )
    return UserStats(total=totals[0], active=totals[1], disabled=totals[2], deleted=totals[3],
                     by_role={role.value: by_role.get(role.value, 0) for role in Role})


@registry.handles(GetUserRefs)
async def get_user_refs(q: GetUserRefs, uow: UnitOfWork) -> list[UserRef]:
    if not q.ids:
        return []
    rows = (
        await uow.conn.execute(
            select(users.c.id, users.c.first_name, users.c.last_name, users.c.role)
            .where(users.c.id.in_(q.ids))
        )
    ).all()
    return [user_ref(r) for r in rows]


# ---------------------------------------------------------------- changes


@registry.handles(CreateUser)
async def create_user(cmd: CreateUser, uow: UnitOfWork) -> UserDetail:
    username, email = cmd.username.lower(), cmd.email.strip().lower()
    check_policy(cmd.password, username=username, email=email)
    if cmd.department_id is not None:
        await live_department(uow.conn, cmd.department_id)
    hashed = await uow.services.hasher.hash(cmd.password)
    try:
        row = (
            await uow.conn.execute(
                users.insert()
                .values(
                    username=username, email=email, password_hash=hashed, first_name=cmd.first_name,
                    last_name=cmd.last_name, phone=cmd.phone, staff_number=cmd.staff_number,
                    role=cmd.role.value, department_id=cmd.department_id,
                    email_otp_enabled=cmd.email_otp_enabled, must_change_password=True,
                    created_by=uow.actor.user_id, created_at=uow.now, updated_at=uow.now,
                )
                .returning(*USER_COLUMNS)
            )
        ).one()
    except IntegrityError as exc:
        raise _already_exists(exc) from exc
    uow.emit(user_event(UserCreated, row))
    return user_detail(row)


_PATCHABLE = ("username", "email", "first_name", "last_name", "role", "phone", "staff_number",
              "department_id", "email_otp_enabled")


@registry.handles(UpdateUser)
async def update_user(cmd: UpdateUser, uow: UnitOfWork) -> UserDetail:
    if cmd.patch.is_active is not msgspec.UNSET:
        raise Invalid("isActive changes only through POST /users/{id}/disable and /enable", code="use_transition",
                      field="isActive")
    row = await load_user(uow.conn, cmd.id, lock=True)
    check_version(row, cmd.if_match)
    patch = {k: v for k, v in msgspec.structs.asdict(cmd.patch).items() if v is not msgspec.UNSET}
    if "username" in patch:
        patch["username"] = patch["username"].lower()
    if "email" in patch:
        patch["email"] = patch["email"].strip().lower()
    if "role" in patch:
        patch["role"] = Role(patch["role"]).value
    changed = [k for k in _PATCHABLE if k in patch and getattr(row, k) != patch[k]]
    if not changed:
        return user_detail(row)
    if "role" in changed:
        await ensure_not_last_admin(uow, row)
    if "department_id" in changed and patch["department_id"] is not None:
        await live_department(uow.conn, patch["department_id"], "departmentId")
    try:
        row = (
            await uow.conn.execute(
                update(users).where(users.c.id == cmd.id)
                .values(**{k: patch[k] for k in changed}, updated_at=uow.now, version=users.c.version + 1)
                .returning(*USER_COLUMNS)
            )
        ).one()
    except IntegrityError as exc:
        raise _already_exists(exc) from exc
    if "department_id" in changed:
        await clear_head(uow, row.id, keep_department=row.department_id)
    if "role" in changed:
        await revoke_all(uow, row.id, RevokeReason.ROLE_CHANGED)
    uow.emit(user_event(UserUpdated, row, [camel(k) for k in changed]))
    return user_detail(row)


async def _set_state(uow: UnitOfWork, user_id: UUID, **values: Any) -> Any:
    return (
        await uow.conn.execute(
            update(users).where(users.c.id == user_id)
            .values(**values, updated_at=uow.now, version=users.c.version + 1)
            .returning(*USER_COLUMNS)
        )
    ).one()


@registry.handles(DisableUser)
async def disable_user(cmd: DisableUser, uow: UnitOfWork) -> UserDetail:
    row = await load_user(uow.conn, cmd.id, live=False, lock=True)
    check_version(row, cmd.if_match)
    if _state(row) != "active":
        raise _invalid_transition(row, "disabled")
    await ensure_not_last_admin(uow, row)
    row = await _set_state(uow, cmd.id, is_active=False)
    await clear_head(uow, row.id)
    await revoke_all(uow, row.id, RevokeReason.USER_DISABLED)
    uow.target("user", row.id, reason=cmd.reason is not None)
    uow.emit(user_event(UserDisabled, row, ["isActive"]))
    return user_detail(row)


@registry.handles(EnableUser)
async def enable_user(cmd: EnableUser, uow: UnitOfWork) -> UserDetail:
    row = await load_user(uow.conn, cmd.id, live=False, lock=True)
    check_version(row, cmd.if_match)
    if _state(row) != "disabled":
        raise _invalid_transition(row, "active")
    row = await _set_state(uow, cmd.id, is_active=True)
    uow.emit(user_event(UserEnabled, row, ["isActive"]))
    return user_detail(row)


@registry.handles(DeleteUser)
async def delete_user(cmd: DeleteUser, uow: UnitOfWork) -> None:
    row = await load_user(uow.conn, cmd.id, live=False, lock=True)
    check_version(row, cmd.if_match)
    if _state(row) == "deleted":
        raise _invalid_transition(row, "deleted")
    await ensure_not_last_admin(uow, row)
    was_active = row.is_active
    row = await _set_state(uow, cmd.id, is_active=False, deleted_at=uow.now)
    await clear_head(uow, row.id)
    await revoke_all(uow, row.id, RevokeReason.USER_DELETED)
    uow.emit(user_event(UserDeleted, row, ["deletedAt", "isActive"] if was_active else ["deletedAt"]))
    return None


@registry.handles(RestoreUser)
async def restore_user(cmd: RestoreUser, uow: UnitOfWork) -> UserDetail:
    row = await load_user(uow.conn, cmd.id, live=False, lock=True)
    check_version(row, cmd.if_match)
    if _state(row) != "deleted":
        raise _invalid_transition(row, "restored")
    try:
        row = await _set_state(uow, cmd.id, deleted_at=None, is_active=False)
    except IntegrityError as exc:
        raise _already_exists(exc) from exc
    uow.emit(user_event(UserRestored, row, ["deletedAt"]))
    return user_detail(row)


@registry.handles(ResetPassword)
async def reset_password(cmd: ResetPassword, uow: UnitOfWork) -> None:
    row = await load_user(uow.conn, cmd.id, lock=True)
    check_policy(cmd.new_password, username=row.username, email=row.email, field="newPassword")
    hashed = await uow.services.hasher.hash(cmd.new_password)
    row = await _set_state(uow, cmd.id, password_hash=hashed, must_change_password=True,
                           password_changed_at=uow.now)
    await revoke_all(uow, row.id, RevokeReason.PASSWORD_RESET)
    await uow.services.limits.reset_account(row.email)  # the administrator's reset also lifts a sign-in lock
    uow.emit(PasswordChanged(user_id=row.id, by="admin", version=row.version))
    return None

