"""Room schedules in batches of up to 200 (users.md §4): create, change and delete all or nothing
(409 lists every conflict), and the conflict check that writes nothing."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from contracts.errors import Conflict, FieldError, Invalid
from contracts.scheduling import (
    AssignmentUpdated,
    BulkCreateRoomSchedules,
    BulkDeleteRoomSchedules,
    BulkUpdateRoomSchedules,
    CheckScheduleConflicts,
    ConflictItem,
    ConflictReport,
    RoomScheduleUpdated,
    SchedulesCreated,
    SchedulesDeleted,
    ScheduleStatus,
    SchedulesUpdated,
)
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.room_schedules import delete_schedules, plan_change, rooms_touched
from workers.users.handlers.schedule_rules import (
    Planned,
    find_conflicts,
    insert_assignments,
    insert_schedules,
    load_templates,
    plan_input,
    room_conflicts,
    schedule_integrity,
)
from workers.users.handlers.schedule_support import (
    assignment_event,
    check_employees,
    conflicts_error,
    employee_problems,
    field_errors,
    load_rooms,
    refresh_rooms,
    schedule_event,
    schedule_views,
)
from workers.users.tables import assignments, room_schedules

_s, _a = room_schedules, assignments


def _missing_rooms(planned: list[Planned], rooms: dict[UUID, Any]) -> list[FieldError]:
    return [FieldError(f"items/{p.index}/roomId", "invalid_reference", "no such room")
            for p in planned if p.room_id not in rooms]


@registry.handles(BulkCreateRoomSchedules)
async def bulk_create_room_schedules(cmd: BulkCreateRoomSchedules, uow: UnitOfWork) -> SchedulesCreated:
    templates = await load_templates(uow.conn, {i.shift_template_id for i in cmd.items} - {None})
    planned: list[Planned] = []
    errors: list[FieldError] = []
    for i, item in enumerate(cmd.items):
        p, problems = plan_input(uow, item, i, f"items/{i}/", templates)
        errors += problems
        if p is not None:
            planned.append(p)
    rooms = await load_rooms(uow.conn, {p.room_id for p in planned}, share=True)
    errors += _missing_rooms(planned, rooms)
    if errors:
        raise field_errors(errors)
    await check_employees(uow.conn, [e for p in planned for e in p.employee_ids],
                          [f"items/{p.index}/employeeIds/{j}" for p in planned for j in range(len(p.employee_ids))])
    conflicts = room_conflicts(planned, rooms) + await find_conflicts(uow.conn, planned)
    if conflicts:
        raise conflicts_error(conflicts)
    rows = {r.id: r for r in await insert_schedules(uow, planned)}
    pairs = [(rows[p.new_id], e) for p in planned for e in p.employee_ids]
    await insert_assignments(uow, pairs)
    await refresh_rooms(uow, rooms_touched(uow, *{s.id: s for s, _ in pairs}.values()))
    uow.target("room_schedule", None, count=len(rows))
    return SchedulesCreated(created=await schedule_views(uow.conn, [p.new_id for p in planned]))


async def _locked_many(uow: UnitOfWork, ids: list[UUID]) -> dict[UUID, Any]:
    rows = (await uow.conn.execute(select(_s).where(_s.c.id.in_(ids)).order_by(_s.c.id).with_for_update())).all()
    return {r.id: r for r in rows}


def _duplicates(ids: list[UUID], field: str) -> list[FieldError]:
    seen: set[UUID] = set()
    out = []
    for i, value in enumerate(ids):
        if value in seen:
            out.append(FieldError(field.format(i=i), "duplicate", "named twice in this request"))
        seen.add(value)
    return out


@registry.handles(BulkUpdateRoomSchedules)
async def bulk_update_room_schedules(cmd: BulkUpdateRoomSchedules, uow: UnitOfWork) -> SchedulesUpdated:
    ids = [item.id for item in cmd.items]
    errors = _duplicates(ids, "items/{i}/id")
    rows = await _locked_many(uow, ids)
    errors += [FieldError(f"items/{i}/id", "invalid_reference", "no such room schedule")
               for i, sid in enumerate(ids) if sid not in rows]
    if errors:
        raise field_errors(errors)
    conflicts: list[ConflictItem] = []
    changes: list[tuple[Any, dict[str, Any], Planned | None]] = []
    for i, item in enumerate(cmd.items):
        row = rows[item.id]
        try:
            values, planned = await plan_change(uow, row, item, f"items/{i}/")
        except Invalid as exc:
            errors += exc.errors or [FieldError(exc.field or f"items/{i}", exc.code, exc.detail)]
            continue
        except Conflict as exc:
            conflicts.append(ConflictItem(code=exc.code, detail=exc.detail, index=i, schedule_id=row.id,
                                          room_id=row.room_id, work_date=row.work_date))
            continue
        if planned is not None:
            planned.index = i
        changes.append((row, values, planned))
    if errors:
        raise field_errors(errors)
    moving = [p for _, _, p in changes if p is not None]
    rooms = await load_rooms(uow.conn, {p.room_id for p in moving}, share=True)
    missing = [FieldError(f"items/{p.index}/roomId", "invalid_reference", "no such room")
               for p in moving if p.room_id not in rooms]
    if missing:
        raise field_errors(missing)
    conflicts += [c for c in room_conflicts(moving, rooms)
                  if rows[ids[c.index or 0]].room_id != c.room_id]  # a room's state binds only new schedules
    conflicts += await find_conflicts(uow.conn, moving, moving=[p.schedule_id for p in moving if p.schedule_id])
    if conflicts:
        raise conflicts_error(conflicts)
    moved_ids = [p.schedule_id for p in moving]
    active: set[UUID] = set()
    try:
        if moved_ids:  # out of the constraints first, so that schedules may trade places within the batch
            await uow.conn.execute(update(_s).where(_s.c.id.in_(moved_ids))
                                   .values(status=ScheduleStatus.CANCELLED.value))
            active = set((await uow.conn.execute(
                update(_a).where(_a.c.room_schedule_id.in_(moved_ids), _a.c.is_active).values(is_active=False)
                .returning(_a.c.id))).scalars())
        new_rows = []
        for row, values, planned in changes:
            if not values and planned is None:
                continue
            new = (await uow.conn.execute(
                update(_s).where(_s.c.id == row.id)
                .values(**values, status=ScheduleStatus.SCHEDULED.value, updated_at=uow.now,
                        version=_s.c.version + 1).returning(_s))).one()
            new_rows.append(new)
            uow.emit(schedule_event(RoomScheduleUpdated, new))
        if moved_ids:  # the assignments follow their schedules, the active ones back in the constraint
            for a in (await uow.conn.execute(
                update(_a).where(_a.c.room_schedule_id.in_(moved_ids), _a.c.room_schedule_id == _s.c.id)
                .values(room_id=_s.c.room_id, starts_at=_s.c.starts_at, ends_at=_s.c.ends_at,
                        is_active=_a.c.id.in_(active) if active else False, updated_at=uow.now,
                        version=_a.c.version + 1)
                .returning(*_a.c))).all():
                uow.emit(assignment_event(AssignmentUpdated, a))
    except IntegrityError as exc:
        raise schedule_integrity(exc) from exc
    await refresh_rooms(uow, rooms_touched(uow, *[rows[p.schedule_id] for p in moving if p.schedule_id], *new_rows))
    uow.target("room_schedule", None, count=len(new_rows))
    return SchedulesUpdated(updated=await schedule_views(uow.conn, list(dict.fromkeys(ids))))


@registry.handles(BulkDeleteRoomSchedules)
async def bulk_delete_room_schedules(cmd: BulkDeleteRoomSchedules, uow: UnitOfWork) -> SchedulesDeleted:
    ids = list(dict.fromkeys(cmd.ids))
    rows = await _locked_many(uow, ids)
    errors = [FieldError(f"ids/{i}", "invalid_reference", "no such room schedule")
              for i, sid in enumerate(cmd.ids) if sid not in rows]
    if errors:
        raise field_errors(errors)
    conflicts = [ConflictItem(code="invalid_transition", detail=f"a {rows[sid].status} schedule cannot be deleted",
                              index=i, schedule_id=sid, room_id=rows[sid].room_id, work_date=rows[sid].work_date)
                 for i, sid in enumerate(cmd.ids) if rows[sid].status != ScheduleStatus.SCHEDULED.value]
    if conflicts:
        raise conflicts_error(conflicts)
    await delete_schedules(uow, [rows[i] for i in ids])
    uow.target("room_schedule", None, count=len(ids))
    return SchedulesDeleted(deleted=ids)


@registry.handles(CheckScheduleConflicts)
async def check_schedule_conflicts(q: CheckScheduleConflicts, uow: UnitOfWork) -> ConflictReport:
    """What a bulk create (or a move of existing schedules, items with `id`) would refuse."""
    templates = await load_templates(uow.conn, {i.shift_template_id for i in q.items} - {None})
    conflicts: list[ConflictItem] = []
    planned: list[Planned] = []
    for i, item in enumerate(q.items):
        p, problems = plan_input(uow, item, i, f"items/{i}/", templates)
        for e in problems:
            conflicts.append(ConflictItem(code=e.code, detail=e.detail, index=i, room_id=item.room_id,
                                          work_date=item.work_date, schedule_id=item.id))
        if p is None:
            continue
        p.schedule_id = item.id
        if item.id is not None:  # the people on it move with it
            current = (await uow.conn.execute(select(_a.c.employee_id).where(
                _a.c.room_schedule_id == item.id, _a.c.is_active))).scalars().all()
            p.employee_ids = list(dict.fromkeys([*p.employee_ids, *current]))
        planned.append(p)
    rooms = await load_rooms(uow.conn, {p.room_id for p in planned})
    for p in planned:
        if p.room_id not in rooms:
            conflicts.append(p.item("invalid_reference", "no such room"))
    planned = [p for p in planned if p.room_id in rooms]
    pairs = [(p, e) for p in planned for e in p.employee_ids]
    for problem in await employee_problems(uow.conn, [e for _, e in pairs], [str(k) for k in range(len(pairs))]):
        p, employee_id = pairs[int(problem.field)]
        conflicts.append(p.item(problem.code, problem.detail, employee_id=employee_id))
    conflicts += room_conflicts(planned, rooms)
    conflicts += await find_conflicts(uow.conn, planned, moving=[p.schedule_id for p in planned if p.schedule_id])
    conflicts.sort(key=lambda c: (c.index if c.index is not None else -1))
    return ConflictReport(has_conflicts=bool(conflicts), conflicts=conflicts)

