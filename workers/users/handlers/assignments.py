"""Employee room assignments (users.md §2): who works a schedule. An employee's active assignments
never overlap: the exclusion constraint `ex_assignment_employee_overlap` decides, so concurrent
requests for overlapping slots leave exactly one; the reads here only name what collided."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page
from contracts.errors import Conflict, FieldError, NotFound, check_version
from contracts.scheduling import (
    AssignEmployee,
    AssignmentDeleted,
    AssignmentsCreated,
    AssignmentUpdated,
    AssignmentView,
    BulkAssignEmployees,
    ConflictItem,
    CurrentAssignments,
    GetAssignment,
    ListAssignments,
    RemoveAssignment,
    ScheduleStatus,
    UpdateAssignment,
)
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.room_schedules import rooms_touched
from workers.users.handlers.schedule_rules import EMPLOYEE_OVERLAPS_SQL, assignment_integrity, insert_assignments
from workers.users.handlers.schedule_support import (
    OPEN,
    assignment_event,
    assignment_select,
    assignment_view,
    assignment_views,
    check_employees,
    conflicts_error,
    field_errors,
    overlaps,
    refresh_rooms,
)
from workers.users.tables import assignments, room_schedules

_a, _s = assignments, room_schedules
_SORT = {"startsAt": _a.c.starts_at, "createdAt": _a.c.created_at}


@registry.handles(ListAssignments)
async def list_assignments(q: ListAssignments, uow: UnitOfWork) -> Page[AssignmentView]:
    stmt = assignment_select()
    if q.room_schedule_id is not None:
        stmt = stmt.where(_a.c.room_schedule_id == q.room_schedule_id)
    if q.employee_id is not None:
        stmt = stmt.where(_a.c.employee_id == q.employee_id)
    if q.room_id is not None:
        stmt = stmt.where(_a.c.room_id == q.room_id)
    if q.date is not None:
        stmt = stmt.where(_s.c.work_date == q.date)
    if q.is_active is not None:
        stmt = stmt.where(_a.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", _a.c.id)
    return Page(items=[assignment_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetAssignment)
async def get_assignment(q: GetAssignment, uow: UnitOfWork) -> AssignmentView:
    row = (await uow.conn.execute(assignment_select().where(_a.c.id == q.id))).first()
    if row is None:
        raise NotFound("no such assignment")
    return assignment_view(row)


@registry.handles(CurrentAssignments)
async def current_assignments(q: CurrentAssignments, uow: UnitOfWork) -> list[AssignmentView]:
    from workers.users.handlers.on_duty import current_duty

    return await current_duty(uow.conn, uow.actor_id, uow.now)


async def _open_schedules(uow: UnitOfWork, ids: list[UUID], fields: list[str]) -> dict[UUID, Any]:
    """The schedules named in a body, held (FOR SHARE) so that a concurrent cancel or delete waits
    for these assignments and then sees them; each must exist and be scheduled or in progress."""
    rows = {r.id: r for r in (await uow.conn.execute(
        select(_s).where(_s.c.id.in_(set(ids))).order_by(_s.c.id).with_for_update(read=True)
    )).all()}
    errors = []
    for sid, field in zip(ids, fields, strict=True):
        row = rows.get(sid)
        if row is None:
            errors.append(FieldError(field, "invalid_reference", "no such room schedule"))
        elif row.status not in OPEN:
            errors.append(FieldError(field, "schedule_not_open", f"the schedule is {row.status}"))
    if errors:
        raise field_errors(errors)
    return rows


async def assignment_conflicts(uow: UnitOfWork, pairs: list[tuple[int | None, Any, UUID]]) -> list[ConflictItem]:
    """(index, schedule row, employee) candidates: already on that schedule, busy elsewhere, or
    twice at once within the request."""
    def item(index: int | None, s: Any, code: str, detail: str, **more: Any) -> ConflictItem:
        return ConflictItem(code=code, detail=detail, index=index, schedule_id=s.id, room_id=s.room_id,
                            work_date=s.work_date, starts_at=s.starts_at, ends_at=s.ends_at, **more)

    existing = set((await uow.conn.execute(
        select(_a.c.room_schedule_id, _a.c.employee_id)
        .where(tuple_(_a.c.room_schedule_id, _a.c.employee_id).in_([(s.id, e) for _, s, e in pairs]))
    )).tuples().all())
    out = [item(i, s, "already_exists", "the employee is already on this schedule", employee_id=e)
           for i, s, e in pairs if (s.id, e) in existing]
    rows = (await uow.conn.exec_driver_sql(EMPLOYEE_OVERLAPS_SQL, (
        list(range(len(pairs))), [e for _, _, e in pairs], [s.starts_at for _, s, _ in pairs],
        [s.ends_at for _, s, _ in pairs], []))).all()
    for k, employee_id, assignment_id, schedule_id in rows:
        index, s, _ = pairs[k]
        if schedule_id != s.id:
            out.append(item(index, s, "employee_double_booked", "the employee is already assigned at that time",
                            employee_id=employee_id, conflicting_assignment_id=assignment_id,
                            conflicting_schedule_id=schedule_id))
    seen: dict[UUID, list[tuple[int | None, Any]]] = defaultdict(list)
    for index, s, e in pairs:
        for other_index, other in seen[e]:
            if overlaps(s.starts_at, s.ends_at, other.starts_at, other.ends_at):
                code = "duplicate" if other.id == s.id else "employee_double_booked"
                out.append(item(index, s, code, "the employee is in another item of this request at that time",
                                employee_id=e, conflicting_index=other_index))
                break
        seen[e].append((index, s))
    return out


@registry.handles(AssignEmployee)
async def assign_employee(cmd: AssignEmployee, uow: UnitOfWork) -> AssignmentView:
    schedule = (await _open_schedules(uow, [cmd.room_schedule_id], ["roomScheduleId"]))[cmd.room_schedule_id]
    await check_employees(uow.conn, [cmd.employee_id], ["employeeId"])
    conflicts = await assignment_conflicts(uow, [(None, schedule, cmd.employee_id)])
    if conflicts:
        error = conflicts_error(conflicts)
        error.field = "employeeId"
        raise error
    [row] = await insert_assignments(uow, [(schedule, cmd.employee_id)])
    await refresh_rooms(uow, rooms_touched(uow, row))
    uow.target("assignment", row.id, employeeId=str(cmd.employee_id), scheduleId=str(schedule.id))
    return (await assignment_views(uow.conn, [row.id]))[0]


@registry.handles(BulkAssignEmployees)
async def bulk_assign_employees(cmd: BulkAssignEmployees, uow: UnitOfWork) -> AssignmentsCreated:
    schedules = await _open_schedules(uow, [i.room_schedule_id for i in cmd.items],
                                      [f"items/{k}/roomScheduleId" for k in range(len(cmd.items))])
    await check_employees(uow.conn, [i.employee_id for i in cmd.items],
                          [f"items/{k}/employeeId" for k in range(len(cmd.items))])
    pairs = [(k, schedules[i.room_schedule_id], i.employee_id) for k, i in enumerate(cmd.items)]
    conflicts = await assignment_conflicts(uow, pairs)
    if conflicts:
        raise conflicts_error(conflicts)
    rows = await insert_assignments(uow, [(s, e) for _, s, e in pairs])
    await refresh_rooms(uow, rooms_touched(uow, *rows))
    uow.target("assignment", None, count=len(rows))
    return AssignmentsCreated(created=await assignment_views(uow.conn, [r.id for r in rows]))


async def _locked(uow: UnitOfWork, assignment_id: UUID) -> tuple[Any, Any]:
    row = (await uow.conn.execute(select(_a).where(_a.c.id == assignment_id).with_for_update())).first()
    if row is None:
        raise NotFound("no such assignment")
    schedule = (await uow.conn.execute(select(_s).where(_s.c.id == row.room_schedule_id)
                                       .with_for_update(read=True))).one()
    return row, schedule


@registry.handles(UpdateAssignment)
async def update_assignment(cmd: UpdateAssignment, uow: UnitOfWork) -> AssignmentView:
    row, schedule = await _locked(uow, cmd.id)
    check_version(row, cmd.if_match)
    wanted = cmd.patch.is_active
    if isinstance(wanted, bool) and wanted != row.is_active:
        if wanted and schedule.status not in OPEN:
            raise Conflict(f"the schedule is {schedule.status}", code="schedule_not_open")
        if wanted:
            await check_employees(uow.conn, [row.employee_id], ["employeeId"])
        try:
            row = (await uow.conn.execute(
                update(_a).where(_a.c.id == row.id)
                .values(is_active=wanted, updated_at=uow.now, version=_a.c.version + 1).returning(_a)
            )).one()
        except IntegrityError as exc:
            raise assignment_integrity(exc) from exc
        uow.emit(assignment_event(AssignmentUpdated, row))
        uow.target("assignment", row.id, changedFields=["isActive"])
        await refresh_rooms(uow, rooms_touched(uow, row))
    return (await assignment_views(uow.conn, [row.id]))[0]


@registry.handles(RemoveAssignment)
async def remove_assignment(cmd: RemoveAssignment, uow: UnitOfWork) -> None:
    """Before the shift starts the assignment is deleted; from then on it is only deactivated, so
    the record of who was on a started shift stays."""
    row, schedule = await _locked(uow, cmd.id)
    check_version(row, cmd.if_match)
    if schedule.status == ScheduleStatus.SCHEDULED.value and schedule.starts_at > uow.now:
        await uow.conn.execute(delete(_a).where(_a.c.id == row.id))
        uow.emit(assignment_event(AssignmentDeleted, row, version=row.version + 1))
    elif row.is_active:  # the record of who worked a started shift stays
        row = (await uow.conn.execute(
            update(_a).where(_a.c.id == row.id)
            .values(is_active=False, updated_at=uow.now, version=_a.c.version + 1).returning(_a)
        )).one()
        uow.emit(assignment_event(AssignmentUpdated, row))
    await refresh_rooms(uow, rooms_touched(uow, row))
    return None
