"""Room schedules one at a time (users.md §2, §5): create, change, delete, cancel, end. The reads are in
`schedule_reads`; bulk operations and the conflict check in `schedule_batch`; template runs and copy-week in
`schedule_runs`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from contracts.errors import Conflict, NotFound, check_version, reference_error
from contracts.scheduling import (
    AssignmentDeleted,
    AssignmentUpdated,
    CancelRoomSchedule,
    CreateRoomSchedule,
    DeleteRoomSchedule,
    EndRoomSchedule,
    RoomScheduleCancelled,
    RoomScheduleCompleted,
    RoomScheduleDeleted,
    RoomScheduleStarted,
    RoomScheduleUpdated,
    RoomScheduleView,
    ScheduleStatus,
    UpdateRoomSchedule,
)
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.schedule_rules import (
    Planned,
    find_conflicts,
    insert_assignments,
    insert_schedules,
    load_templates,
    plan_input,
    plan_times,
    schedule_integrity,
)
from workers.users.handlers.schedule_support import (
    assignment_event,
    check_employees,
    conflicts_error,
    field_errors,
    invalid,
    invalid_transition,
    load_rooms,
    refresh_rooms,
    room_usable,
    schedule_detail,
    schedule_event,
    schedule_views,
    touches,
    unavailable_detail,
)
from workers.users.queries import camel
from workers.users.tables import assignments, room_schedules

_s, _a = room_schedules, assignments
END_SKEW = timedelta(minutes=1)  # an early end "at" may be this far ahead of the worker's clock


async def usable_room(uow: UnitOfWork, room_id: Any, field: str = "roomId") -> Any:
    room = (await load_rooms(uow.conn, [room_id], share=True)).get(room_id)
    if room is None:
        raise reference_error(field, "invalid_reference", "no such room")
    if not room_usable(room):
        raise Conflict(unavailable_detail(room), code="room_unavailable", field=field)
    return room


@registry.handles(CreateRoomSchedule)
async def create_room_schedule(cmd: CreateRoomSchedule, uow: UnitOfWork) -> RoomScheduleView:
    templates = await load_templates(uow.conn, {cmd.shift_template_id} - {None})
    planned, errors = plan_input(uow, cmd, None, "", templates)
    if planned is None:
        raise field_errors(errors)
    await usable_room(uow, cmd.room_id)
    people = planned.employee_ids
    await check_employees(uow.conn, people, [f"employeeIds/{i}" for i in range(len(people))])
    conflicts = await find_conflicts(uow.conn, [planned])
    if conflicts:
        raise conflicts_error(conflicts)
    [row] = await insert_schedules(uow, [planned])
    if planned.employee_ids:
        await insert_assignments(uow, [(row, e) for e in planned.employee_ids])
        if touches(uow.now, row.starts_at, row.ends_at):
            await refresh_rooms(uow, [row.room_id])
    uow.target("room_schedule", row.id)
    return (await schedule_views(uow.conn, [row.id]))[0]


async def locked_schedule(uow: UnitOfWork, schedule_id: Any) -> Any:
    row = (await uow.conn.execute(select(_s).where(_s.c.id == schedule_id).with_for_update())).first()
    if row is None:
        raise NotFound("no such room schedule")
    return row


async def active_employees(uow: UnitOfWork, schedule_id: Any) -> list[Any]:
    return list((await uow.conn.execute(select(_a.c.employee_id).where(_a.c.room_schedule_id == schedule_id,
                                                                      _a.c.is_active))).scalars())


async def plan_change(uow: UnitOfWork, row: Any, patch: Any, prefix: str = "") -> tuple[dict[str, Any], Planned | None]:
    """The new column values of a schedule under a merge patch, and (when its room or times move)
    the candidate to check. Raises 422 for bad input, 409 when it is no longer `scheduled`."""
    if patch.status is not msgspec.UNSET:
        raise invalid(f"{prefix}status", "use_transition", "status moves only by /cancel, /end and the timer")
    if row.status != ScheduleStatus.SCHEDULED.value:
        raise invalid_transition(row.status, "scheduled", f"a {row.status} schedule cannot be changed")
    values: dict[str, Any] = {}
    if patch.overtime_hours is not msgspec.UNSET:
        values["overtime_hours"] = round(patch.overtime_hours, 2)
    if patch.notes is not msgspec.UNSET:
        values["notes"] = patch.notes
    template = None
    if patch.shift_template_id is not msgspec.UNSET:
        values["shift_template_id"] = patch.shift_template_id
        if patch.shift_template_id is not None:
            template = (await load_templates(uow.conn, {patch.shift_template_id})).get(patch.shift_template_id)
            if template is None or template.deleted_at is not None:
                raise reference_error(f"{prefix}shiftTemplateId", "invalid_reference", "no such shift template")
            if not template.is_active:
                raise reference_error(f"{prefix}shiftTemplateId", "inactive_reference", "the shift template is "
                                      "not active")
    start = patch.start_time if patch.start_time is not msgspec.UNSET else (None if template else row.start_time)
    end = patch.end_time if patch.end_time is not msgspec.UNSET else (None if template else row.end_time)
    work_date = patch.work_date if patch.work_date is not msgspec.UNSET else row.work_date
    room_id = patch.room_id if patch.room_id is not msgspec.UNSET else row.room_id
    overnight = None if patch.overnight is msgspec.UNSET else patch.overnight
    times, errors = plan_times(uow, prefix=prefix, work_date=work_date, start=start, end=end, overnight=overnight,
                               template=template, allow_past=patch.allow_past, check_past=False)
    if times is None:
        raise field_errors(errors)
    start_t, end_t, starts_at, ends_at = times
    moved = (room_id, starts_at, ends_at) != (row.room_id, row.starts_at, row.ends_at)
    if moved and starts_at < uow.now and not patch.allow_past:
        raise invalid(f"{prefix}workDate", "schedule_in_past",
                            "the shift would start in the past; set allowPast=true to record it")
    values.update(room_id=room_id, work_date=work_date, start_time=start_t, end_time=end_t, starts_at=starts_at,
                  ends_at=ends_at)
    values = {k: v for k, v in values.items() if getattr(row, k) != v}
    if not moved:
        return values, None
    return values, Planned(index=None, room_id=room_id, work_date=work_date, start_time=start_t, end_time=end_t,
                           starts_at=starts_at, ends_at=ends_at, schedule_id=row.id,
                           employee_ids=await active_employees(uow, row.id))


async def apply_change(uow: UnitOfWork, row: Any, values: dict[str, Any], moved: bool) -> Any:
    """Write a planned change; the assignments move with their schedule."""
    try:
        new = (await uow.conn.execute(
            update(_s).where(_s.c.id == row.id)
            .values(**values, updated_at=uow.now, version=_s.c.version + 1).returning(_s)
        )).one()
        if moved:
            for a in (await uow.conn.execute(
                update(_a).where(_a.c.room_schedule_id == row.id)
                .values(room_id=new.room_id, starts_at=new.starts_at, ends_at=new.ends_at, updated_at=uow.now,
                        version=_a.c.version + 1).returning(_a)
            )).all():
                uow.emit(assignment_event(AssignmentUpdated, a))
    except IntegrityError as exc:
        raise schedule_integrity(exc) from exc
    uow.emit(schedule_event(RoomScheduleUpdated, new))
    return new


def rooms_touched(uow: UnitOfWork, *rows: Any) -> list[Any]:
    return [r.room_id for r in rows if touches(uow.now, r.starts_at, r.ends_at)]


@registry.handles(UpdateRoomSchedule)
async def update_room_schedule(cmd: UpdateRoomSchedule, uow: UnitOfWork) -> RoomScheduleView:
    row = await locked_schedule(uow, cmd.id)
    check_version(row, cmd.if_match)
    values, planned = await plan_change(uow, row, cmd.patch)
    if planned is not None:
        if planned.room_id != row.room_id:
            await usable_room(uow, planned.room_id)
        conflicts = await find_conflicts(uow.conn, [planned], moving=[row.id])
        if conflicts:
            raise conflicts_error(conflicts)
    if values:
        new = await apply_change(uow, row, values, planned is not None)
        uow.target("room_schedule", row.id, changedFields=[camel(k) for k in values])
        if planned is not None:
            await refresh_rooms(uow, rooms_touched(uow, row, new))
    return await schedule_detail(uow.conn, row.id)


async def delete_schedules(uow: UnitOfWork, rows: list[Any]) -> None:
    """Remove schedules and their assignments, with an event for each."""
    ids = [r.id for r in rows]
    for a in (await uow.conn.execute(delete(_a).where(_a.c.room_schedule_id.in_(ids)).returning(_a))).all():
        uow.emit(assignment_event(AssignmentDeleted, a, version=a.version + 1))
    await uow.conn.execute(delete(_s).where(_s.c.id.in_(ids)))
    for r in rows:
        uow.emit(schedule_event(RoomScheduleDeleted, r, version=r.version + 1))
    await refresh_rooms(uow, rooms_touched(uow, *rows))


@registry.handles(DeleteRoomSchedule)
async def delete_room_schedule(cmd: DeleteRoomSchedule, uow: UnitOfWork) -> None:
    row = await locked_schedule(uow, cmd.id)
    check_version(row, cmd.if_match)
    if row.status != ScheduleStatus.SCHEDULED.value:
        raise invalid_transition(row.status, "deleted", f"a {row.status} schedule cannot be deleted; cancel or end it")
    await delete_schedules(uow, [row])
    return None


@registry.handles(CancelRoomSchedule)
async def cancel_room_schedule(cmd: CancelRoomSchedule, uow: UnitOfWork) -> RoomScheduleView:
    row = await locked_schedule(uow, cmd.id)
    check_version(row, cmd.if_match)
    if row.status != ScheduleStatus.SCHEDULED.value:
        raise invalid_transition(row.status, ScheduleStatus.CANCELLED)
    if row.starts_at <= uow.now:
        raise invalid_transition(row.status, ScheduleStatus.CANCELLED,
                                 "the shift has already started; end it instead")
    new = (await uow.conn.execute(
        update(_s).where(_s.c.id == row.id)
        .values(status=ScheduleStatus.CANCELLED.value, cancel_reason=cmd.reason, updated_at=uow.now,
                version=_s.c.version + 1).returning(_s)
    )).one()
    for a in (await uow.conn.execute(
        update(_a).where(_a.c.room_schedule_id == row.id, _a.c.is_active)
        .values(is_active=False, updated_at=uow.now, version=_a.c.version + 1).returning(_a)
    )).all():
        uow.emit(assignment_event(AssignmentUpdated, a))
    uow.emit(schedule_event(RoomScheduleCancelled, new))
    return await schedule_detail(uow.conn, row.id)


@registry.handles(EndRoomSchedule)
async def end_room_schedule(cmd: EndRoomSchedule, uow: UnitOfWork) -> RoomScheduleView:
    row = await locked_schedule(uow, cmd.id)
    check_version(row, cmd.if_match)
    started = row.status == ScheduleStatus.IN_PROGRESS.value
    due = row.status == ScheduleStatus.SCHEDULED.value and row.starts_at <= uow.now
    if not (started or due):
        raise invalid_transition(row.status, ScheduleStatus.COMPLETED,
                                 "only a shift that has started can be ended" if row.status == "scheduled" else "")
    at = cmd.at or min(uow.now, row.ends_at)
    if not (row.starts_at <= at <= row.ends_at) or at > uow.now + END_SKEW:
        raise invalid("at", "out_of_range", "at must lie within the shift and not in the future")
    version = row.version
    if due:  # the timer has not seen it start yet: both steps, two events
        version += 1
        uow.emit(schedule_event(RoomScheduleStarted, row, status=ScheduleStatus.IN_PROGRESS, version=version))
    new = (await uow.conn.execute(
        update(_s).where(_s.c.id == row.id)
        .values(status=ScheduleStatus.COMPLETED.value, actual_end_at=at, updated_at=uow.now, version=version + 1)
        .returning(_s)
    )).one()
    # The assignments end when the shift did, so the people are free for another room from then on.
    for a in (await uow.conn.execute(
        update(_a).where(_a.c.room_schedule_id == row.id, _a.c.ends_at > at)
        .values(ends_at=at, updated_at=uow.now, version=_a.c.version + 1).returning(_a)
    )).all():
        uow.emit(assignment_event(AssignmentUpdated, a))
    uow.emit(schedule_event(RoomScheduleCompleted, new))
    await refresh_rooms(uow, [row.room_id])
    return await schedule_detail(uow.conn, row.id)
