"""Conditions (medical history) of a patient: record, bulk record, change, delete, read."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import select, update

from contracts.common import Page
from contracts.errors import Conflict, Forbidden, NotFound, check_version, reference_error
from contracts.patients import (
    BulkCreateConditions,
    ConditionCreated,
    ConditionDeleted,
    ConditionEventBase,
    ConditionFields,
    ConditionRestored,
    ConditionUpdated,
    ConditionView,
    CreateCondition,
    DeleteCondition,
    GetCondition,
    ListConditions,
    RestoreCondition,
    UpdateCondition,
)
from workers.patients.handlers import registry
from workers.patients.queries import condition_view, load_patient, patient_ref
from workers.patients.tables import conditions, encounters
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork

_SORT = {"recordedAt": conditions.c.recorded_at, "createdAt": conditions.c.created_at, "code": conditions.c.code}


def condition_event(kind: type[ConditionEventBase], row: Any) -> ConditionEventBase:
    return kind(condition_id=row.id, patient_id=row.patient_id, encounter_id=row.encounter_id, code=row.code,
                code_system=row.code_system, clinical_status=row.clinical_status, version=row.version)


async def _check_encounter(uow: UnitOfWork, patient_id: UUID, encounter_id: UUID | None, field: str) -> None:
    if encounter_id is None:
        return
    owner = (await uow.conn.execute(select(encounters.c.patient_id).where(encounters.c.id == encounter_id))).scalar()
    if owner is None:
        raise reference_error(field, "invalid_reference", "no such encounter")
    if owner != patient_id:
        raise reference_error(field, "wrong_patient", "the encounter belongs to another patient")


async def _insert(uow: UnitOfWork, patient_id: UUID, fields: ConditionFields) -> Any:
    row = (await uow.conn.execute(
        conditions.insert().values(
            patient_id=patient_id, encounter_id=fields.encounter_id, code=fields.code, code_system=fields.code_system,
            code_display=fields.code_display, clinical_status=fields.clinical_status.value, body_site=fields.body_site,
            recorded_at=fields.recorded_at or uow.now, recorded_by=uow.actor.user_id, notes=fields.notes,
            created_at=uow.now, updated_at=uow.now,
        ).returning(conditions)
    )).one()
    uow.emit(condition_event(ConditionCreated, row))
    return row


@registry.handles(CreateCondition)
async def create_condition(cmd: CreateCondition, uow: UnitOfWork) -> ConditionView:
    patient = await load_patient(uow.conn, cmd.patient_id)
    await _check_encounter(uow, patient.id, cmd.condition.encounter_id, "encounterId")
    row = await _insert(uow, patient.id, cmd.condition)
    uow.target("condition", row.id, patient_ids=[patient.id])
    return condition_view(row, patient_ref(patient))


@registry.handles(BulkCreateConditions)
async def bulk_create_conditions(cmd: BulkCreateConditions, uow: UnitOfWork) -> list[ConditionView]:
    patient = await load_patient(uow.conn, cmd.patient_id)
    for i, item in enumerate(cmd.items):
        await _check_encounter(uow, patient.id, item.encounter_id, f"items/{i}/encounterId")
    ref = patient_ref(patient)
    rows = [await _insert(uow, patient.id, item) for item in cmd.items]
    uow.target("patient", patient.id, patient_ids=[patient.id], count=len(rows))
    return [condition_view(r, ref) for r in rows]


async def _load(uow: UnitOfWork, condition_id: UUID, *, live: bool = True, lock: bool = False) -> Any:
    stmt = select(conditions).where(conditions.c.id == condition_id)
    if live:
        stmt = stmt.where(conditions.c.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such condition")
    uow.target("condition", row.id, patient_ids=[row.patient_id])
    return row


@registry.handles(UpdateCondition)
async def update_condition(cmd: UpdateCondition, uow: UnitOfWork) -> ConditionView:
    row = await _load(uow, cmd.id, lock=True)
    check_version(row, cmd.if_match)
    patch = {k: v for k, v in msgspec.structs.asdict(cmd.patch).items() if v is not msgspec.UNSET}
    if "clinical_status" in patch:
        patch["clinical_status"] = patch["clinical_status"].value
    changed = [k for k, v in patch.items() if getattr(row, k) != v]
    if changed:
        row = (await uow.conn.execute(
            update(conditions).where(conditions.c.id == cmd.id)
            .values(**{k: patch[k] for k in changed}, updated_at=uow.now, version=conditions.c.version + 1)
            .returning(conditions)
        )).one()
        uow.emit(condition_event(ConditionUpdated, row))
    patient = await load_patient(uow.conn, row.patient_id, live=False)
    return condition_view(row, patient_ref(patient))


@registry.handles(DeleteCondition)
async def delete_condition(cmd: DeleteCondition, uow: UnitOfWork) -> None:
    row = await _load(uow, cmd.id, lock=True)
    if uow.actor.role != "system_admin" and row.recorded_by != uow.actor.user_id:
        raise Forbidden("only who recorded it, or an administrator, may delete it", code="not_owner")
    row = (await uow.conn.execute(
        update(conditions).where(conditions.c.id == cmd.id)
        .values(deleted_at=uow.now, updated_at=uow.now, version=conditions.c.version + 1).returning(conditions)
    )).one()
    uow.emit(condition_event(ConditionDeleted, row))
    return None


@registry.handles(RestoreCondition)
async def restore_condition(cmd: RestoreCondition, uow: UnitOfWork) -> ConditionView:
    row = await _load(uow, cmd.id, live=False, lock=True)
    if row.deleted_at is None:
        raise Conflict("the condition is not deleted", code="invalid_transition", currentState="live",
                       targetState="restored")
    row = (await uow.conn.execute(
        update(conditions).where(conditions.c.id == cmd.id)
        .values(deleted_at=None, updated_at=uow.now, version=conditions.c.version + 1).returning(conditions)
    )).one()
    uow.emit(condition_event(ConditionRestored, row))
    patient = await load_patient(uow.conn, row.patient_id, live=False)
    return condition_view(row, patient_ref(patient))


@registry.handles(ListConditions)
async def list_conditions(q: ListConditions, uow: UnitOfWork) -> Page[ConditionView]:
    patient = await load_patient(uow.conn, q.patient_id)
    stmt = select(conditions).where(conditions.c.patient_id == q.patient_id)
    if not (q.include_deleted and uow.actor.role == "system_admin"):
        stmt = stmt.where(conditions.c.deleted_at.is_(None))
    if q.clinical_status:
        stmt = stmt.where(conditions.c.clinical_status.in_([s.value for s in q.clinical_status]))
    if q.code:
        stmt = stmt.where(conditions.c.code == q.code)
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-recordedAt", conditions.c.id)
    uow.audit_read("patients.list_conditions", "patient", patient.id, [patient.id])
    ref = patient_ref(patient)
    return Page(items=[condition_view(r, ref) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetCondition)
async def get_condition(q: GetCondition, uow: UnitOfWork) -> ConditionView:
    row = await _load(uow, q.id)
    patient = await load_patient(uow.conn, row.patient_id, live=False)
    uow.audit_read("patients.get_condition", "condition", row.id, [row.patient_id])
    return condition_view(row, patient_ref(patient))
