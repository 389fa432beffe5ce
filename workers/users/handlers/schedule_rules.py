"""Planning schedules: input → validated instants, every conflict of a set of candidates, and the
writes whose overlaps the database refuses (exclusion constraints; the reads here only explain)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.errors import Conflict, FieldError
from contracts.scheduling import AssignmentCreated, ConflictItem, RoomScheduleCreated, ScheduleInput
from workers.runtime.db import constraint_of
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers.schedule_support import (
    business_today,
    clinic_zone,
    overlaps,
    parse_time,
    room_usable,
    schedule_event,
    shift_bounds,
    unavailable_detail,
)
from workers.users.tables import assignments, room_schedules, shift_templates

PAST_YEARS, FUTURE_YEARS = 5, 2  # sanity bounds of a work date around today
_CHUNK = 500


@dataclass(slots=True)
class Planned:
    """One schedule as it will be written (or checked)."""

    index: int | None
    room_id: UUID
    work_date: date
    start_time: time
    end_time: time
    starts_at: datetime
    ends_at: datetime
    template_id: UUID | None = None
    overtime_hours: float = 0.0
    notes: str | None = None
    employee_ids: list[UUID] = field(default_factory=list)
    schedule_id: UUID | None = None  # an existing schedule being moved (it never collides with itself)
    source_id: UUID | None = None  # copy-week: the schedule being copied
    new_id: UUID = field(default_factory=uuid4)

    def item(self, code: str, detail: str, **more: Any) -> ConflictItem:
        return ConflictItem(code=code, detail=detail, index=self.index, schedule_id=self.schedule_id,
                            source_schedule_id=self.source_id, room_id=self.room_id, work_date=self.work_date,
                            starts_at=self.starts_at, ends_at=self.ends_at, **more)


async def load_templates(conn: AsyncConnection, ids: set[UUID]) -> dict[UUID, Any]:
    if not ids:
        return {}
    rows = (await conn.execute(select(shift_templates).where(shift_templates.c.id.in_(ids)))).all()
    return {row.id: row for row in rows}


def plan_times(uow: UnitOfWork, *, prefix: str, work_date: date, start: str | time | None, end: str | time | None,
               overnight: bool | None, template: Any, allow_past: bool, check_past: bool = True
               ) -> tuple[tuple[time, time, datetime, datetime] | None, list[FieldError]]:
    """Times from the input, else the template; validated (users.md §2): both present, different,
    agreeing with `overnight` when it is stated, a sane date, not in the past unless allowed."""
    errors: list[FieldError] = []
    start_t = parse_time(start) if isinstance(start, str) else start
    end_t = parse_time(end) if isinstance(end, str) else end
    if template is not None:
        start_t = template.start_time if start_t is None else start_t
        end_t = template.end_time if end_t is None else end_t
    if start_t is None:
        errors.append(FieldError(f"{prefix}startTime", "required", "give startTime or a shiftTemplateId"))
    if end_t is None:
        errors.append(FieldError(f"{prefix}endTime", "required", "give endTime or a shiftTemplateId"))
    tz = clinic_zone(uow)
    today = business_today(uow.now, tz)
    if not today - timedelta(days=366 * PAST_YEARS) <= work_date <= today + timedelta(days=366 * FUTURE_YEARS):
        errors.append(FieldError(f"{prefix}workDate", "out_of_range",
                                 f"workDate must be within {PAST_YEARS} years back and {FUTURE_YEARS} ahead"))
    if errors or start_t is None or end_t is None:
        return None, errors
    if start_t == end_t:
        errors.append(FieldError(f"{prefix}endTime", "invalid_time_range", "endTime must differ from startTime"))
    elif overnight is False and end_t < start_t:
        errors.append(FieldError(f"{prefix}endTime", "end_before_start",
                                 "endTime is before startTime; set overnight=true for a shift ending the next day"))
    elif overnight is True and end_t > start_t:
        errors.append(FieldError(f"{prefix}overnight", "not_overnight",
                                 "overnight=true needs an endTime not after startTime"))
    if errors:
        return None, errors
    starts_at, ends_at = shift_bounds(work_date, start_t, end_t, tz)
    if ends_at <= starts_at:  # a daylight-saving jump can swallow a short shift
        return None, [FieldError(f"{prefix}endTime", "invalid_time_range", "the shift has no length on that day")]
    if check_past and starts_at < uow.now and not allow_past:
        return None, [FieldError(f"{prefix}workDate", "schedule_in_past",
                                 "the shift starts in the past; set allowPast=true to record it")]
    return (start_t, end_t, starts_at, ends_at), []


def plan_input(uow: UnitOfWork, item: ScheduleInput, index: int | None, prefix: str,
               templates: dict[UUID, Any]) -> tuple[Planned | None, list[FieldError]]:
    template = None
    if item.shift_template_id is not None:
        template = templates.get(item.shift_template_id)
        if template is None or template.deleted_at is not None:
            return None, [FieldError(f"{prefix}shiftTemplateId", "invalid_reference", "no such shift template")]
        if not template.is_active:
            return None, [FieldError(f"{prefix}shiftTemplateId", "inactive_reference",
                                     "the shift template is not active")]
    times, errors = plan_times(uow, prefix=prefix, work_date=item.work_date, start=item.start_time,
                               end=item.end_time, overnight=item.overnight, template=template,
                               allow_past=item.allow_past)
    if times is None:
        return None, errors
    start_t, end_t, starts_at, ends_at = times
    return Planned(index=index, room_id=item.room_id, work_date=item.work_date, start_time=start_t, end_time=end_t,
                   starts_at=starts_at, ends_at=ends_at, template_id=item.shift_template_id,
                   overtime_hours=round(item.overtime_hours, 2), notes=item.notes,
                   employee_ids=list(dict.fromkeys(item.employee_ids))), []


def room_conflicts(planned: Sequence[Planned], rooms_by_id: dict[UUID, Any]) -> list[ConflictItem]:
    """409 room_unavailable for candidates in a room in maintenance or inactive."""
    out = []
    for p in planned:
        room = rooms_by_id.get(p.room_id)
        if room is not None and not room_usable(room):
            out.append(p.item("room_unavailable", unavailable_detail(room)))
    return out


_ROOM_OVERLAPS = """
SELECT c.k, s.id, s.starts_at, s.ends_at
FROM unnest($1::int[], $2::uuid[], $3::timestamptz[], $4::timestamptz[]) AS c(k, room_id, starts_at, ends_at)
JOIN users.room_schedules s ON s.room_id = c.room_id AND s.status <> 'cancelled'
 AND tstzrange(s.starts_at, s.ends_at, '[)') && tstzrange(c.starts_at, c.ends_at, '[)')
