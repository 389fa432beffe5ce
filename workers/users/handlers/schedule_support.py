"""Shared by the scheduling handlers: clinic-time arithmetic, the reads behind every view, events,
and the room occupancy (`on_duty_count`) that assignments and schedule states move."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import Role, UserRef
from contracts.errors import Conflict, FieldError, Invalid, NotFound
from contracts.organisation import RoomUpdated
from contracts.scheduling import (
    AssignmentEventBase,
    AssignmentView,
    OnDutyView,
    RoomRef,
    RoomScheduleEventBase,
    RoomScheduleView,
    ScheduleBrief,
    ScheduleStatus,
    ShiftTemplateEventBase,
    ShiftTemplateRef,
    ShiftTemplateView,
    ShiftType,
)
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers.org_common import room_event
from workers.users.queries import display_name
from workers.users.tables import assignments, room_schedules, rooms, shift_templates, users

OPEN = (ScheduleStatus.SCHEDULED.value, ScheduleStatus.IN_PROGRESS.value)  # statuses that can be on duty


# ---------------------------------------------------------------- clinic time


@functools.cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def clinic_zone(uow: UnitOfWork) -> ZoneInfo:
    return zone(uow.settings.clinic_timezone)


def parse_time(value: str) -> time:
    """`HH:MM` or `HH:MM:SS` (the contract's pattern already checked the shape)."""
    parts = [int(p) for p in value.split(":")]
    return time(parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


def is_overnight(start: time, end: time) -> bool:
    return end <= start


def shift_bounds(work_date: date, start: time, end: time, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The absolute instants of a shift that starts on `work_date` (a business day) at `start`; it
    ends on the next day when `end` is not after `start`."""
    starts = datetime.combine(work_date, start, tzinfo=tz)
    ends = datetime.combine(work_date + timedelta(days=1) if is_overnight(start, end) else work_date, end, tzinfo=tz)
    return starts.astimezone(UTC), ends.astimezone(UTC)


def minutes_between(start: time, end: time) -> int:
    """Length of a shift from `start` to `end` (the next day when `end` ≤ `start`), in minutes."""
    a, b = start.hour * 60 + start.minute, end.hour * 60 + end.minute
    return b - a if b > a else b - a + 24 * 60


def business_today(now: datetime, tz: ZoneInfo) -> date:
    return now.astimezone(tz).date()


def overlaps(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    """Half-open ranges `[start, end)`: back-to-back shifts do not overlap."""
    return a_start < b_end and b_start < a_end


def tstzrange(table: Any) -> ColumnElement[Any]:
    """The exact range expression the exclusion constraints and gist indexes are built on."""
    return func.tstzrange(table.c.starts_at, table.c.ends_at, literal_column("'[)'"))


# ---------------------------------------------------------------- errors


def invalid_transition(current: str, target: str, detail: str = "") -> Conflict:
    return Conflict(detail or f"cannot go from {current} to {target}", code="invalid_transition",
                    currentState=current, targetState=target)


GENERIC_CODES = frozenset({"required", "too_short", "too_long", "out_of_range", "invalid_format", "invalid_enum",
                           "unknown_field"})


def field_errors(errors: list[FieldError]) -> Invalid:
    """One 422 carrying every field error of a request (bulk requests list them all). Its code is
    the domain rule's (`schedule_in_past`, `invalid_reference`, `use_transition`, …) when all the
    errors break the same rule, else `validation_failed` (spec README §5)."""
    first = errors[0]
    detail = first.detail if len(errors) == 1 else f"{len(errors)} fields are invalid; see errors"
    codes = {e.code for e in errors}
    code = first.code if len(codes) == 1 and first.code not in GENERIC_CODES else "validation_failed"
    return Invalid(detail, code=code, field=first.field, errors=errors)


def invalid(field: str, code: str, detail: str) -> Invalid:
    """422 for one field: a domain rule's code, or validation_failed for a generic one."""
    return field_errors([FieldError(field, code, detail)])


def conflicts_error(items: Sequence[Any], detail: str | None = None) -> Conflict:
    """409 naming every conflict (`conflicts`, in the order of the request's items); its code is
    the first one's (for one item: room state, then room overlaps, then employees)."""
    import msgspec

    items = sorted(items, key=lambda c: -1 if c.index is None else c.index)
    text = detail or (items[0].detail if len(items) == 1 else f"{len(items)} conflicts; see conflicts")
    return Conflict(text, code=items[0].code, conflicts=msgspec.to_builtins(list(items)))


# ---------------------------------------------------------------- shift templates


def template_view(row: Any) -> ShiftTemplateView:
    return ShiftTemplateView(
        id=row.id, name=row.name, shift_type=ShiftType(row.shift_type), start_time=row.start_time,
        end_time=row.end_time, break_start_time=row.break_start_time, break_end_time=row.break_end_time,
        overnight=is_overnight(row.start_time, row.end_time),
        duration_minutes=minutes_between(row.start_time, row.end_time), description=row.description,
        is_active=row.is_active, created_at=row.created_at, updated_at=row.updated_at, deleted_at=row.deleted_at,
        version=row.version,
    )


def template_event(kind: type[ShiftTemplateEventBase], row: Any) -> ShiftTemplateEventBase:
    return kind(shift_template_id=row.id, name=row.name, shift_type=ShiftType(row.shift_type),
                start_time=row.start_time, end_time=row.end_time, is_active=row.is_active, version=row.version)


# ---------------------------------------------------------------- reads behind the views

_s, _a, _r, _u, _t = room_schedules, assignments, rooms, users, shift_templates
_ROOM = [_r.c.code.label("room_code"), _r.c.type.label("room_type"),
         _r.c.department_id.label("room_department_id"), _r.c.floor.label("room_floor")]


def schedule_select() -> Select[Any]:
    active = (select(func.count()).select_from(_a)
              .where(_a.c.room_schedule_id == _s.c.id, _a.c.is_active).scalar_subquery())
    return (
        select(_s, *_ROOM, _t.c.name.label("template_name"), _t.c.shift_type.label("template_shift_type"),
               active.label("assignment_count"))
        .select_from(_s.join(_r, _r.c.id == _s.c.room_id).outerjoin(_t, _t.c.id == _s.c.shift_template_id))
    )


def assignment_select() -> Select[Any]:
    return (
        select(_a, *_ROOM, _s.c.shift_template_id.label("s_template_id"), _s.c.work_date.label("s_work_date"),
               _s.c.start_time.label("s_start_time"), _s.c.end_time.label("s_end_time"),
               _s.c.starts_at.label("s_starts_at"), _s.c.ends_at.label("s_ends_at"), _s.c.status.label("s_status"),
               _u.c.first_name, _u.c.last_name, _u.c.role.label("employee_role"), _u.c.username,
               _u.c.staff_number, _u.c.department_id.label("employee_department_id"),
               _u.c.is_active.label("employee_is_active"))
        .select_from(_a.join(_s, _s.c.id == _a.c.room_schedule_id).join(_r, _r.c.id == _a.c.room_id)
                     .join(_u, _u.c.id == _a.c.employee_id))
    )


def room_ref(row: Any) -> RoomRef:
    return RoomRef(id=row.room_id, code=row.room_code, type=row.room_type, department_id=row.room_department_id,
                   floor=row.room_floor)


def schedule_view(row: Any, assignment_views: list[AssignmentView] | None = None) -> RoomScheduleView:
    template = None
    if row.shift_template_id is not None and row.template_name is not None:
        template = ShiftTemplateRef(id=row.shift_template_id, name=row.template_name,
                                    shift_type=ShiftType(row.template_shift_type))
    return RoomScheduleView(
        id=row.id, room_id=row.room_id, room=room_ref(row), shift_template_id=row.shift_template_id,
        shift_template=template, work_date=row.work_date, start_time=row.start_time, end_time=row.end_time,
        overnight=is_overnight(row.start_time, row.end_time), starts_at=row.starts_at, ends_at=row.ends_at,
        status=ScheduleStatus(row.status), actual_end_at=row.actual_end_at,
        overtime_hours=float(row.overtime_hours), notes=row.notes, cancel_reason=row.cancel_reason,
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at, version=row.version,
        assignment_count=row.assignment_count, assignments=assignment_views,
    )


def schedule_brief(row: Any) -> ScheduleBrief:
    return ScheduleBrief(
        id=row.room_schedule_id, room_id=row.room_id, shift_template_id=row.s_template_id, work_date=row.s_work_date,
        start_time=row.s_start_time, end_time=row.s_end_time, overnight=is_overnight(row.s_start_time, row.s_end_time),
        starts_at=row.s_starts_at, ends_at=row.s_ends_at, status=ScheduleStatus(row.s_status),
    )


def assignment_view(row: Any) -> AssignmentView:
    return AssignmentView(
        id=row.id, room_schedule_id=row.room_schedule_id, employee_id=row.employee_id,
        employee=UserRef(id=row.employee_id, display_name=display_name(row), role=Role(row.employee_role)),
        room_id=row.room_id, room=room_ref(row), starts_at=row.starts_at, ends_at=row.ends_at,
        is_active=row.is_active, schedule=schedule_brief(row), created_by=row.created_by,
        created_at=row.created_at, updated_at=row.updated_at, version=row.version,
    )


def on_duty_view(row: Any) -> OnDutyView:
    return OnDutyView(
        id=row.employee_id, display_name=display_name(row), role=Role(row.employee_role), username=row.username,
        first_name=row.first_name, last_name=row.last_name, department_id=row.employee_department_id,
        staff_number=row.staff_number, is_active=row.employee_is_active, assignment=assignment_view(row),
        schedule=schedule_brief(row),
    )


async def schedule_views(conn: AsyncConnection, ids: Sequence[UUID]) -> list[RoomScheduleView]:
    """The views of these schedules, in the order of `ids`."""
    if not ids:
        return []
    views: dict[UUID, RoomScheduleView] = {}
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start:start + 1000])
        for row in (await conn.execute(schedule_select().where(_s.c.id.in_(chunk)))).all():
            views[row.id] = schedule_view(row)
    return [views[i] for i in ids if i in views]


async def schedule_detail(conn: AsyncConnection, schedule_id: UUID) -> RoomScheduleView:
    row = (await conn.execute(schedule_select().where(_s.c.id == schedule_id))).first()
    if row is None:
        raise NotFound("no such room schedule")
    rows = (await conn.execute(assignment_select().where(_a.c.room_schedule_id == schedule_id)
                               .order_by(_a.c.created_at, _a.c.id))).all()
    return schedule_view(row, [assignment_view(r) for r in rows])


async def assignment_views(conn: AsyncConnection, ids: Sequence[UUID]) -> list[AssignmentView]:
    if not ids:
        return []
    views: dict[UUID, AssignmentView] = {}
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start:start + 1000])
        for row in (await conn.execute(assignment_select().where(_a.c.id.in_(chunk)))).all():
            views[row.id] = assignment_view(row)
    return [views[i] for i in ids if i in views]


