"""Reading the patients schema: rows to views and the lookups the handlers share."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.errors import NotFound, invalid_field, reference_error
from contracts.patients import (
    BloodType,
    ClinicalStatus,
    ConditionView,
    Gender,
    PatientRef,
    PatientView,
    VitalSignStatus,
    VitalSignView,
)
from workers.patients.tables import patients
from workers.patients.vitals import CATALOGUE

PATIENT_COLUMNS = [c for c in patients.c if c.name not in ("name_key", "dup_key", "name_set")]
EARLIEST_BIRTH = date(1900, 1, 1)


def today(clinic_timezone: str, now: datetime) -> date:
    """The business day: the calendar date in the clinic's time zone."""
    return now.astimezone(ZoneInfo(clinic_timezone)).date()


def check_birth_date(value: date, clinic_timezone: str, now: datetime) -> None:
    if not EARLIEST_BIRTH <= value <= today(clinic_timezone, now):
        raise invalid_field("dateOfBirth", "out_of_range", "the date of birth must be between 1900-01-01 and today")


def patient_view(row: Any) -> PatientView:
    return PatientView(
        id=row.id, mrn=row.mrn, first_name=row.first_name, last_name=row.last_name,
        display_name=f"{row.first_name} {row.last_name}", date_of_birth=row.date_of_birth,
        gender=Gender(row.gender), phone=row.phone, address=row.address, blood_type=BloodType(row.blood_type),
        insurance_number=row.insurance_number, is_active=row.is_active, created_by=row.created_by,
        created_at=row.created_at, updated_at=row.updated_at, deleted_at=row.deleted_at, version=row.version,
    )


def patient_ref(row: Any) -> PatientRef:
    return PatientRef(id=row.id, mrn=row.mrn, display_name=f"{row.first_name} {row.last_name}",
                      date_of_birth=row.date_of_birth, gender=Gender(row.gender))


async def load_patient(conn: AsyncConnection, patient_id: UUID, *, live: bool = True, lock: bool = False) -> Any:
    stmt = select(*PATIENT_COLUMNS).where(patients.c.id == patient_id)
    if live:
        stmt = stmt.where(patients.c.deleted_at.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such patient")
    return row


async def referenced_patient(conn: AsyncConnection, patient_id: UUID, field: str = "patientId") -> Any:
    """A body reference to a patient: live (422 invalid_reference) and active (422 inactive_reference)."""
    row = (await conn.execute(select(*PATIENT_COLUMNS).where(patients.c.id == patient_id,
                                                             patients.c.deleted_at.is_(None)))).first()
    if row is None:
        raise reference_error(field, "invalid_reference", "no such patient")
    if not row.is_active:
        raise reference_error(field, "inactive_reference", "the patient is not active")
    return row


def condition_view(row: Any, ref: PatientRef) -> ConditionView:
    return ConditionView(
        id=row.id, patient_id=row.patient_id, patient=ref, encounter_id=row.encounter_id, code=row.code,
        code_system=row.code_system, code_display=row.code_display,
        clinical_status=ClinicalStatus(row.clinical_status), body_site=row.body_site, recorded_at=row.recorded_at,
        recorded_by=row.recorded_by, notes=row.notes, created_at=row.created_at, updated_at=row.updated_at,
        deleted_at=row.deleted_at, version=row.version,
    )


def vital_view(row: Any) -> VitalSignView:
    return VitalSignView(
        id=row.id, encounter_id=row.encounter_id, patient_id=row.patient_id, code=row.code,
        display=CATALOGUE[row.code].display if row.code in CATALOGUE else row.code, value=row.value,
        unit=row.unit, recorded_at=row.recorded_at, recorded_by=row.recorded_by, derived=row.derived,
        status=VitalSignStatus(row.status), retract_reason=row.retract_reason, created_at=row.created_at,
        version=row.version,
    )


