"""Users domain (spec users.md), shift templates, room schedules, employee room assignments, who is on duty.

Times of day are `HH:MM[:SS]` in the clinic time zone; `startsAt`/`endsAt` are the absolute instants
derived from `workDate` and the times (a shift whose end time is not after its start time ends on
the next day). Everything that asks "at instant t" compares absolute instants, so overnight shifts
need no special case.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, time
from typing import Annotated
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from contracts.common import Empty, ListParams, Page, Role, Struct, Text, UserRef, View
from contracts.envelope import Event
from contracts.registry import command, event, query
from contracts.users import UserSummary

MAX_BATCH = 200  # items or ids of one bulk request (spec users.md §4)
MAX_TEMPLATE_DAYS = 62  # dateFrom..dateTo of one template run, inclusive

TimeOfDay = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
                                description="HH:MM[:SS], clinic time zone")]
TemplateName = Annotated[str, Meta(min_length=1, max_length=50)]
Weekday = Annotated[int, Meta(ge=1, le=7, description="ISO weekday: 1 = Monday … 7 = Sunday")]
OvertimeHours = Annotated[float, Meta(ge=0, le=24)]
Reason = Annotated[str, Meta(max_length=500)]
Instant = Annotated[datetime, Meta(tz=True, description="ISO-8601 with Z or an offset")]
EmployeeIds = Annotated[list[UUID], Meta(max_length=100)]

SHIFT_TEMPLATE_SORT = ("name", "startTime", "createdAt")
ROOM_SCHEDULE_SORT = ("startsAt", "workDate", "createdAt")
ASSIGNMENT_SORT = ("startsAt", "createdAt")


class ShiftType(enum.StrEnum):
    MORNING = "morning"
    AFTERNOON = "afternoon"
    NIGHT = "night"
    FULL_DAY = "full_day"
    CUSTOM = "custom"


class ScheduleStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# ---------------------------------------------------------------- views


class ShiftTemplateView(View):
    id: UUID
    name: str
    shift_type: ShiftType
    start_time: time
    end_time: time
    break_start_time: time | None
    break_end_time: time | None
    overnight: bool  # ends on the next day (endTime ≤ startTime)
    duration_minutes: int
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class RoomRef(View):
    id: UUID
    code: str
    type: str
    department_id: UUID
    floor: int | None


class ShiftTemplateRef(View):
    id: UUID
    name: str
    shift_type: ShiftType


class ScheduleBrief(View):
    id: UUID
    room_id: UUID
    shift_template_id: UUID | None
    work_date: date
    start_time: time
    end_time: time
    overnight: bool
    starts_at: datetime
    ends_at: datetime
    status: ScheduleStatus


class AssignmentView(View):
    id: UUID
    room_schedule_id: UUID
    employee_id: UUID
    employee: UserRef
    room_id: UUID
    room: RoomRef
    starts_at: datetime
    ends_at: datetime
    is_active: bool
    schedule: ScheduleBrief
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int


class RoomScheduleView(View, omit_defaults=True):
    id: UUID
    room_id: UUID
    room: RoomRef
    shift_template_id: UUID | None
    shift_template: ShiftTemplateRef | None
    work_date: date
    start_time: time
    end_time: time
    overnight: bool
    starts_at: datetime
    ends_at: datetime
    status: ScheduleStatus
    actual_end_at: datetime | None
    overtime_hours: float
    notes: str | None
    cancel_reason: str | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int
    assignment_count: int  # active assignments
    assignments: list[AssignmentView] | None = None  # the detail (GET /room-schedules/{id}) only


class ConflictItem(View, omit_defaults=True):
    """One refused or skipped item: why (`code`), and what it collides with."""

    code: str  # schedule_overlap, employee_double_booked, room_unavailable, schedule_in_past, already_exists, …
    detail: str
    index: int | None = None  # position in the request's items/ids
    schedule_id: UUID | None = None  # the existing schedule the item is about (updates, deletes, copies)
    source_schedule_id: UUID | None = None  # copy-week: the schedule that was being copied
    room_id: UUID | None = None
    work_date: date | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    employee_id: UUID | None = None
    conflicting_schedule_id: UUID | None = None
    conflicting_assignment_id: UUID | None = None
    conflicting_index: int | None = None  # another item of the same request


class ConflictReport(View):
    has_conflicts: bool
    conflicts: list[ConflictItem]


class GenerationResult(View):
    created: list[RoomScheduleView]  # new schedules
    assigned: list[AssignmentView]  # new assignments (apply-to-employees)
    conflicts: list[ConflictItem]  # what was skipped, and why


class CopyWeekResult(View):
    created: list[RoomScheduleView]
    assignments_created: int
    skipped: list[ConflictItem]


class SchedulesCreated(View):
    created: list[RoomScheduleView]


class SchedulesUpdated(View):
    updated: list[RoomScheduleView]


class SchedulesDeleted(View):
    deleted: list[UUID]


class AssignmentsCreated(View):
    created: list[AssignmentView]


class ScheduleStats(View):
    total: int
    by_status: dict[str, int]
    scheduled_hours: float  # planned hours of the schedules that are not cancelled
    worked_hours: float  # completed schedules, up to their actual end
    overtime_hours: float


class AvailableRoom(View):
    id: UUID
    code: str
    type: str
    department_id: UUID
    floor: int | None
    capacity: int
    status: str
    on_duty_count: int


class OnDutyView(UserSummary):
    """An employee on duty in a room at an instant, with the assignment and schedule that put them there."""

    assignment: AssignmentView
    schedule: ScheduleBrief


class AdvanceResult(View):
    started: int
    completed: int
    rooms_updated: int


# ---------------------------------------------------------------- shift templates


@query("users.list_shift_templates", result=Page[ShiftTemplateView], summary="Shift templates, filtered and paged")
class ListShiftTemplates(ListParams):
    q: Annotated[str, Meta(max_length=100)] | None = None
    shift_type: list[ShiftType] | None = None
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.get_shift_template", result=ShiftTemplateView, summary="One shift template")
class GetShiftTemplate(Struct):
    id: UUID


@command("users.create_shift_template", result=ShiftTemplateView, summary="Create a shift template (ADM)")
class CreateShiftTemplate(Struct):
    name: TemplateName
    shift_type: ShiftType
    start_time: TimeOfDay
    end_time: TimeOfDay
    break_start_time: TimeOfDay | None = None
    break_end_time: TimeOfDay | None = None
    description: Text | None = None
    is_active: bool = True


class ShiftTemplatePatch(Struct):
    name: TemplateName | UnsetType = UNSET
    shift_type: ShiftType | UnsetType = UNSET
    start_time: TimeOfDay | UnsetType = UNSET
    end_time: TimeOfDay | UnsetType = UNSET
    break_start_time: TimeOfDay | UnsetType | None = UNSET
    break_end_time: TimeOfDay | UnsetType | None = UNSET
    description: Text | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET


@command("users.update_shift_template", result=ShiftTemplateView, summary="Change a shift template (ADM)")
class UpdateShiftTemplate(Struct):
    id: UUID
    patch: ShiftTemplatePatch
    if_match: int | None = None


@command("users.delete_shift_template", summary="Soft-delete a shift template; its schedules stay")
class DeleteShiftTemplate(Struct):
    id: UUID
    if_match: int | None = None


@command("users.restore_shift_template", result=ShiftTemplateView)
class RestoreShiftTemplate(Struct):
    id: UUID


@command("users.duplicate_shift_template", result=ShiftTemplateView, summary="Copy a template under a new name")
class DuplicateShiftTemplate(Struct):
    id: UUID
    name: TemplateName


@command("users.generate_room_schedules", result=GenerationResult,
         summary="Create a template's schedules for rooms and days, and optionally assign employees to them; "
                 "creates what it can and reports every skipped item with its reason")
class GenerateRoomSchedules(Struct):
    id: UUID  # the template
    room_ids: Annotated[list[UUID], Meta(min_length=1, max_length=100)]
    date_from: date
    date_to: date
    weekdays: Annotated[list[Weekday], Meta(max_length=7)] | None = None  # default: every day
    employee_ids: EmployeeIds | None = None  # apply-to-employees
    allow_past: bool = False


# ---------------------------------------------------------------- room schedules


class ScheduleInput(Struct):
    """One schedule to create: times from the template unless given; `overnight` may be stated
    to make a shift that ends on the next day explicit (it must then agree with the times)."""

    room_id: UUID
    work_date: date
    shift_template_id: UUID | None = None
    start_time: TimeOfDay | None = None
    end_time: TimeOfDay | None = None
    overnight: bool | None = None
    overtime_hours: OvertimeHours = 0.0
    notes: Text | None = None
    employee_ids: EmployeeIds = msgspec.field(default_factory=list)
    allow_past: bool = False


@command("users.create_room_schedule", result=RoomScheduleView, summary="Create a room schedule (ADM)")
class CreateRoomSchedule(ScheduleInput):
    pass


@command("users.bulk_create_room_schedules", result=SchedulesCreated,
         summary="Create up to 200 schedules, all or nothing (409 lists every conflict)")
class BulkCreateRoomSchedules(Struct):
    items: Annotated[list[ScheduleInput], Meta(min_length=1, max_length=MAX_BATCH)]


class RoomSchedulePatch(Struct):
    room_id: UUID | UnsetType = UNSET
    shift_template_id: UUID | UnsetType | None = UNSET
    work_date: date | UnsetType = UNSET
    start_time: TimeOfDay | UnsetType = UNSET
    end_time: TimeOfDay | UnsetType = UNSET
    overnight: bool | UnsetType | None = UNSET
    overtime_hours: OvertimeHours | UnsetType = UNSET
    notes: Text | UnsetType | None = UNSET
    allow_past: bool = False
    # accepted only to be refused with 422 `use_transition`: the state moves by /cancel, /end and the timer
    status: Annotated[str, Meta(description="not patchable (422 use_transition): use /cancel or /end")
                      ] | UnsetType = UNSET


@command("users.update_room_schedule", result=RoomScheduleView, summary="Change a schedule while `scheduled`")
class UpdateRoomSchedule(Struct):
    id: UUID
    patch: RoomSchedulePatch
    if_match: int | None = None


class ScheduleUpdateItem(RoomSchedulePatch, kw_only=True):
    id: UUID


@command("users.bulk_update_room_schedules", result=SchedulesUpdated,
         summary="Change up to 200 schedules, all or nothing (409 lists every conflict)")
class BulkUpdateRoomSchedules(Struct):
    items: Annotated[list[ScheduleUpdateItem], Meta(min_length=1, max_length=MAX_BATCH)]


@command("users.bulk_delete_room_schedules", result=SchedulesDeleted,
         summary="Delete up to 200 `scheduled` schedules and their assignments, all or nothing")
class BulkDeleteRoomSchedules(Struct):
    ids: Annotated[list[UUID], Meta(min_length=1, max_length=MAX_BATCH)]


class ConflictCheckItem(ScheduleInput):
    id: UUID | None = None  # an existing schedule that would move here (it does not collide with itself)


@query("users.check_schedule_conflicts", result=ConflictReport, summary="Conflicts of candidate schedules; "
       "writes nothing")
class CheckScheduleConflicts(Struct):
    items: Annotated[list[ConflictCheckItem], Meta(min_length=1, max_length=MAX_BATCH)]


@command("users.copy_schedule_week", result=CopyWeekResult,
         summary="Copy one week's schedules (and assignments) to another week; skips what cannot be copied")
class CopyScheduleWeek(Struct):
    from_week_start: date
    to_week_start: date
    room_ids: Annotated[list[UUID], Meta(max_length=500)] | None = None
    include_assignments: bool = True


@command("users.delete_room_schedule", summary="Delete a `scheduled` schedule and its assignments")
class DeleteRoomSchedule(Struct):
    id: UUID
    if_match: int | None = None


@command("users.cancel_room_schedule", result=RoomScheduleView,
         summary="scheduled → cancelled, before it starts; its assignments are deactivated")
class CancelRoomSchedule(Struct):
    id: UUID
    reason: Reason | None = None
    if_match: int | None = None


@command("users.end_room_schedule", result=RoomScheduleView, summary="in_progress → completed, early")
class EndRoomSchedule(Struct):
    id: UUID
    at: Instant | None = None
    if_match: int | None = None


@command("users.advance_room_schedules", result=AdvanceResult,
         summary="Timer: scheduled → in_progress → completed as time passes; recomputes room occupancy")
class AdvanceRoomSchedules(Empty):
    pass


@query("users.list_room_schedules", result=Page[RoomScheduleView], summary="Room schedules, filtered and paged")
class ListRoomSchedules(ListParams):
    room_id: UUID | None = None
    employee_id: UUID | None = None
    department_id: UUID | None = None
    shift_template_id: UUID | None = None
    status: list[ScheduleStatus] | None = None
    date_from: date | None = None
    date_to: date | None = None


@query("users.list_my_schedules", result=Page[RoomScheduleView], summary="The caller's schedules")
class ListMySchedules(ListParams):
    date_from: date | None = None  # default: Monday of this business week
    date_to: date | None = None  # default: the Sunday after dateFrom's Monday
    status: list[ScheduleStatus] | None = None


@query("users.get_room_schedule", result=RoomScheduleView, summary="One schedule with its assignments")
class GetRoomSchedule(Struct):
    id: UUID


class Window(ListParams):
    """A time window: `startsAt`+`endsAt`, or `date`+`startTime`+`endTime` in the clinic time zone."""

    starts_at: Instant | None = None
    ends_at: Instant | None = None
    date: date | None = None
    start_time: TimeOfDay | None = None
    end_time: TimeOfDay | None = None


@query("users.available_rooms", result=Page[AvailableRoom], summary="Rooms free for a time window")
class AvailableRooms(Window):
    department_id: UUID | None = None
    type: list[str] | None = None


@query("users.available_employees", result=Page[UserSummary], summary="Staff with no assignment in a window")
class AvailableEmployees(Window):
    role: list[Role] | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None
    department_id: UUID | None = None


@query("users.room_schedule_stats", result=ScheduleStats,
       summary="Counts by status, hours and overtime (ADM; others for themselves)")
class RoomScheduleStats(Struct):
    employee_id: UUID | None = None
    room_id: UUID | None = None
    date_from: date | None = None
    date_to: date | None = None


# ---------------------------------------------------------------- assignments


@query("users.list_assignments", result=Page[AssignmentView], summary="Employee room assignments")
class ListAssignments(ListParams):
    room_schedule_id: UUID | None = None
    employee_id: UUID | None = None
    room_id: UUID | None = None
    date: date | None = None  # the schedule's work date
    is_active: bool | None = None


@query("users.get_assignment", result=AssignmentView)
class GetAssignment(Struct):
    id: UUID


@query("users.current_assignments", result=list[AssignmentView],
       summary="The caller's assignments active now, with room and schedule")
class CurrentAssignments(Empty):
    pass


class AssignmentInput(Struct):
    room_schedule_id: UUID
    employee_id: UUID


@command("users.assign_employee", result=AssignmentView, summary="Put an employee on a schedule (ADM)")
class AssignEmployee(AssignmentInput):
    pass


@command("users.bulk_assign_employees", result=AssignmentsCreated,
         summary="Up to 200 assignments, all or nothing (409 lists every conflict)")
class BulkAssignEmployees(Struct):
    items: Annotated[list[AssignmentInput], Meta(min_length=1, max_length=MAX_BATCH)]


class AssignmentPatch(Struct):
    is_active: bool | UnsetType = UNSET


@command("users.update_assignment", result=AssignmentView, summary="Activate or deactivate an assignment")
class UpdateAssignment(Struct):
    id: UUID
    patch: AssignmentPatch
    if_match: int | None = None


@command("users.remove_assignment", summary="Delete while the schedule is `scheduled`, else deactivate")
class RemoveAssignment(Struct):
    id: UUID
    if_match: int | None = None


# ---------------------------------------------------------------- on duty


@query("users.list_on_duty", result=list[UserRef],
       summary="Who is on duty in a room at an instant (bus query for other domains)")
class ListOnDuty(Struct):
    room_id: UUID
    at: Instant | None = None  # default: now
    roles: list[Role] | None = None


class DutyAt(Struct):
    room_id: UUID
    at: Instant


@query("users.list_on_duty_many", result=list[list[UserRef]],
       summary="Who is on duty in each of several rooms, each at its instant (bus query; one per batch of events)")
class ListOnDutyMany(Struct):
    items: Annotated[list[DutyAt], Meta(max_length=1000)]
    roles: list[Role] | None = None


@query("users.room_on_duty", result=Page[OnDutyView], summary="Who is on duty in a room, with assignment and schedule")
class RoomOnDuty(ListParams, kw_only=True):
    id: UUID
    at: Instant | None = None
    role: list[Role] | None = None


# ---------------------------------------------------------------- events


class ShiftTemplateEventBase(Event):
    shift_template_id: UUID
    name: str
    shift_type: ShiftType
    start_time: time
    end_time: time
    is_active: bool
    version: int


@event("users.shift_template.created")
class ShiftTemplateCreated(ShiftTemplateEventBase):
    pass


@event("users.shift_template.updated")
class ShiftTemplateUpdated(ShiftTemplateEventBase):
    pass


@event("users.shift_template.deleted")
class ShiftTemplateDeleted(ShiftTemplateEventBase):
    pass


@event("users.shift_template.restored")
class ShiftTemplateRestored(ShiftTemplateEventBase):
    pass


class RoomScheduleEventBase(Event):
    schedule_id: UUID
    room_id: UUID
    work_date: date
    starts_at: datetime
    ends_at: datetime
    status: ScheduleStatus
    version: int


@event("users.room_schedule.created")
class RoomScheduleCreated(RoomScheduleEventBase):
    pass


@event("users.room_schedule.updated")
class RoomScheduleUpdated(RoomScheduleEventBase):
    pass


@event("users.room_schedule.deleted")
class RoomScheduleDeleted(RoomScheduleEventBase):
    pass


@event("users.room_schedule.started")
class RoomScheduleStarted(RoomScheduleEventBase):
    pass


@event("users.room_schedule.completed")
class RoomScheduleCompleted(RoomScheduleEventBase):
    pass


@event("users.room_schedule.cancelled")
class RoomScheduleCancelled(RoomScheduleEventBase):
    pass


class AssignmentEventBase(Event):
    assignment_id: UUID
    schedule_id: UUID
    employee_id: UUID
    room_id: UUID
    starts_at: datetime
    ends_at: datetime
    is_active: bool
    version: int


@event("users.assignment.created")
class AssignmentCreated(AssignmentEventBase):
    pass


@event("users.assignment.updated")
class AssignmentUpdated(AssignmentEventBase):
    pass


@event("users.assignment.deleted")
class AssignmentDeleted(AssignmentEventBase):
    pass