# ---------------------------------------------------------------- events


def schedule_event(kind: type[RoomScheduleEventBase], row: Any, *, status: str | None = None,
                   version: int | None = None) -> RoomScheduleEventBase:
    return kind(schedule_id=row.id, room_id=row.room_id, work_date=row.work_date, starts_at=row.starts_at,
                ends_at=row.ends_at, status=ScheduleStatus(status or row.status), version=version or row.version)


def assignment_event(kind: type[AssignmentEventBase], row: Any, *, version: int | None = None) -> AssignmentEventBase:
    return kind(assignment_id=row.id, schedule_id=row.room_schedule_id, employee_id=row.employee_id,
                room_id=row.room_id, starts_at=row.starts_at, ends_at=row.ends_at, is_active=row.is_active,
                version=version or row.version)


# ---------------------------------------------------------------- room occupancy

# Employees on duty in each room now (users.md §6), written where it changed.
_REFRESH_SQL = """
WITH counts AS (
    SELECT r.id, (
        SELECT count(DISTINCT a.employee_id)
        FROM users.employee_room_assignments a
        JOIN users.room_schedules s ON s.id = a.room_schedule_id
        JOIN users.users u ON u.id = a.employee_id
        WHERE a.room_id = r.id AND a.is_active AND tstzrange(a.starts_at, a.ends_at, '[)') @> $2::timestamptz
          AND s.status IN ('scheduled', 'in_progress') AND u.deleted_at IS NULL AND u.is_active
    ) AS n
    FROM users.rooms r WHERE r.id = ANY($1::uuid[])
)
UPDATE users.rooms r SET on_duty_count = c.n, updated_at = $2, version = r.version + 1
FROM counts c WHERE r.id = c.id AND r.on_duty_count <> c.n
RETURNING r.id, r.code, r.type, r.department_id, r.status, r.capacity, r.on_duty_count, r.is_active, r.version
"""

