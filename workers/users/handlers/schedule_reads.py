"""Room schedules, the reads (users.md §4): lists, "mine", availability of rooms and staff, stats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import DateTime, exists, func, literal, or_, select

from contracts.common import Page, Role
from contracts.errors import BadRequest, Forbidden
from contracts.organisation import room_status
from contracts.scheduling import (
    AvailableEmployees,
    AvailableRoom,
    AvailableRooms,
    GetRoomSchedule,
    ListMySchedules,
    ListRoomSchedules,
    RoomScheduleStats,
    RoomScheduleView,
    ScheduleStats,
    ScheduleStatus,
    Window,
)
from contracts.users import UserSummary
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.schedule_support import (
    business_today,
    clinic_zone,
    parse_time,
    schedule_detail,
    schedule_select,
    schedule_view,
    shift_bounds,
    tstzrange,
)
from workers.users.queries import user_summary
from workers.users.tables import DIRECTORY_SEARCH, assignments, room_schedules, rooms, users

_s, _a, _r, _u = room_schedules, assignments, rooms, users
_SORT = {"startsAt": _s.c.starts_at, "workDate": _s.c.work_date, "createdAt": _s.c.created_at}
_ROOM_SORT = {"code": _r.c.code, "floor": _r.c.floor, "type": _r.c.type}
_EMPLOYEE_SORT = {"lastName": _u.c.last_name, "username": _u.c.username, "createdAt": _u.c.created_at}


def employee_filter(employee_id: Any) -> Any:
    """Schedules an employee works: an active assignment, or any on a cancelled schedule (so a
    cancelled shift still shows to the people who were on it)."""
    return exists().where(_a.c.room_schedule_id == _s.c.id, _a.c.employee_id == employee_id,
                          or_(_a.c.is_active, _s.c.status == ScheduleStatus.CANCELLED.value))


def _filtered(stmt: Any, q: Any) -> Any:
    if getattr(q, "room_id", None) is not None:
        stmt = stmt.where(_s.c.room_id == q.room_id)
    if getattr(q, "department_id", None) is not None:
        stmt = stmt.where(_r.c.department_id == q.department_id)
    if getattr(q, "shift_template_id", None) is not None:
        stmt = stmt.where(_s.c.shift_template_id == q.shift_template_id)
    if getattr(q, "status", None):
        stmt = stmt.where(_s.c.status.in_([s.value for s in q.status]))
    if q.date_from is not None:
        stmt = stmt.where(_s.c.work_date >= q.date_from)
    if q.date_to is not None:
        stmt = stmt.where(_s.c.work_date <= q.date_to)
    return stmt


async def _page(uow: UnitOfWork, stmt: Any, q: Any) -> Page[RoomScheduleView]:
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "startsAt", _s.c.id)
    return Page(items=[schedule_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(ListRoomSchedules)
async def list_room_schedules(q: ListRoomSchedules, uow: UnitOfWork) -> Page[RoomScheduleView]:
    stmt = _filtered(schedule_select(), q)
    if q.employee_id is not None:
        stmt = stmt.where(employee_filter(q.employee_id))
    return await _page(uow, stmt, q)


@registry.handles(ListMySchedules)
async def list_my_schedules(q: ListMySchedules, uow: UnitOfWork) -> Page[RoomScheduleView]:
    if q.date_from is None and q.date_to is None:
        today = business_today(uow.now, clinic_zone(uow))
        monday = today - timedelta(days=today.weekday())
        q = msgspec.structs.replace(q, date_from=monday, date_to=monday + timedelta(days=6))
    stmt = _filtered(schedule_select(), q).where(employee_filter(uow.actor_id))
    return await _page(uow, stmt, q)


@registry.handles(GetRoomSchedule)
async def get_room_schedule(q: GetRoomSchedule, uow: UnitOfWork) -> RoomScheduleView:
    return await schedule_detail(uow.conn, q.id)


def window_of(uow: UnitOfWork, q: Window) -> tuple[Any, Any]:
    """`startsAt`+`endsAt`, or `date`+`startTime`+`endTime` in the clinic time zone."""
    if q.starts_at is not None and q.ends_at is not None:
        starts, ends = q.starts_at, q.ends_at
    elif q.date is not None and q.start_time is not None and q.end_time is not None:
        start, end = parse_time(q.start_time), parse_time(q.end_time)
        if start == end:
            raise BadRequest("endTime must differ from startTime", code="invalid_filter", field="endTime")
        starts, ends = shift_bounds(q.date, start, end, clinic_zone(uow))
    else:
        raise BadRequest("give startsAt and endsAt, or date, startTime and endTime", code="invalid_filter",
                         field="startsAt")
    if ends <= starts:
        raise BadRequest("endsAt must be after startsAt", code="invalid_filter", field="endsAt")
    return starts, ends


def _overlapping(table: Any, starts: Any, ends: Any) -> Any:
    window = func.tstzrange(literal(starts, DateTime(timezone=True)), literal(ends, DateTime(timezone=True)))
    return tstzrange(table).op("&&")(window)


@registry.handles(AvailableRooms)
async def available_rooms(q: AvailableRooms, uow: UnitOfWork) -> Page[AvailableRoom]:
    starts, ends = window_of(uow, q)
    busy = exists().where(_s.c.room_id == _r.c.id, _s.c.status != ScheduleStatus.CANCELLED.value,
                          _overlapping(_s, starts, ends))
    stmt = select(_r).where(_r.c.deleted_at.is_(None), _r.c.is_active, _r.c.status != "maintenance", ~busy)
    if q.department_id is not None:
        stmt = stmt.where(_r.c.department_id == q.department_id)
    if q.type:
        stmt = stmt.where(_r.c.type.in_(q.type))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _ROOM_SORT, "code", _r.c.id)
    items = [AvailableRoom(id=r.id, code=r.code, type=r.type, department_id=r.department_id, floor=r.floor,
                           capacity=r.capacity, status=room_status(r.status, r.on_duty_count, r.capacity).value,
                           on_duty_count=r.on_duty_count) for r in rows]
    return Page(items=items, total=total, page=q.page, limit=q.limit, total_is_lower_bound=lower)


@registry.handles(AvailableEmployees)
async def available_employees(q: AvailableEmployees, uow: UnitOfWork) -> Page[UserSummary]:
    starts, ends = window_of(uow, q)
    busy = exists().where(_a.c.employee_id == _u.c.id, _a.c.is_active, _overlapping(_a, starts, ends))
    stmt = select(_u).where(_u.c.deleted_at.is_(None), _u.c.is_active, _u.c.role != Role.SYSTEM_ADMIN.value, ~busy)
    if q.role:
        stmt = stmt.where(_u.c.role.in_([r.value for r in q.role]))
    if q.department_id is not None:
        stmt = stmt.where(_u.c.department_id == q.department_id)
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(DIRECTORY_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(DIRECTORY_SEARCH)))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _EMPLOYEE_SORT, "lastName", _u.c.id)
    return Page(items=[user_summary(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(RoomScheduleStats)
async def room_schedule_stats(q: RoomScheduleStats, uow: UnitOfWork) -> ScheduleStats:
    employee_id = q.employee_id
    if uow.actor.role != Role.SYSTEM_ADMIN:
        if employee_id is None:
            employee_id = uow.actor_id
        elif employee_id != uow.actor_id:
            raise Forbidden("only administrators see other people's statistics", code="not_owner")
    planned = func.extract("epoch", _s.c.ends_at - _s.c.starts_at)
    worked = func.extract("epoch", func.coalesce(_s.c.actual_end_at, _s.c.ends_at) - _s.c.starts_at)
    stmt = select(_s.c.status, func.count(), func.sum(planned), func.sum(worked), func.sum(_s.c.overtime_hours))
    stmt = _filtered(stmt.select_from(_s), q).group_by(_s.c.status)
    if employee_id is not None:
        stmt = stmt.where(employee_filter(employee_id))
    by_status = {s.value: 0 for s in ScheduleStatus}
    scheduled = worked_s = overtime = 0.0
    for status, count, planned_s, worked_sum, overtime_sum in (await uow.conn.execute(stmt)).all():
        by_status[status] = count
        if status != ScheduleStatus.CANCELLED.value:
            scheduled += float(planned_s or 0)
            overtime += float(overtime_sum or 0)
        if status == ScheduleStatus.COMPLETED.value:
            worked_s += float(worked_sum or 0)
    return ScheduleStats(total=sum(by_status.values()), by_status=by_status, scheduled_hours=round(scheduled / 3600, 2),
                         worked_hours=round(worked_s / 3600, 2), overtime_hours=round(overtime, 2))
