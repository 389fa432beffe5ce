"""Routes of the users domain: shift templates, room schedules, employee room assignments, who is on duty
(users.md §4). Literal segments (`/mine`, `/bulk`, `/current`) win over `/{id}`: ids are typed uuid."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from uuid import UUID

from litestar import Request, delete, get, patch, post
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.scheduling import (
    AssignEmployee,
    AssignmentPatch,
    AssignmentsCreated,
    AssignmentView,
    AvailableEmployees,
    AvailableRoom,
    AvailableRooms,
    BulkAssignEmployees,
    BulkCreateRoomSchedules,
    BulkDeleteRoomSchedules,
    BulkUpdateRoomSchedules,
    CancelRoomSchedule,
    CheckScheduleConflicts,
    ConflictReport,
    CopyScheduleWeek,
    CopyWeekResult,
    CreateRoomSchedule,
    CreateShiftTemplate,
    CurrentAssignments,
    DeleteRoomSchedule,
    DeleteShiftTemplate,
    DuplicateShiftTemplate,
    EmployeeIds,
    EndRoomSchedule,
    GenerateRoomSchedules,
    GenerationResult,
    GetAssignment,
    GetRoomSchedule,
    GetShiftTemplate,
    Instant,
    ListAssignments,
    ListMySchedules,
    ListRoomSchedules,
    ListShiftTemplates,
    OnDutyView,
    Reason,
    RemoveAssignment,
    RestoreShiftTemplate,
    RoomOnDuty,
    RoomSchedulePatch,
    RoomScheduleStats,
    RoomScheduleView,
    SchedulesCreated,
    SchedulesDeleted,
    ScheduleStats,
    SchedulesUpdated,
    ShiftTemplatePatch,
    ShiftTemplateView,
    TemplateName,
    UpdateAssignment,
    UpdateRoomSchedule,
    UpdateShiftTemplate,
    Weekday,
)
from contracts.users import UserSummary
from edge.access import ADM, RCP, roles, staff
from edge.bus import if_match, send
from edge.queries import documented, parse_query

TEMPLATES, SCHEDULES, ASSIGNMENTS, ROOMS = ["shift-templates"], ["room-schedules"], ["employee-room-assignments"], \
    ["rooms"]
Weekdays = Annotated[list[Weekday], Meta(max_length=7)]


class DuplicateBody(Struct):
    name: TemplateName


class CreateSchedulesBody(Struct):
    room_ids: Annotated[list[UUID], Meta(min_length=1, max_length=100)]
    date_from: date
    date_to: date
    weekdays: Weekdays | None = None
    allow_past: bool = False


class ApplyTemplateBody(Struct):
    room_id: UUID
    employee_ids: Annotated[EmployeeIds, Meta(min_length=1)]
    date_from: date
    date_to: date
    weekdays: Weekdays | None = None
    allow_past: bool = False


class CancelBody(Struct):
    reason: Reason | None = None


class EndBody(Struct):
    at: Instant | None = None


# ---------------------------------------------------------------- shift templates


@get("/shift-templates", operation_id="ListShiftTemplates", opt=staff(), tags=TEMPLATES,
     operation_class=documented(ListShiftTemplates), summary="Shift templates; q, shiftType, isActive")
async def list_shift_templates(request: Request) -> Page[ShiftTemplateView]:
    return await send(request, parse_query(request, ListShiftTemplates))  # type: ignore[return-value]


@get("/shift-templates/{template_id:uuid}", operation_id="GetShiftTemplate", opt=staff(), tags=TEMPLATES,
     summary="One shift template")
async def get_shift_template(request: Request, template_id: UUID) -> ShiftTemplateView:
    return await send(request, GetShiftTemplate(id=template_id), etag=True)  # type: ignore[return-value]


@post("/shift-templates", operation_id="CreateShiftTemplate", opt=roles(ADM), tags=TEMPLATES,
      summary="Create a shift template (endTime ≤ startTime = ends the next day)")
async def create_shift_template(request: Request, data: CreateShiftTemplate) -> ShiftTemplateView:
    return await send(request, data, status=201, location="/shift-templates", etag=True)  # type: ignore[return-value]


@patch("/shift-templates/{template_id:uuid}", operation_id="UpdateShiftTemplate", opt=roles(ADM), tags=TEMPLATES,
       summary="Change a shift template (merge patch)")
async def update_shift_template(request: Request, template_id: UUID, data: ShiftTemplatePatch) -> ShiftTemplateView:
    cmd = UpdateShiftTemplate(id=template_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/shift-templates/{template_id:uuid}", operation_id="DeleteShiftTemplate", opt=roles(ADM), tags=TEMPLATES,
        summary="Soft-delete a shift template; its schedules stay")
async def delete_shift_template(request: Request, template_id: UUID) -> None:
    await send(request, DeleteShiftTemplate(id=template_id, if_match=if_match(request)), empty=True)


@post("/shift-templates/{template_id:uuid}/restore", operation_id="RestoreShiftTemplate", opt=roles(ADM),
      tags=TEMPLATES, status_code=200, summary="Restore a deleted shift template")
async def restore_shift_template(request: Request, template_id: UUID) -> ShiftTemplateView:
    return await send(request, RestoreShiftTemplate(id=template_id), etag=True)  # type: ignore[return-value]


@post("/shift-templates/{template_id:uuid}/duplicate", operation_id="DuplicateShiftTemplate", opt=roles(ADM),
      tags=TEMPLATES, summary="Copy a template under a new name")
async def duplicate_shift_template(request: Request, template_id: UUID, data: DuplicateBody) -> ShiftTemplateView:
    cmd = DuplicateShiftTemplate(id=template_id, name=data.name)
    return await send(request, cmd, status=201, location="/shift-templates", etag=True)  # type: ignore[return-value]


@post("/shift-templates/{template_id:uuid}/create-schedules", operation_id="CreateSchedulesFromTemplate",
      opt=roles(ADM), tags=TEMPLATES, status_code=200,
      summary="The template's shift in rooms over dates (≤ 62 days) and weekdays → created, conflicts")
async def create_schedules(request: Request, template_id: UUID, data: CreateSchedulesBody) -> GenerationResult:
    cmd = GenerateRoomSchedules(id=template_id, room_ids=data.room_ids, date_from=data.date_from,
                                date_to=data.date_to, weekdays=data.weekdays, allow_past=data.allow_past)
    return await send(request, cmd)  # type: ignore[return-value]


@post("/shift-templates/{template_id:uuid}/apply-to-employees", operation_id="ApplyShiftTemplate", opt=roles(ADM),
      tags=TEMPLATES, status_code=200,
      summary="Create the missing schedules of a room, then assign the employees → created, assigned, conflicts")
async def apply_to_employees(request: Request, template_id: UUID, data: ApplyTemplateBody) -> GenerationResult:
    cmd = GenerateRoomSchedules(id=template_id, room_ids=[data.room_id], date_from=data.date_from,
                                date_to=data.date_to, weekdays=data.weekdays, employee_ids=data.employee_ids,
                                allow_past=data.allow_past)
    return await send(request, cmd)  # type: ignore[return-value]


# ---------------------------------------------------------------- room schedules


@get("/room-schedules", operation_id="ListRoomSchedules", opt=staff(), tags=SCHEDULES,
     operation_class=documented(ListRoomSchedules),
     summary="Schedules; roomId, employeeId (me), departmentId, status, dateFrom, dateTo; sort startsAt")
async def list_room_schedules(request: Request) -> Page[RoomScheduleView]:
    q = parse_query(request, ListRoomSchedules, me=("employeeId",))
    return await send(request, q)  # type: ignore[return-value]


@get("/room-schedules/mine", operation_id="MyRoomSchedules", opt=staff(), tags=SCHEDULES,
     operation_class=documented(ListMySchedules), summary="The caller's schedules (default: this week)")
async def my_schedules(request: Request) -> Page[RoomScheduleView]:
    return await send(request, parse_query(request, ListMySchedules))  # type: ignore[return-value]


@get("/room-schedules/available-rooms", operation_id="AvailableRooms", opt=roles(ADM, RCP), tags=SCHEDULES,
     operation_class=documented(AvailableRooms),
     summary="Rooms with no schedule in a window: startsAt+endsAt or date+startTime+endTime")
async def available_rooms(request: Request) -> Page[AvailableRoom]:
    return await send(request, parse_query(request, AvailableRooms))  # type: ignore[return-value]


@get("/room-schedules/available-employees", operation_id="AvailableEmployees", opt=roles(ADM), tags=SCHEDULES,
     operation_class=documented(AvailableEmployees), summary="Staff with no assignment in a window")
async def available_employees(request: Request) -> Page[UserSummary]:
    return await send(request, parse_query(request, AvailableEmployees))  # type: ignore[return-value]


@get("/room-schedules/stats", operation_id="RoomScheduleStats", opt=staff(), tags=SCHEDULES,
     operation_class=documented(RoomScheduleStats),
     summary="Counts by status, hours, overtime (ADM; others only for themselves)")
async def schedule_stats(request: Request) -> ScheduleStats:
    q = parse_query(request, RoomScheduleStats, me=("employeeId",))
    return await send(request, q)  # type: ignore[return-value]


@get("/room-schedules/{schedule_id:uuid}", operation_id="GetRoomSchedule", opt=staff(), tags=SCHEDULES,
     summary="One schedule with its assignments")
async def get_room_schedule(request: Request, schedule_id: UUID) -> RoomScheduleView:
    return await send(request, GetRoomSchedule(id=schedule_id), etag=True)  # type: ignore[return-value]


@post("/room-schedules", operation_id="CreateRoomSchedule", opt=roles(ADM), tags=SCHEDULES,
      summary="Create a schedule (times from the template unless given), optionally with employees")
async def create_room_schedule(request: Request, data: CreateRoomSchedule) -> RoomScheduleView:
    return await send(request, data, status=201, location="/room-schedules", etag=True)  # type: ignore[return-value]


@post("/room-schedules/bulk", operation_id="BulkCreateRoomSchedules", opt=roles(ADM), tags=SCHEDULES,
      summary="Up to 200 schedules, all or nothing; 409 lists every conflict")
async def bulk_create(request: Request, data: BulkCreateRoomSchedules) -> SchedulesCreated:
    return await send(request, data, status=201)  # type: ignore[return-value]


@post("/room-schedules/bulk-update", operation_id="BulkUpdateRoomSchedules", opt=roles(ADM), tags=SCHEDULES,
      status_code=200, summary="Change up to 200 schedules, all or nothing; 409 lists every conflict")
async def bulk_update(request: Request, data: BulkUpdateRoomSchedules) -> SchedulesUpdated:
    return await send(request, data)  # type: ignore[return-value]


@post("/room-schedules/bulk-delete", operation_id="BulkDeleteRoomSchedules", opt=roles(ADM), tags=SCHEDULES,
      status_code=200, summary="Delete up to 200 scheduled schedules, all or nothing")
async def bulk_delete(request: Request, data: BulkDeleteRoomSchedules) -> SchedulesDeleted:
    return await send(request, data)  # type: ignore[return-value]


@post("/room-schedules/check-conflicts", operation_id="CheckScheduleConflicts", opt=roles(ADM), tags=SCHEDULES,
      status_code=200, summary="The conflicts candidate schedules would meet; writes nothing")
async def check_conflicts(request: Request, data: CheckScheduleConflicts) -> ConflictReport:
    return await send(request, data)  # type: ignore[return-value]


@post("/room-schedules/copy-week", operation_id="CopyScheduleWeek", opt=roles(ADM), tags=SCHEDULES,
      status_code=200, summary="Copy a week (Mondays) to another → created, skipped with reasons")
async def copy_week(request: Request, data: CopyScheduleWeek) -> CopyWeekResult:
    return await send(request, data)  # type: ignore[return-value]


@patch("/room-schedules/{schedule_id:uuid}", operation_id="UpdateRoomSchedule", opt=roles(ADM), tags=SCHEDULES,
       summary="Change a schedule while scheduled (merge patch); its assignments move with it")
async def update_room_schedule(request: Request, schedule_id: UUID, data: RoomSchedulePatch) -> RoomScheduleView:
    cmd = UpdateRoomSchedule(id=schedule_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/room-schedules/{schedule_id:uuid}", operation_id="DeleteRoomSchedule", opt=roles(ADM), tags=SCHEDULES,
        summary="Delete a scheduled schedule and its assignments")
async def delete_room_schedule(request: Request, schedule_id: UUID) -> None:
    await send(request, DeleteRoomSchedule(id=schedule_id, if_match=if_match(request)), empty=True)


@post("/room-schedules/{schedule_id:uuid}/cancel", operation_id="CancelRoomSchedule", opt=roles(ADM),
      tags=SCHEDULES, status_code=200, summary="scheduled → cancelled before it starts; assignments deactivated")
async def cancel_room_schedule(request: Request, schedule_id: UUID, data: CancelBody | None = None
                               ) -> RoomScheduleView:
    cmd = CancelRoomSchedule(id=schedule_id, reason=data.reason if data else None, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@post("/room-schedules/{schedule_id:uuid}/end", operation_id="EndRoomSchedule", opt=roles(ADM), tags=SCHEDULES,
      status_code=200, summary="in_progress → completed now or at `at`; sets actualEndAt")
async def end_room_schedule(request: Request, schedule_id: UUID, data: EndBody | None = None) -> RoomScheduleView:
    cmd = EndRoomSchedule(id=schedule_id, at=data.at if data else None, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


# ---------------------------------------------------------------- assignments


@get("/employee-room-assignments", operation_id="ListAssignments", opt=staff(), tags=ASSIGNMENTS,
     operation_class=documented(ListAssignments),
     summary="Assignments; roomScheduleId, employeeId (me), roomId, date, isActive")
async def list_assignments(request: Request) -> Page[AssignmentView]:
    return await send(request, parse_query(request, ListAssignments, me=("employeeId",)))  # type: ignore[return-value]


@get("/employee-room-assignments/current", operation_id="CurrentAssignments", opt=staff(), tags=ASSIGNMENTS,
     summary="The caller's assignments active now, with room and schedule")
async def current_assignments(request: Request) -> list[AssignmentView]:
    return await send(request, CurrentAssignments())  # type: ignore[return-value]


@get("/employee-room-assignments/{assignment_id:uuid}", operation_id="GetAssignment", opt=staff(),
     tags=ASSIGNMENTS, summary="One assignment")
async def get_assignment(request: Request, assignment_id: UUID) -> AssignmentView:
    return await send(request, GetAssignment(id=assignment_id), etag=True)  # type: ignore[return-value]


@post("/employee-room-assignments", operation_id="AssignEmployee", opt=roles(ADM), tags=ASSIGNMENTS,
      summary="Put an employee on a schedule; 409 employee_double_booked when busy then")
async def assign_employee(request: Request, data: AssignEmployee) -> AssignmentView:
    return await send(request, data, status=201, location="/employee-room-assignments",  # type: ignore[return-value]
                      etag=True)


@post("/employee-room-assignments/bulk", operation_id="BulkAssignEmployees", opt=roles(ADM), tags=ASSIGNMENTS,
      summary="Up to 200 assignments, all or nothing; 409 lists every conflict")
async def bulk_assign(request: Request, data: BulkAssignEmployees) -> AssignmentsCreated:
    return await send(request, data, status=201)  # type: ignore[return-value]


@patch("/employee-room-assignments/{assignment_id:uuid}", operation_id="UpdateAssignment", opt=roles(ADM),
       tags=ASSIGNMENTS, summary="Activate or deactivate an assignment")
async def update_assignment(request: Request, assignment_id: UUID, data: AssignmentPatch) -> AssignmentView:
    cmd = UpdateAssignment(id=assignment_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/employee-room-assignments/{assignment_id:uuid}", operation_id="RemoveAssignment", opt=roles(ADM),
        tags=ASSIGNMENTS, summary="Delete while the schedule is scheduled, else deactivate")
async def remove_assignment(request: Request, assignment_id: UUID) -> None:
    await send(request, RemoveAssignment(id=assignment_id, if_match=if_match(request)), empty=True)


# ---------------------------------------------------------------- on duty


@get("/rooms/{room_id:uuid}/on-duty", operation_id="RoomOnDuty", opt=staff(), tags=ROOMS,
     operation_class=documented(RoomOnDuty, exclude=("id",)),
     summary="Who is on duty in the room at `at` (default now); role filter")
async def room_on_duty(request: Request, room_id: UUID) -> Page[OnDutyView]:
    return await send(request, parse_query(request, RoomOnDuty, id=str(room_id)))  # type: ignore[return-value]


ROUTES: list[Any] = [
    list_shift_templates, get_shift_template, create_shift_template, update_shift_template, delete_shift_template,
    restore_shift_template, duplicate_shift_template, create_schedules, apply_to_employees,
    list_room_schedules, my_schedules, available_rooms, available_employees, schedule_stats, get_room_schedule,
    create_room_schedule, bulk_create, bulk_update, bulk_delete, check_conflicts, copy_week, update_room_schedule,
    delete_room_schedule, cancel_room_schedule, end_room_schedule,
    list_assignments, current_assignments, get_assignment, assign_employee, bulk_assign, update_assignment,
    remove_assignment,
    room_on_duty,
]
