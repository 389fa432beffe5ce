"""Encounters: open one in a room's queue (gap-free daily numbers), change it, move it through its
states, transfer it; the timer cancels the ones left waiting from earlier days."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from contracts.common import Role, UserRef
from contracts.encounters import (
    ArriveEncounter,
    CancelEncounter,
    EncounterArrived,
    EncounterCancelled,
    EncounterCreated,
    EncounterEventBase,
    EncounterFinished,
    EncounterReturned,
    EncounterStarted,
    EncounterStatus,
    EncounterTransferred,
    EncounterUpdated,
    EncounterView,
    FinishEncounter,
    OpenEncounter,
    ReturnEncounterToQueue,
    StartEncounter,
    TransferEncounter,
    UpdateEncounter,
)
from contracts.errors import Conflict, Forbidden, Invalid, NotFound, check_version, reference_error
from contracts.organisation import GetServiceRoom, RoomStatus, ServiceRoomView
from contracts.patients import VitalShorthand
from contracts.users import GetUserRefs
from workers.patients.handlers import registry
from workers.patients.handlers.vital_signs import record
from workers.patients.queries import patient_ref, referenced_patient, today
from workers.patients.tables import encounters, patients, queue_counters
from workers.patients.views import encounter_view
from workers.patients.vitals import from_shorthand
from workers.runtime.cache import LocalCache
from workers.runtime.db import constraint_of
from workers.runtime.unit_of_work import UnitOfWork

OPEN = ("waiting", "arrived", "in_progress")
EXPIRE_LOCK = 0x7A7E_0001


def encounter_event(kind: type[EncounterEventBase], row: Any, mrn: str, previous: str | None,
                    expired: bool = False) -> EncounterEventBase:
    return kind(encounter_id=row.id, patient_id=row.patient_id, mrn=mrn, room_id=row.room_id,
                service_id=row.service_id, queue_number=row.queue_number, business_date=row.business_date,
                type=row.type, priority=row.priority, status=row.status, previous_status=previous,
                assigned_physician_id=row.assigned_physician_id, version=row.version, expired=expired)


# Service-room links as the users worker last told this process; any change to a link, a room or a
# service drops them all (every replica hears it on its own queue), and none is older than a minute.
SERVICE_ROOMS: LocalCache[UUID, ServiceRoomView] = LocalCache(ttl=60)
registry.watch("users.service_room.*", "users.room.*", "users.service.*")(SERVICE_ROOMS.clear)


async def usable_service_room(uow: UnitOfWork, service_room_id: UUID, field: str) -> ServiceRoomView:
    """The service-room link an encounter points at: live and active, its service active, its room
    active and not under maintenance (asked of the users worker, which owns them)."""
    link = SERVICE_ROOMS.get(service_room_id)
    if link is None:
        generation = SERVICE_ROOMS.generation
        try:
            link = await uow.ask(GetServiceRoom(id=service_room_id), ServiceRoomView)
        except NotFound as exc:
            raise reference_error(field, "invalid_reference", "no such service-room link") from exc
        SERVICE_ROOMS.put(service_room_id, link, generation)
    if not link.is_active or not link.service.is_active:
        raise reference_error(field, "inactive_reference", "this service is not offered in this room now")
    if not link.room.is_active or link.room.status == RoomStatus.MAINTENANCE:
        raise reference_error(field, "room_unavailable", "the room is inactive or under maintenance")
    return link


async def active_physician(uow: UnitOfWork, user_id: UUID, field: str) -> UserRef:
    refs: list[dict] = await uow.ask(GetUserRefs(ids=[user_id]), list[dict])
    ref = refs[0] if refs else None
    if ref is None:
        raise reference_error(field, "invalid_reference", "no such user")
    if ref.get("role") != Role.PHYSICIAN:
        raise reference_error(field, "not_a_physician", "the user is not a physician")
    if ref.get("isActive") is False:
        raise reference_error(field, "inactive_reference", "the physician is not active")
    return msgspec.convert(ref, UserRef, strict=False)


def next_number(room_id: UUID, day: Any) -> Any:
    """The room's next queue number of the day: one upsert on the counter row, inside the
    encounter's transaction, so concurrent creations queue on the row and a rollback returns it.
    A CTE, so that the number is taken by the statement that inserts the encounter: the row lock is
    held from there to the commit, never across a round trip."""
    stmt = pg_insert(queue_counters).values(room_id=room_id, business_date=day, last_number=1)
    return stmt.on_conflict_do_update(
        index_elements=["room_id", "business_date"],
        set_={"last_number": queue_counters.c.last_number + 1},
    ).returning(queue_counters.c.last_number).cte("next_number")


async def _mrn(uow: UnitOfWork, patient_id: UUID) -> str:
    return (await uow.conn.execute(select(patients.c.mrn).where(patients.c.id == patient_id))).scalar_one()


@registry.handles(OpenEncounter)
async def open_encounter(cmd: OpenEncounter, uow: UnitOfWork) -> EncounterView:
    patient = await referenced_patient(uow.conn, cmd.patient_id)
    uow.target("encounter", None, patient_ids=[patient.id])
    link = await usable_service_room(uow, cmd.service_room_id, "serviceRoomId")
    if cmd.assigned_physician_id is not None:
        await active_physician(uow, cmd.assigned_physician_id, "assignedPhysicianId")
    day = today(uow.settings.clinic_timezone, uow.now)
    number = next_number(link.room_id, day)
    try:
        row = (await uow.conn.execute(encounters.insert().values(
            patient_id=patient.id, service_room_id=link.id, room_id=link.room_id, service_id=link.service_id,
            queue_number=select(number.c.last_number).scalar_subquery(), business_date=day,
            type=cmd.type.value, priority=cmd.priority.value,
            chief_complaint=cmd.chief_complaint, symptoms=cmd.symptoms, notes=cmd.notes,
            assigned_physician_id=cmd.assigned_physician_id, created_by=uow.actor.user_id,
            created_at=uow.now, updated_at=uow.now,
        ).returning(encounters))).one()
    except IntegrityError as exc:
        if constraint_of(exc) == "uq_encounters_open":
            raise Conflict("the patient already has an open encounter in this room today",
                           code="duplicate_open_encounter") from exc
        raise
    uow.target("encounter", row.id, patient_ids=[patient.id])
    if cmd.vital_signs:
        items = from_shorthand(cmd.vital_signs) if isinstance(cmd.vital_signs, VitalShorthand) else cmd.vital_signs
        if items:
            await record(uow, row, items)
    created = encounter_event(EncounterCreated, row, patient.mrn, None)
    uow.emit(msgspec.structs.replace(created, room_code=link.room.code))  # type: ignore[type-var]
    return await encounter_view(uow, row, patient=patient_ref(patient))


async def _load(uow: UnitOfWork, encounter_id: UUID, if_match: int | None = None) -> Any:
    row = (await uow.conn.execute(select(encounters).where(encounters.c.id == encounter_id).with_for_update())).first()
    if row is None:
        raise NotFound("no such encounter")
    uow.target("encounter", row.id, patient_ids=[row.patient_id])
    check_version(row, if_match)
    return row


def _require(row: Any, allowed: tuple[str, ...], target: str) -> None:
    if row.status not in allowed:
        raise Conflict(f"cannot go from {row.status} to {target}", code="invalid_transition",
                       currentState=row.status, targetState=target)


def _assigned(uow: UnitOfWork, row: Any) -> None:
    if uow.actor.role != Role.SYSTEM_ADMIN and row.assigned_physician_id != uow.actor.user_id:
        raise Forbidden("only the assigned physician may do this", code="not_owner")


async def _move(uow: UnitOfWork, row: Any, kind: type[EncounterEventBase], **values: Any) -> EncounterView:
    previous = row.status
    row = (await uow.conn.execute(
        update(encounters).where(encounters.c.id == row.id)
        .values(**values, updated_at=uow.now, version=encounters.c.version + 1).returning(encounters)
    )).one()
    uow.emit(encounter_event(kind, row, await _mrn(uow, row.patient_id), previous))
    return await encounter_view(uow, row)


_RECEPTION_FIELDS = ("type", "priority", "chief_complaint", "symptoms", "notes")
_PHYSICIAN_FIELDS = ("chief_complaint", "symptoms", "notes")


@registry.handles(UpdateEncounter)
async def update_encounter(cmd: UpdateEncounter, uow: UnitOfWork) -> EncounterView:
    if cmd.patch.status is not msgspec.UNSET:
        raise Invalid("the status moves only through the transition routes", code="use_transition", field="status")
    row = await _load(uow, cmd.id, cmd.if_match)
    patch = {k: (v.value if hasattr(v, "value") else v) for k, v in msgspec.structs.asdict(cmd.patch).items()
             if v is not msgspec.UNSET and k != "status"}
    if uow.actor.role == Role.RECEPTION_STAFF:
        if row.status != "waiting":
            raise Conflict("reception may change an encounter only while it is waiting", code="invalid_transition",
                           currentState=row.status, targetState="waiting")
        allowed = _RECEPTION_FIELDS
    else:
        _assigned(uow, row)
        allowed = _PHYSICIAN_FIELDS
    refused = [k for k in patch if k not in allowed]
    if refused:
        raise Forbidden(f"you may not change {', '.join(refused)}", code="forbidden", field=refused[0])
    changed = {k: v for k, v in patch.items() if getattr(row, k) != v}
    if not changed:
        return await encounter_view(uow, row)
    uow.target("encounter", row.id, patient_ids=[row.patient_id], changedFields=sorted(changed))
    return await _move(uow, row, EncounterUpdated, **changed)


@registry.handles(ArriveEncounter)
async def arrive_encounter(cmd: ArriveEncounter, uow: UnitOfWork) -> EncounterView:
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, ("waiting",), "arrived")
    return await _move(uow, row, EncounterArrived, status="arrived", arrived_at=uow.now)


@registry.handles(StartEncounter)
async def start_encounter(cmd: StartEncounter, uow: UnitOfWork) -> EncounterView:
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, ("waiting", "arrived"), "in_progress")
    me = uow.actor.user_id
    if row.assigned_physician_id is not None and row.assigned_physician_id != me:
        raise Forbidden("another physician is assigned to this encounter", code="not_owner")
    # One patient at a time per physician (setting encounters.singleActivePerPhysician, on by default):
    # serialise this physician's starts, then look.
    await uow.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 2))"), {"k": str(me)})
    busy = (await uow.conn.execute(
        select(encounters.c.id).where(encounters.c.assigned_physician_id == me, encounters.c.status == "in_progress",
                                      encounters.c.id != row.id).limit(1)
    )).first()
    if busy is not None:
        raise Conflict("you already have a patient in progress", code="physician_busy", encounterId=str(busy.id))
    return await _move(uow, row, EncounterStarted, status="in_progress", started_at=uow.now,
                       assigned_physician_id=me)


@registry.handles(FinishEncounter)
async def finish_encounter(cmd: FinishEncounter, uow: UnitOfWork) -> EncounterView:
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, ("in_progress",), "finished")
    _assigned(uow, row)
    return await _move(uow, row, EncounterFinished, status="finished", finished_at=uow.now)


@registry.handles(ReturnEncounterToQueue)
async def return_encounter_to_queue(cmd: ReturnEncounterToQueue, uow: UnitOfWork) -> EncounterView:
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, ("in_progress",), "arrived")
    _assigned(uow, row)
    uow.target("encounter", row.id, patient_ids=[row.patient_id], reason=True)
    return await _move(uow, row, EncounterReturned, status="arrived")


@registry.handles(CancelEncounter)
async def cancel_encounter(cmd: CancelEncounter, uow: UnitOfWork) -> EncounterView:
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, ("waiting", "arrived"), "cancelled")
    return await _move(uow, row, EncounterCancelled, status="cancelled", cancelled_at=uow.now,
                       cancelled_by=uow.actor.user_id, cancel_reason=cmd.reason)


@registry.handles(TransferEncounter)
async def transfer_encounter(cmd: TransferEncounter, uow: UnitOfWork) -> EncounterView:
    if cmd.to_physician_id is None and cmd.to_service_room_id is None:
        raise Invalid("name a physician, a service room, or both", code="validation_failed", field="toPhysicianId")
    row = await _load(uow, cmd.id, cmd.if_match)
    _require(row, OPEN, "waiting")
    _assigned(uow, row)
    values: dict[str, Any] = {
        "status": "waiting", "is_transferred": True, "transfer_notes": cmd.notes, "transferred_by": uow.actor.user_id,
        "transferred_at": uow.now, "previous_physician_id": row.assigned_physician_id, "previous_room_id": row.room_id,
        "started_at": None,
    }
    if cmd.to_physician_id is not None:
        await active_physician(uow, cmd.to_physician_id, "toPhysicianId")
        values["assigned_physician_id"] = cmd.to_physician_id
    elif cmd.to_service_room_id is not None:
        values["assigned_physician_id"] = None
    if cmd.to_service_room_id is not None:
        link = await usable_service_room(uow, cmd.to_service_room_id, "toServiceRoomId")
        values.update(service_room_id=link.id, service_id=link.service_id)
        if link.room_id != row.room_id:
            day = today(uow.settings.clinic_timezone, uow.now)
            values.update(room_id=link.room_id, business_date=day,
                          queue_number=select(next_number(link.room_id, day).c.last_number).scalar_subquery())
    try:
        row = (await uow.conn.execute(
            update(encounters).where(encounters.c.id == row.id)
            .values(**values, updated_at=uow.now, version=encounters.c.version + 1).returning(encounters)
        )).one()
    except IntegrityError as exc:
        if constraint_of(exc) == "uq_encounters_open":
            raise Conflict("the patient already has an open encounter in that room today",
                           code="duplicate_open_encounter") from exc
        raise
    uow.emit(EncounterTransferred(
        encounter_id=row.id, patient_id=row.patient_id, from_physician_id=values["previous_physician_id"],
        to_physician_id=row.assigned_physician_id, from_room_id=values["previous_room_id"], to_room_id=row.room_id,
        queue_number=row.queue_number, status=EncounterStatus(row.status), version=row.version,
    ))
    return await encounter_view(uow, row)


@registry.job("expire_encounters", every=900, lock_key=EXPIRE_LOCK)
async def expire_encounters(uow: UnitOfWork) -> None:
    """Waiting or arrived encounters of an earlier business day are cancelled (reason `expired`)."""
    day = today(uow.settings.clinic_timezone, uow.now)
    due = dict((await uow.conn.execute(
        select(encounters.c.id, encounters.c.status)
        .where(encounters.c.status.in_(("waiting", "arrived")), encounters.c.business_date < day)
        .with_for_update(skip_locked=True)
    )).all())
    if not due:
        return
    rows = (await uow.conn.execute(
        update(encounters).where(encounters.c.id.in_(list(due)))
        .values(status="cancelled", cancelled_at=uow.now, cancel_reason="expired", updated_at=uow.now,
                version=encounters.c.version + 1)
        .returning(encounters)
    )).all()
    mrns = dict((await uow.conn.execute(
        select(patients.c.id, patients.c.mrn).where(patients.c.id.in_({r.patient_id for r in rows}))
    )).all())
    for row in rows:
        uow.emit(encounter_event(EncounterCancelled, row, mrns[row.patient_id], due[row.id], expired=True))