_STALE_SQL = """
SELECT r.id FROM users.rooms r
WHERE r.on_duty_count <> (
    SELECT count(DISTINCT a.employee_id)
    FROM users.employee_room_assignments a
    JOIN users.room_schedules s ON s.id = a.room_schedule_id
    JOIN users.users u ON u.id = a.employee_id
    WHERE a.room_id = r.id AND a.is_active AND tstzrange(a.starts_at, a.ends_at, '[)') @> $1::timestamptz
      AND s.status IN ('scheduled', 'in_progress') AND u.deleted_at IS NULL AND u.is_active
)
"""


def touches(now: datetime, starts_at: datetime, ends_at: datetime) -> bool:
    """Whether a change to a shift `[starts_at, ends_at)` can change who is on duty now."""
    return starts_at <= now < ends_at


async def refresh_rooms(uow: UnitOfWork, room_ids: Iterable[UUID]) -> int:
    """Recompute `on_duty_count` of these rooms and publish `users.room.updated` for each that
    changed. The rows are locked first (in id order), so the count is read after any concurrent
    change of the same room has committed: two transactions can never both write a stale count."""
    ids = sorted({i for i in room_ids if i is not None}, key=str)
    if not ids:
        return 0
    await uow.conn.execute(select(_r.c.id).where(_r.c.id.in_(ids)).order_by(_r.c.id).with_for_update())
    rows = (await uow.conn.exec_driver_sql(_REFRESH_SQL, (ids, uow.now))).all()
    for row in rows:
        uow.emit(room_event(RoomUpdated, row))
    return len(rows)