WHERE NOT (s.id = ANY($5::uuid[]))
ORDER BY c.k, s.starts_at
"""

EMPLOYEE_OVERLAPS_SQL = """
SELECT c.k, c.employee_id, a.id, a.room_schedule_id
FROM unnest($1::int[], $2::uuid[], $3::timestamptz[], $4::timestamptz[]) AS c(k, employee_id, starts_at, ends_at)
JOIN users.employee_room_assignments a ON a.employee_id = c.employee_id AND a.is_active
 AND tstzrange(a.starts_at, a.ends_at, '[)') && tstzrange(c.starts_at, c.ends_at, '[)')
WHERE NOT (a.room_schedule_id = ANY($5::uuid[]))
ORDER BY c.k, a.starts_at
"""


async def stored_overlaps(conn: AsyncConnection, planned: Sequence[Planned], moving: Sequence[UUID] = ()
                          ) -> list[Any]:
    """(position in `planned`, id, startsAt, endsAt) of every stored schedule a candidate overlaps."""
    return list((await conn.exec_driver_sql(_ROOM_OVERLAPS, (
        list(range(len(planned))), [p.room_id for p in planned], [p.starts_at for p in planned],
        [p.ends_at for p in planned], list(moving)))).all())


async def find_conflicts(conn: AsyncConnection, planned: Sequence[Planned], moving: Sequence[UUID] = ()
                         ) -> list[ConflictItem]:
    """Every overlap of the candidates: with stored schedules of the same room and with each other
    (`schedule_overlap`), and of their employees with stored active assignments and with each
    other (`employee_double_booked`). `moving`: stored schedules these candidates replace."""
    out: list[ConflictItem] = []
    skip = list(moving)
    for k, other_id, other_start, other_end in await stored_overlaps(conn, planned, skip):
        p = planned[k]
        out.append(p.item("schedule_overlap", f"the room already has a schedule from {other_start.isoformat()} "
                                              f"to {other_end.isoformat()}", conflicting_schedule_id=other_id))
    by_room: dict[UUID, list[int]] = defaultdict(list)
    for k, p in enumerate(planned):
        for j in by_room[p.room_id]:
            q = planned[j]
            if overlaps(p.starts_at, p.ends_at, q.starts_at, q.ends_at):
                out.append(p.item("schedule_overlap", "overlaps another item of this request in the same room",
                                  conflicting_index=q.index))
                break
        by_room[p.room_id].append(k)
    pairs = [(k, e) for k, p in enumerate(planned) for e in p.employee_ids]
    if pairs:
        rows = (await conn.exec_driver_sql(EMPLOYEE_OVERLAPS_SQL, (
            [k for k, _ in pairs], [e for _, e in pairs], [planned[k].starts_at for k, _ in pairs],
            [planned[k].ends_at for k, _ in pairs], skip))).all()
        for k, employee_id, assignment_id, schedule_id in rows:
            out.append(planned[k].item("employee_double_booked", "the employee is already assigned at that time",
                                       employee_id=employee_id, conflicting_assignment_id=assignment_id,
                                       conflicting_schedule_id=schedule_id))
        by_employee: dict[UUID, list[int]] = defaultdict(list)
        for k, employee_id in pairs:
            p = planned[k]
            for j in by_employee[employee_id]:
                q = planned[j]
                if overlaps(p.starts_at, p.ends_at, q.starts_at, q.ends_at):
                    out.append(p.item("employee_double_booked", "the employee is in another item of this request "
                                      "at that time", employee_id=employee_id, conflicting_index=q.index))
                    break
            by_employee[employee_id].append(k)
    return out


def schedule_integrity(exc: IntegrityError) -> Conflict:
    """A race the reads could not see, refused by the database."""
    if constraint_of(exc) == "ex_room_schedules_overlap":
        return Conflict("the room already has a schedule at that time", code="schedule_overlap")
    return assignment_integrity(exc)


def assignment_integrity(exc: IntegrityError) -> Conflict:
    name = constraint_of(exc)
    if name == "ex_assignment_employee_overlap":
        return Conflict("the employee is already assigned at that time", code="employee_double_booked",
                        field="employeeId")
    if name == "uq_assignment_schedule_employee":
        return Conflict("the employee is already on this schedule", code="already_exists", field="employeeId")
    if name == "ex_room_schedules_overlap":
        return Conflict("the room already has a schedule at that time", code="schedule_overlap")
    raise exc


def _schedule_row(uow: UnitOfWork, p: Planned) -> dict[str, Any]:
    return {"id": p.new_id, "room_id": p.room_id, "shift_template_id": p.template_id, "work_date": p.work_date,
            "start_time": p.start_time, "end_time": p.end_time, "starts_at": p.starts_at, "ends_at": p.ends_at,
            "overtime_hours": p.overtime_hours, "notes": p.notes, "created_by": uow.actor_id,
            "created_at": uow.now, "updated_at": uow.now}


async def insert_schedules(uow: UnitOfWork, planned: Sequence[Planned], *, skip_overlaps: bool = False
                           ) -> list[Any]:
    """Write the candidates and publish `room_schedule.created` for each. All or nothing (an
    overlap raises 409), or with `skip_overlaps` every overlapping one is left out (`ON CONFLICT
    DO NOTHING` against the exclusion constraint: the database decides, concurrency included)."""
    written: list[Any] = []
    for start in range(0, len(planned), _CHUNK):
        chunk = [_schedule_row(uow, p) for p in planned[start:start + _CHUNK]]
        stmt = pg_insert(room_schedules).values(chunk)
        if skip_overlaps:
            stmt = stmt.on_conflict_do_nothing()
        try:
            written += (await uow.conn.execute(stmt.returning(room_schedules))).all()
        except IntegrityError as exc:
            raise schedule_integrity(exc) from exc
    for row in written:
        uow.emit(schedule_event(RoomScheduleCreated, row))
    return written


async def insert_assignments(uow: UnitOfWork, pairs: Sequence[tuple[Any, UUID]], *, skip_conflicts: bool = False
                             ) -> list[Any]:
    """Assign (schedule row, employee) pairs; the range and room are copied from the schedule.
    All or nothing, or with `skip_conflicts` whatever the constraints refuse is left out."""
    from workers.users.handlers.schedule_support import assignment_event

    written: list[Any] = []
    for start in range(0, len(pairs), _CHUNK):
        chunk = [{"room_schedule_id": s.id, "employee_id": e, "room_id": s.room_id, "starts_at": s.starts_at,
                  "ends_at": s.ends_at, "created_by": uow.actor_id, "created_at": uow.now, "updated_at": uow.now}
                 for s, e in pairs[start:start + _CHUNK]]
        stmt = pg_insert(assignments).values(chunk)
        if skip_conflicts:
            stmt = stmt.on_conflict_do_nothing()
        try:
            written += (await uow.conn.execute(stmt.returning(assignments))).all()
        except IntegrityError as exc:
            raise assignment_integrity(exc) from exc
    for row in written:
        uow.emit(assignment_event(AssignmentCreated, row))
    return written


async def explain_skipped_assignments(conn: AsyncConnection, skipped: Sequence[tuple[Any, UUID]],
                                      item_of: Any) -> list[ConflictItem]:
    """Why each (schedule, employee) pair was left out: already on it, or busy elsewhere."""
    if not skipped:
        return []
    existing = set((await conn.execute(
        select(assignments.c.room_schedule_id, assignments.c.employee_id)
        .where(tuple_(assignments.c.room_schedule_id, assignments.c.employee_id).in_([(s.id, e) for s, e in skipped]))
    )).tuples().all())
    out: list[ConflictItem] = []
    rest = [(s, e) for s, e in skipped if (s.id, e) not in existing]
    for s, e in skipped:
        if (s.id, e) in existing:
            out.append(item_of(s, "already_exists", "the employee is already on this schedule", employee_id=e))
    if rest:
        rows = (await conn.exec_driver_sql(EMPLOYEE_OVERLAPS_SQL, (
            list(range(len(rest))), [e for _, e in rest], [s.starts_at for s, _ in rest],
            [s.ends_at for s, _ in rest], []))).all()
        found: dict[int, tuple[UUID, UUID]] = {}
        for k, _, assignment_id, schedule_id in rows:
            found.setdefault(k, (assignment_id, schedule_id))
        for k, (s, e) in enumerate(rest):
            a_id, s_id = found.get(k, (None, None))
            out.append(item_of(s, "employee_double_booked", "the employee is already assigned at that time",
                               employee_id=e, conflicting_assignment_id=a_id, conflicting_schedule_id=s_id))
    return out
