"""Patients domain (spec patients.md): encounters — one visit in one room's daily queue."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Annotated
from uuid import UUID

from msgspec import UNSET, Meta, UnsetType

from contracts.common import ListParams, Page, Struct, Text, UserRef, View
from contracts.envelope import Event
from contracts.patients import ConditionView, LatestVital, PatientRef, PatientView, VitalInput, VitalShorthand
from contracts.registry import command, event, query

ENCOUNTER_SORT = ("queueNumber", "priority", "createdAt")
Clinical = Annotated[str, Meta(max_length=2000)]
Reason = Annotated[str, Meta(min_length=3, max_length=500)]


class EncounterType(enum.StrEnum):
    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    EMERGENCY = "emergency"
    FOLLOW_UP = "follow_up"


class Priority(enum.StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    STAT = "stat"


class EncounterStatus(enum.StrEnum):
    WAITING = "waiting"
    ARRIVED = "arrived"
    IN_PROGRESS = "in_progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"


OPEN_STATUSES = (EncounterStatus.WAITING, EncounterStatus.ARRIVED, EncounterStatus.IN_PROGRESS)


class EncounterView(View):
    id: UUID
    patient_id: UUID
    patient: PatientRef
    service_room_id: UUID
    room_id: UUID
    service_id: UUID
    queue_number: int
    business_date: date
    type: EncounterType
    priority: Priority
    status: EncounterStatus
    chief_complaint: str | None
    symptoms: str | None
    notes: str | None
    assigned_physician_id: UUID | None
    assigned_physician: UserRef | None
    arrived_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    cancelled_by: UUID | None
    cancel_reason: str | None
    is_transferred: bool
    transfer_notes: str | None
    transferred_by: UUID | None
    transferred_at: datetime | None
    previous_physician_id: UUID | None
    previous_room_id: UUID | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int


class QueueStats(View):
    room_id: UUID
    date: date
    total: int
    waiting: int
    arrived: int
    in_progress: int
    finished: int
    cancelled: int
    last_queue_number: int
    now_serving: list[int]
    next_up: int | None


class EncounterStats(View):
    total: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    by_priority: dict[str, int]
    today: int
    average_wait_minutes: float | None
    average_per_patient: float | None


class EncounterSummary(View):
    id: UUID
    queue_number: int
    business_date: date
    room_id: UUID
    service_id: UUID
    type: EncounterType
    priority: Priority
    status: EncounterStatus
    assigned_physician_id: UUID | None
    created_at: datetime


class PatientOverview(View):
    patient: PatientView
    latest_vital_signs: list[LatestVital]
    active_conditions: list[ConditionView] | None  # null for reception, who may not read conditions
    open_encounter: EncounterSummary | None
    recent_encounters: list[EncounterSummary]
    report_count: int


class EncounterState(View):
    id: UUID
    patient_id: UUID
    status: EncounterStatus
    room_id: UUID
    service_id: UUID
    assigned_physician_id: UUID | None


# ---------------------------------------------------------------- commands


@command("patients.open_encounter", result=EncounterView, summary="Put a patient in a room's queue (RCP, PHY)")
class OpenEncounter(Struct):
    patient_id: UUID
    service_room_id: UUID
    type: EncounterType
    priority: Priority = Priority.ROUTINE
    chief_complaint: Clinical | None = None
    symptoms: Clinical | None = None
    notes: Text | None = None
    assigned_physician_id: UUID | None = None
    vital_signs: Annotated[list[VitalInput], Meta(max_length=30)] | VitalShorthand | None = None


class EncounterPatch(Struct):
    type: EncounterType | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    chief_complaint: Clinical | UnsetType | None = UNSET
    symptoms: Clinical | UnsetType | None = UNSET
    notes: Text | UnsetType | None = UNSET
    status: str | UnsetType = UNSET  # accepted only to be refused: 422 use_transition


@command("patients.update_encounter", result=EncounterView)
class UpdateEncounter(Struct):
    id: UUID
    patch: EncounterPatch
    if_match: int | None = None


class Transition(Struct):
    id: UUID
    if_match: int | None = None


@command("patients.arrive_encounter", result=EncounterView, summary="waiting → arrived (RCP, PHY)")
class ArriveEncounter(Transition):
    pass


@command("patients.start_encounter", result=EncounterView, summary="waiting/arrived → in_progress (PHY)")
class StartEncounter(Transition):
    pass


@command("patients.finish_encounter", result=EncounterView, summary="in_progress → finished (assigned PHY)")
class FinishEncounter(Transition):
    pass


@command("patients.return_encounter_to_queue", result=EncounterView,
         summary="in_progress → arrived, keeping the number (assigned PHY)")
class ReturnEncounterToQueue(Transition, kw_only=True):
    reason: Reason


@command("patients.cancel_encounter", result=EncounterView, summary="waiting/arrived → cancelled (RCP, PHY, ADM)")
class CancelEncounter(Transition, kw_only=True):
    reason: Reason


@command("patients.transfer_encounter", result=EncounterView,
         summary="To another physician and/or room: back to waiting (assigned PHY, ADM)")
class TransferEncounter(Transition, kw_only=True):
    to_physician_id: UUID | None = None
    to_service_room_id: UUID | None = None
    notes: Clinical | None = None


# ---------------------------------------------------------------- queries


@query("patients.list_encounters", result=Page[EncounterView], summary="Encounters, filtered and paged")
class ListEncounters(ListParams):
    patient_id: UUID | None = None
    status: list[EncounterStatus] | None = None
    type: list[EncounterType] | None = None
    priority: list[Priority] | None = None
    room_id: UUID | None = None
    service_id: UUID | None = None
    service_room_id: UUID | None = None
    assigned_physician_id: UUID | None = None
    created_by: UUID | None = None
    date_from: date | None = None
    date_to: date | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None


@query("patients.encounter_queue", result=Page[EncounterView],
       summary="A room's queue: in progress first, then by priority, then by number")
class EncounterQueue(ListParams):
    room_id: UUID | None = None
    date: date | None = None
    status: list[EncounterStatus] | None = None
    priority: list[Priority] | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None


@query("patients.queue_stats", result=list[QueueStats], summary="Per room: counts, last number, now serving")
class GetQueueStats(Struct):
    room_ids: Annotated[list[UUID], Meta(min_length=1, max_length=50)]
    date: date | None = None


@query("patients.encounter_stats", result=EncounterStats)
class GetEncounterStats(Struct):
    date_from: date | None = None
    date_to: date | None = None
    room_id: UUID | None = None


@query("patients.get_encounter", result=EncounterView)
class GetEncounter(Struct):
    id: UUID


@query("patients.get_encounter_state", result=EncounterState, summary="Status and room of an encounter (bus)")
class GetEncounterState(Struct):
    id: UUID


@query("patients.patient_overview", result=PatientOverview,
       summary="Latest vitals, active conditions, open and recent encounters")
class GetPatientOverview(Struct):
    id: UUID


# ---------------------------------------------------------------- events


class EncounterEventBase(Event):
    encounter_id: UUID
    patient_id: UUID
    mrn: str
    room_id: UUID
    service_id: UUID
    queue_number: int
    business_date: date
    type: EncounterType
    priority: Priority
    status: EncounterStatus
    previous_status: EncounterStatus | None
    assigned_physician_id: UUID | None
    version: int
    expired: bool = False


@event("patients.encounter.created")
class EncounterCreated(EncounterEventBase):
    room_code: str | None = None  # the room's code when the encounter was created (for notifications)


@event("patients.encounter.updated")
class EncounterUpdated(EncounterEventBase):
    pass


@event("patients.encounter.arrived")
class EncounterArrived(EncounterEventBase):
    pass


@event("patients.encounter.started")
class EncounterStarted(EncounterEventBase):
    pass


@event("patients.encounter.finished")
class EncounterFinished(EncounterEventBase):
    pass


@event("patients.encounter.returned")
class EncounterReturned(EncounterEventBase):
    pass


@event("patients.encounter.cancelled")
class EncounterCancelled(EncounterEventBase):
    pass


@event("patients.encounter.transferred")
class EncounterTransferred(Event):
    encounter_id: UUID
    patient_id: UUID
    from_physician_id: UUID | None
    to_physician_id: UUID | None
    from_room_id: UUID
    to_room_id: UUID
    queue_number: int
    status: EncounterStatus
    version: int