async def refresh_stale_rooms(uow: UnitOfWork) -> int:
    """The timer's sweep: every room whose stored count differs from who is on duty now."""
    stale = (await uow.conn.exec_driver_sql(_STALE_SQL, (uow.now,))).scalars().all()
    return await refresh_rooms(uow, stale)


# ---------------------------------------------------------------- references


async def load_rooms(conn: AsyncConnection, ids: Iterable[UUID], *, share: bool = False) -> dict[UUID, Any]:
    """Live rooms by id; `share` holds them against a concurrent change of state (maintenance,
    deactivation) until this transaction ends."""
    wanted = sorted(set(ids), key=str)
    if not wanted:
        return {}
    stmt = (select(_r.c.id, _r.c.code, _r.c.status, _r.c.is_active, _r.c.capacity)
            .where(_r.c.id.in_(wanted), _r.c.deleted_at.is_(None)).order_by(_r.c.id))
    if share:
        stmt = stmt.with_for_update(read=True)
    return {row.id: row for row in (await conn.execute(stmt)).all()}


def room_usable(row: Any) -> bool:
    return bool(row.is_active) and row.status != "maintenance"


def unavailable_detail(row: Any) -> str:
    return f"room {row.code} is {'in maintenance' if row.status == 'maintenance' else 'inactive'}"


async def employee_problems(conn: AsyncConnection, ids: Sequence[UUID], fields: Sequence[str]) -> list[FieldError]:
    """What is wrong with employees named in a body: not live (invalid_reference), disabled
    (inactive_reference), an administrator (`not_assignable`)."""
    if not ids:
        return []
    rows = {row.id: row for row in (await conn.execute(
        select(_u.c.id, _u.c.is_active, _u.c.role).where(_u.c.id.in_(set(ids)), _u.c.deleted_at.is_(None))
    )).all()}
    errors: list[FieldError] = []
    for employee_id, field in zip(ids, fields, strict=True):
        row = rows.get(employee_id)
        if row is None:
            errors.append(FieldError(field=field, code="invalid_reference", detail="no such user"))
        elif not row.is_active:
            errors.append(FieldError(field=field, code="inactive_reference", detail="the user is disabled"))
        elif row.role == Role.SYSTEM_ADMIN:
            errors.append(FieldError(field=field, code="not_assignable",
                                     detail="system administrators are not assigned to rooms"))
    return errors


async def check_employees(conn: AsyncConnection, ids: Sequence[UUID], fields: Sequence[str]) -> None:
    """422 naming every employee of a body who cannot be assigned."""
    from contracts.errors import reference_error

    errors = await employee_problems(conn, ids, fields)
    if len(errors) == 1:
        e = errors[0]
        raise reference_error(e.field, e.code, e.detail)
    if errors:
        raise Invalid(f"{len(errors)} employees cannot be assigned; see errors", code="invalid_reference",
                      field=errors[0].field, errors=errors)
