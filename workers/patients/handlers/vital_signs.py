"""Vital signs on an encounter: validated against LOINC codes, UCUM units and ranges; retractable."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from contracts.common import Page
from contracts.errors import Conflict, Forbidden, NotFound, invalid_field
from contracts.patients import (
    ListVitalSigns,
    RecordVitalSigns,
    RetractVitalSign,
    VitalInput,
    VitalSignsRecorded,
    VitalSignsRetracted,
    VitalSignView,
)
from workers.patients.handlers import registry
from workers.patients.queries import vital_view
from workers.patients.tables import encounters, vital_signs
from workers.patients.vitals import from_shorthand, validate
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork

_SORT = {"recordedAt": vital_signs.c.recorded_at}


async def record(uow: UnitOfWork, encounter: Any, items: list[VitalInput]) -> list[Any]:
    """Validate and store readings for `encounter`; the derived BMI comes along. One event."""
    readings = validate(items, uow.now)
    rows = (await uow.conn.execute(
        vital_signs.insert().returning(vital_signs),
        [{"encounter_id": encounter.id, "patient_id": encounter.patient_id, "code": r.code, "value": r.value,
          "unit": r.unit, "recorded_at": r.recorded_at, "recorded_by": uow.actor.user_id, "derived": r.derived,
          "created_at": uow.now} for r in readings],
    )).all()
    uow.emit(VitalSignsRecorded(encounter_id=encounter.id, patient_id=encounter.patient_id,
                                vital_sign_ids=[r.id for r in rows], codes=[r.code for r in rows]))
    return rows


@registry.handles(RecordVitalSigns)
async def record_vital_signs(cmd: RecordVitalSigns, uow: UnitOfWork) -> list[VitalSignView]:
    encounter = (await uow.conn.execute(
        select(encounters.c.id, encounters.c.patient_id, encounters.c.status).where(encounters.c.id == cmd.encounter_id)
    )).first()
    if encounter is None:
        raise NotFound("no such encounter")
    uow.target("encounter", encounter.id, patient_ids=[encounter.patient_id])
    if encounter.status == "cancelled":
        raise Conflict("the encounter is cancelled", code="encounter_cancelled")
    items = cmd.items if cmd.items is not None else from_shorthand(cmd.shorthand) if cmd.shorthand else []
    if not items:
        raise invalid_field("vitalSigns", "required", "give at least one reading")
    rows = await record(uow, encounter, items)
    return [vital_view(r) for r in rows]


@registry.handles(RetractVitalSign)
async def retract_vital_sign(cmd: RetractVitalSign, uow: UnitOfWork) -> VitalSignView:
    row = (await uow.conn.execute(
        select(vital_signs).where(vital_signs.c.id == cmd.id).with_for_update()
    )).first()
    if row is None:
        raise NotFound("no such vital sign")
    uow.target("vital_sign", row.id, patient_ids=[row.patient_id])
    if uow.actor.role != "physician" and row.recorded_by != uow.actor.user_id:
        raise Forbidden("only who recorded it, or a physician, may retract it", code="not_owner")
    if row.status == "entered_in_error":
        raise Conflict("cannot go from entered_in_error to entered_in_error", code="invalid_transition",
                       currentState="entered_in_error", targetState="entered_in_error")
    row = (await uow.conn.execute(
        update(vital_signs).where(vital_signs.c.id == cmd.id)
        .values(status="entered_in_error", retract_reason=cmd.reason, retracted_by=uow.actor.user_id,
                retracted_at=uow.now, version=vital_signs.c.version + 1)
        .returning(vital_signs)
    )).one()
    uow.emit(VitalSignsRetracted(encounter_id=row.encounter_id, patient_id=row.patient_id,
                                 vital_sign_ids=[row.id], codes=[row.code], version=row.version))
    return vital_view(row)


@registry.handles(ListVitalSigns)
async def list_vital_signs(q: ListVitalSigns, uow: UnitOfWork) -> Page[VitalSignView]:
    if q.patient_id is None and q.encounter_id is None:
        raise invalid_field("patientId", "required", "give a patient or an encounter")
    stmt = select(vital_signs)
    if q.patient_id is not None:
        stmt = stmt.where(vital_signs.c.patient_id == q.patient_id)
    if q.encounter_id is not None:
        stmt = stmt.where(vital_signs.c.encounter_id == q.encounter_id)
    if q.code:
        stmt = stmt.where(vital_signs.c.code.in_(q.code))
    if q.recorded_from is not None:
        stmt = stmt.where(vital_signs.c.recorded_at >= q.recorded_from)
    if q.recorded_to is not None:
        stmt = stmt.where(vital_signs.c.recorded_at <= q.recorded_to)
    if not q.include_retracted:
        stmt = stmt.where(vital_signs.c.status == "final")
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-recordedAt", vital_signs.c.id)
    patient_ids = sorted({r.patient_id for r in rows})
    uow.audit_read("patients.list_vital_signs", "patient", q.patient_id or q.encounter_id, patient_ids[:100])
    return Page(items=[vital_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)
