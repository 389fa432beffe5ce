"""Departments: CRUD with soft delete, the head (a live active member), stats."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page, Role
from contracts.errors import BadRequest, Conflict, NotFound, check_version, invalid_field, reference_error
from contracts.users import (
    AssignDepartmentHead,
    CreateDepartment,
    DeleteDepartment,
    DepartmentCreated,
    DepartmentDeleted,
    DepartmentEventBase,
    DepartmentHeadAssigned,
    DepartmentRestored,
    DepartmentStats,
    DepartmentUpdated,
    DepartmentView,
    GetDepartment,
    GetDepartmentStats,
    ListDepartments,
    RestoreDepartment,
    UpdateDepartment,
)
from workers.runtime.db import constraint_of
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.queries import camel, department_from_row, department_view, live_room_count
from workers.users.tables import DEPARTMENT_SEARCH, departments, users

_SORT = {"code": departments.c.code, "name": departments.c.name, "createdAt": departments.c.created_at}


def department_event(kind: type[DepartmentEventBase], row: Any, previous_head: Any = None) -> DepartmentEventBase:
    return kind(
        department_id=row.id, code=row.code, name=row.name, head_user_id=row.head_user_id,
        is_active=row.is_active, version=row.version, previous_head_user_id=previous_head,
    )


def _code_taken(exc: IntegrityError) -> Conflict:
    if constraint_of(exc) != "uq_departments_code":
        raise exc
    return Conflict("a live department already has this code", code="already_exists", field="code")


async def _locked(uow: UnitOfWork, department_id: Any, *, live: bool = True) -> Any:
    stmt = select(departments).where(departments.c.id == department_id).with_for_update()
    if live:
        stmt = stmt.where(departments.c.deleted_at.is_(None))
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such department")
    return row


@registry.handles(ListDepartments)
async def list_departments(q: ListDepartments, uow: UnitOfWork) -> Page[DepartmentView]:
    if q.include_deleted and uow.actor.role != Role.SYSTEM_ADMIN:
        raise BadRequest("includeDeleted is for administrators", code="forbidden_filter",
                         field="includeDeleted")
    head = users.alias("head")
    stmt = select(departments, head.c.first_name, head.c.last_name, head.c.role.label("head_role")).select_from(
        departments.outerjoin(head, head.c.id == departments.c.head_user_id)
    )
    if not q.include_deleted:
        stmt = stmt.where(departments.c.deleted_at.is_(None))
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(DEPARTMENT_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(DEPARTMENT_SEARCH)))
    if q.is_active is not None:
        stmt = stmt.where(departments.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "code", departments.c.id)
    return Page(items=[department_from_row(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetDepartment)
async def get_department(q: GetDepartment, uow: UnitOfWork) -> DepartmentView:
    if q.id is not None:
        return await department_view(uow.conn, q.id)
    if q.code is None:
        raise invalid_field("code", "required", "give an id or a code")
    department_id = (
        await uow.conn.execute(
            select(departments.c.id).where(departments.c.code == q.code, departments.c.deleted_at.is_(None))
        )
    ).scalar()
    if department_id is None:
        raise NotFound("no such department")
    return await department_view(uow.conn, department_id)


@registry.handles(GetDepartmentStats)
async def department_stats(q: GetDepartmentStats, uow: UnitOfWork) -> DepartmentStats:
    live = departments.c.deleted_at.is_(None)
    totals = (
        await uow.conn.execute(
            select(
                func.count().filter(live),
                func.count().filter(and_(live, departments.c.is_active)),
                func.count().filter(and_(live, not_(departments.c.is_active))),
                func.count().filter(not_(live)),
            )
        )
    ).one()
    per = (
        await uow.conn.execute(
            select(departments.c.code, func.count(users.c.id))
            .select_from(departments.outerjoin(
                users, and_(users.c.department_id == departments.c.id, users.c.deleted_at.is_(None))))
            .where(live)
            .group_by(departments.c.code)
        )
    ).all()
    return DepartmentStats(total=totals[0], active=totals[1], inactive=totals[2], deleted=totals[3],
                           users_by_department=dict(per))


@registry.handles(CreateDepartment)
async def create_department(cmd: CreateDepartment, uow: UnitOfWork) -> DepartmentView:
    try:
        row = (
            await uow.conn.execute(
                departments.insert()
                .values(code=cmd.code, name=cmd.name, description=cmd.description,
                        created_at=uow.now, updated_at=uow.now)
                .returning(departments)
            )
        ).one()
    except IntegrityError as exc:
        raise _code_taken(exc) from exc
    uow.emit(department_event(DepartmentCreated, row))
    return department_from_row(row, user_count=0, room_count=0)


@registry.handles(UpdateDepartment)
async def update_department(cmd: UpdateDepartment, uow: UnitOfWork) -> DepartmentView:
    row = await _locked(uow, cmd.id)
    check_version(row, cmd.if_match)
    patch = {k: v for k, v in msgspec.structs.asdict(cmd.patch).items() if v is not msgspec.UNSET}
    changed = [k for k, v in patch.items() if getattr(row, k) != v]
    if changed:
        try:
            row = (
                await uow.conn.execute(
                    update(departments).where(departments.c.id == cmd.id)
                    .values(**{k: patch[k] for k in changed}, updated_at=uow.now,
                            version=departments.c.version + 1)
                    .returning(departments)
                )
            ).one()
        except IntegrityError as exc:
            raise _code_taken(exc) from exc
        uow.emit(department_event(DepartmentUpdated, row))
        uow.target("department", row.id, changedFields=[camel(k) for k in changed])
    return await department_view(uow.conn, row.id)


@registry.handles(DeleteDepartment)
async def delete_department(cmd: DeleteDepartment, uow: UnitOfWork) -> None:
    row = await _locked(uow, cmd.id)
    members = (
        await uow.conn.execute(
            select(func.count()).select_from(users)
            .where(users.c.department_id == cmd.id, users.c.deleted_at.is_(None))
        )
    ).scalar_one()
    if members:
        raise Conflict(f"{members} live users belong to this department", code="in_use", users=members)
    room_count = await live_room_count(uow.conn, cmd.id)
    if room_count:
        raise Conflict(f"{room_count} live rooms belong to this department", code="in_use", rooms=room_count)
    row = (
        await uow.conn.execute(
            update(departments).where(departments.c.id == cmd.id)
            .values(deleted_at=uow.now, head_user_id=None, updated_at=uow.now, version=departments.c.version + 1)
            .returning(departments)
        )
    ).one()
    uow.emit(department_event(DepartmentDeleted, row))
    return None


@registry.handles(RestoreDepartment)
async def restore_department(cmd: RestoreDepartment, uow: UnitOfWork) -> DepartmentView:
    row = await _locked(uow, cmd.id, live=False)
    if row.deleted_at is None:
        raise Conflict("the department is not deleted", code="invalid_transition",
                       currentState="live", targetState="restored")
    try:
        row = (
            await uow.conn.execute(
                update(departments).where(departments.c.id == cmd.id)
                .values(deleted_at=None, updated_at=uow.now, version=departments.c.version + 1)
                .returning(departments)
            )
        ).one()
    except IntegrityError as exc:
        raise _code_taken(exc) from exc
    uow.emit(department_event(DepartmentRestored, row))
    return await department_view(uow.conn, row.id)


@registry.handles(AssignDepartmentHead)
async def assign_department_head(cmd: AssignDepartmentHead, uow: UnitOfWork) -> DepartmentView:
    row = await _locked(uow, cmd.id)
    if cmd.user_id is not None:
        member = (
            await uow.conn.execute(
                select(users.c.department_id, users.c.is_active)
                .where(users.c.id == cmd.user_id, users.c.deleted_at.is_(None))
            )
        ).first()
        if member is None:
            raise reference_error("userId", "invalid_reference", "no such user")
        if not member.is_active:
            raise reference_error("userId", "inactive_reference", "the user is disabled")
        if member.department_id != cmd.id:
            raise reference_error("userId", "not_a_member", "the head must belong to the department")
    previous = row.head_user_id
    if previous != cmd.user_id:
        row = (
            await uow.conn.execute(
                update(departments).where(departments.c.id == cmd.id)
                .values(head_user_id=cmd.user_id, updated_at=uow.now, version=departments.c.version + 1)
                .returning(departments)
            )
        ).one()
        uow.emit(department_event(DepartmentHeadAssigned, row, previous_head=previous))
    return await department_view(uow.conn, row.id)
