"""Encounter views: the row, its patient reference and its physician's UserRef (asked of the users
worker once per page, not once per row)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select

from contracts.common import UserRef
from contracts.encounters import EncounterStatus, EncounterType, EncounterView, Priority
from contracts.patients import PatientRef
from contracts.users import GetUserRefs
from workers.patients.queries import PATIENT_COLUMNS, patient_ref
from workers.patients.tables import patients
from workers.runtime.unit_of_work import UnitOfWork


async def user_refs(uow: UnitOfWork, ids: set[UUID]) -> dict[UUID, UserRef]:
    ids.discard(None)  # type: ignore[arg-type]
    if not ids:
        return {}
    refs: list[UserRef] = await uow.ask(GetUserRefs(ids=sorted(ids)), list[UserRef])
    return {r.id: r for r in refs}


async def patient_refs(uow: UnitOfWork, ids: set[UUID]) -> dict[UUID, PatientRef]:
    rows = (await uow.conn.execute(select(*PATIENT_COLUMNS).where(patients.c.id.in_(ids)))).all()
    return {r.id: patient_ref(r) for r in rows}


def _view(row: Any, patient: PatientRef, physician: UserRef | None) -> EncounterView:
    return EncounterView(
        id=row.id, patient_id=row.patient_id, patient=patient, service_room_id=row.service_room_id,
        room_id=row.room_id, service_id=row.service_id, queue_number=row.queue_number,
        business_date=row.business_date, type=EncounterType(row.type), priority=Priority(row.priority),
        status=EncounterStatus(row.status), chief_complaint=row.chief_complaint, symptoms=row.symptoms,
        notes=row.notes, assigned_physician_id=row.assigned_physician_id, assigned_physician=physician,
        arrived_at=row.arrived_at, started_at=row.started_at, finished_at=row.finished_at,
        cancelled_at=row.cancelled_at, cancelled_by=row.cancelled_by, cancel_reason=row.cancel_reason,
        is_transferred=row.is_transferred, transfer_notes=row.transfer_notes, transferred_by=row.transferred_by,
        transferred_at=row.transferred_at, previous_physician_id=row.previous_physician_id,
        previous_room_id=row.previous_room_id, created_by=row.created_by, created_at=row.created_at,
        updated_at=row.updated_at, version=row.version,
    )


async def encounter_views(uow: UnitOfWork, rows: list[Any]) -> list[EncounterView]:
    if not rows:
        return []
    patient_map = await patient_refs(uow, {r.patient_id for r in rows})
    physicians = await user_refs(uow, {r.assigned_physician_id for r in rows if r.assigned_physician_id})
    return [_view(r, patient_map[r.patient_id], physicians.get(r.assigned_physician_id)) for r in rows]


async def encounter_view(uow: UnitOfWork, row: Any, *, patient: PatientRef | None = None) -> EncounterView:
    """One encounter's view; `patient` when the caller has already read the patient's row."""
    if patient is None:
        return (await encounter_views(uow, [row]))[0]
    physician = None
    if row.assigned_physician_id is not None:
        physician = (await user_refs(uow, {row.assigned_physician_id})).get(row.assigned_physician_id)
    return _view(row, patient, physician)
