"""Runs that create many schedules and keep going: a shift template over rooms and days (create
schedules, apply to employees) and copying a week. Each creates what it can and reports every
skipped item with its reason; overlaps are left out by the database (`ON CONFLICT DO NOTHING`
against the exclusion constraints), so concurrent runs can never double-book."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import select, tuple_

from contracts.errors import Conflict, FieldError, NotFound
from contracts.scheduling import (
    MAX_TEMPLATE_DAYS,
    ConflictItem,
    CopyScheduleWeek,
    CopyWeekResult,
    GenerateRoomSchedules,
    GenerationResult,
)
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.room_schedules import rooms_touched
from workers.users.handlers.schedule_rules import (
    Planned,
    explain_skipped_assignments,
    insert_assignments,
    insert_schedules,
    stored_overlaps,
)
from workers.users.handlers.schedule_support import (
    OPEN,
    assignment_views,
    check_employees,
    clinic_zone,
    field_errors,
    invalid,
    load_rooms,
    refresh_rooms,
    room_usable,
    schedule_views,
    shift_bounds,
    unavailable_detail,
)
from workers.users.tables import assignments, room_schedules, shift_templates, users

_s, _a, _t, _u = room_schedules, assignments, shift_templates, users


def _item_of(row: Any, code: str, detail: str, **more: Any) -> ConflictItem:
    return ConflictItem(code=code, detail=detail, schedule_id=row.id, room_id=row.room_id, work_date=row.work_date,
                        starts_at=row.starts_at, ends_at=row.ends_at, **more)


async def _explain_overlaps(uow: UnitOfWork, skipped: list[Planned]) -> list[ConflictItem]:
    """Why candidates were left out: the stored schedule they collide with (`already_exists` when it
    is the very same shift, else `schedule_overlap`)."""
    if not skipped:
        return []
    first: dict[int, tuple[Any, Any, Any]] = {}
    for k, other, starts_at, ends_at in await stored_overlaps(uow.conn, skipped):
        first.setdefault(k, (other, starts_at, ends_at))
    out: list[ConflictItem] = []
    for k, p in enumerate(skipped):
        other, starts_at, ends_at = first.get(k, (None, None, None))
        same = (starts_at, ends_at) == (p.starts_at, p.ends_at)
        out.append(p.item("already_exists" if same else "schedule_overlap",
                          "the same shift already exists" if same else "the room already has a schedule then",
                          conflicting_schedule_id=other))
    return out


@registry.handles(GenerateRoomSchedules)
async def generate_room_schedules(cmd: GenerateRoomSchedules, uow: UnitOfWork) -> GenerationResult:
    template = (await uow.conn.execute(select(_t).where(_t.c.id == cmd.id, _t.c.deleted_at.is_(None)))).first()
    if template is None:
        raise NotFound("no such shift template")
    if not template.is_active:
        raise Conflict("the shift template is not active", code="template_inactive")
    if cmd.date_to < cmd.date_from:
        raise invalid("dateTo", "out_of_range", "dateTo must not be before dateFrom")
    if (cmd.date_to - cmd.date_from).days + 1 > MAX_TEMPLATE_DAYS:
        raise invalid("dateTo", "out_of_range", f"at most {MAX_TEMPLATE_DAYS} days at a time")
    room_ids = list(dict.fromkeys(cmd.room_ids))
    rooms = await load_rooms(uow.conn, room_ids, share=True)
    missing = [FieldError(f"roomIds/{i}", "invalid_reference", "no such room")
               for i, r in enumerate(cmd.room_ids) if r not in rooms]
    if missing:
        raise field_errors(missing)
    employees = list(dict.fromkeys(cmd.employee_ids or []))
    await check_employees(uow.conn, employees, [f"employeeIds/{i}" for i in range(len(employees))])
    weekdays = set(cmd.weekdays or range(1, 8))
    tz = clinic_zone(uow)
    conflicts: list[ConflictItem] = []
    candidates: list[Planned] = []
    day = cmd.date_from
    while day <= cmd.date_to:
        if day.isoweekday() in weekdays:
            starts_at, ends_at = shift_bounds(day, template.start_time, template.end_time, tz)
            for room_id in room_ids:
                p = Planned(index=None, room_id=room_id, work_date=day, start_time=template.start_time,
                            end_time=template.end_time, starts_at=starts_at, ends_at=ends_at, template_id=template.id)
                if not room_usable(rooms[room_id]):
                    conflicts.append(p.item("room_unavailable", unavailable_detail(rooms[room_id])))
                elif starts_at < uow.now and not cmd.allow_past:
                    conflicts.append(p.item("schedule_in_past", "the shift would start in the past"))
                else:
                    candidates.append(p)
        day += timedelta(days=1)
    reused: list[Any] = []
    if employees and candidates:  # apply-to-employees: the template's shifts that already exist are used
        keys = [(p.room_id, p.starts_at, p.ends_at) for p in candidates]
        existing = {(r.room_id, r.starts_at, r.ends_at): r for r in (await uow.conn.execute(
            select(_s).where(_s.c.status.in_(OPEN), tuple_(_s.c.room_id, _s.c.starts_at, _s.c.ends_at).in_(keys))
        )).all()}
        reused = [existing[k] for k in keys if k in existing]
        candidates = [p for p, k in zip(candidates, keys, strict=True) if k not in existing]
    written = await insert_schedules(uow, candidates, skip_overlaps=True)
    done = {r.id for r in written}
    conflicts += await _explain_overlaps(uow, [p for p in candidates if p.new_id not in done])
    assigned: list[Any] = []
    if employees:
        targets = sorted([*written, *reused], key=lambda r: (r.starts_at, str(r.room_id)))
        pairs = [(s, e) for s in targets for e in employees]
        assigned = await insert_assignments(uow, pairs, skip_conflicts=True)
        made = {(a.room_schedule_id, a.employee_id) for a in assigned}
        conflicts += await explain_skipped_assignments(uow.conn, [(s, e) for s, e in pairs if (s.id, e) not in made],
                                                       _item_of)
        await refresh_rooms(uow, rooms_touched(uow, *targets))
    uow.target("shift_template", template.id, schedulesCreated=len(written), assignmentsCreated=len(assigned),
               skipped=len(conflicts))
    return GenerationResult(created=await schedule_views(uow.conn, [p.new_id for p in candidates if p.new_id in done]),
                            assigned=await assignment_views(uow.conn, [a.id for a in assigned]), conflicts=conflicts)


def _monday(value: date, field: str) -> None:
    if value.isoweekday() != 1:
        raise invalid(field, "not_a_monday", "a week starts on a Monday")


@registry.handles(CopyScheduleWeek)
async def copy_schedule_week(cmd: CopyScheduleWeek, uow: UnitOfWork) -> CopyWeekResult:
    _monday(cmd.from_week_start, "fromWeekStart")
    _monday(cmd.to_week_start, "toWeekStart")
    if cmd.from_week_start == cmd.to_week_start:
        raise invalid("toWeekStart", "same_week", "copy a week to another week")
    shift = cmd.to_week_start - cmd.from_week_start
    stmt = select(_s).where(_s.c.work_date.between(cmd.from_week_start, cmd.from_week_start + timedelta(days=6)),
                            _s.c.status != "cancelled").order_by(_s.c.starts_at, _s.c.room_id)
    if cmd.room_ids:
        stmt = stmt.where(_s.c.room_id.in_(cmd.room_ids))
    sources = (await uow.conn.execute(stmt)).all()
    rooms = await load_rooms(uow.conn, {s.room_id for s in sources}, share=True)
    tz = clinic_zone(uow)
    skipped: list[ConflictItem] = []
    candidates: list[Planned] = []
    for src in sources:
        work_date = src.work_date + shift
        starts_at, ends_at = shift_bounds(work_date, src.start_time, src.end_time, tz)
        p = Planned(index=None, room_id=src.room_id, work_date=work_date, start_time=src.start_time,
                    end_time=src.end_time, starts_at=starts_at, ends_at=ends_at, template_id=src.shift_template_id,
                    overtime_hours=float(src.overtime_hours), notes=src.notes, source_id=src.id)
        room = rooms.get(src.room_id)
        if room is None or not room_usable(room):
            skipped.append(p.item("room_unavailable", unavailable_detail(room) if room else "the room was deleted"))
        elif starts_at < uow.now:
            skipped.append(p.item("schedule_in_past", "the copy would start in the past"))
        else:
            candidates.append(p)
    written = {r.id: r for r in await insert_schedules(uow, candidates, skip_overlaps=True)}
    skipped += await _explain_overlaps(uow, [p for p in candidates if p.new_id not in written])
    copied = [p for p in candidates if p.new_id in written]
    made: list[Any] = []
    if cmd.include_assignments and copied:
        target_of: dict[UUID, Any] = {p.source_id: written[p.new_id] for p in copied if p.source_id}
        people = (await uow.conn.execute(
            select(_a.c.room_schedule_id, _a.c.employee_id, _u.c.is_active, _u.c.deleted_at, _u.c.role)
            .select_from(_a.join(_u, _u.c.id == _a.c.employee_id))
            .where(_a.c.room_schedule_id.in_(list(target_of)), _a.c.is_active)
            .order_by(_a.c.created_at, _a.c.id)
        )).all()
        pairs = []
        for person in people:
            target = target_of[person.room_schedule_id]
            if person.deleted_at is not None or not person.is_active:
                skipped.append(_item_of(target, "employee_unavailable", "the employee is disabled or deleted",
                                        employee_id=person.employee_id, source_schedule_id=person.room_schedule_id))
            else:
                pairs.append((target, person.employee_id))
        made = await insert_assignments(uow, pairs, skip_conflicts=True)
        done = {(a.room_schedule_id, a.employee_id) for a in made}
        skipped += await explain_skipped_assignments(uow.conn, [(s, e) for s, e in pairs if (s.id, e) not in done],
                                                     _item_of)
        await refresh_rooms(uow, rooms_touched(uow, *written.values()))
    uow.target("room_schedule", None, fromWeekStart=cmd.from_week_start.isoformat(),
               toWeekStart=cmd.to_week_start.isoformat(), created=len(written), skipped=len(skipped))
    return CopyWeekResult(created=await schedule_views(uow.conn, [p.new_id for p in copied]),
                          assignments_created=len(made), skipped=skipped)
