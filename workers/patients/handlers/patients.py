"""The patient registry: register (MRN, duplicate check), read (audited), search, change, delete."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import and_, func, not_, select, text, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page
from contracts.errors import Conflict, Forbidden, NotFound, check_version, invalid_field
from contracts.patients import (
    DeletePatient,
    FindByMrn,
    GetPatient,
    GetPatientRefs,
    GetPatientStats,
    ListPatients,
    PatientDeleted,
    PatientEventBase,
    PatientRef,
    PatientRegistered,
    PatientRestored,
    PatientStats,
    PatientUpdated,
    PatientView,
    RegisterPatient,
    RestorePatient,
    UpdatePatient,
)
from workers.patients import mrn as mrns
from workers.patients.handlers import registry
from workers.patients.name_search import search_page
from workers.patients.queries import (
    PATIENT_COLUMNS,
    check_birth_date,
    load_patient,
    patient_ref,
    patient_view,
    today,
)
from workers.patients.tables import encounters, patients
from workers.runtime.db import constraint_of
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork

MRN_ATTEMPTS = 5
OPEN = ("waiting", "arrived", "in_progress")
_SORT = {
    "lastName": patients.c.last_name,
    "firstName": patients.c.first_name,
    "dateOfBirth": patients.c.date_of_birth,
    "mrn": patients.c.mrn,
    "createdAt": patients.c.created_at,
}


def patient_event(kind: type[PatientEventBase], row: Any) -> PatientEventBase:
    return kind(patient_id=row.id, mrn=row.mrn, first_name=row.first_name, last_name=row.last_name,
                date_of_birth=row.date_of_birth, gender=row.gender, is_active=row.is_active, version=row.version)


async def _duplicates(uow: UnitOfWork, first: str, last: str, birth: Any) -> list[str]:
    """MRNs of live patients with the same accent- and case-free names and date of birth."""
    key = func.public.f_unaccent(func.lower(first)).op("||")("|").op("||")(func.public.f_unaccent(func.lower(last)))
    rows = await uow.conn.execute(
        select(patients.c.mrn).where(patients.c.dup_key == key, patients.c.date_of_birth == birth,
                                     patients.c.deleted_at.is_(None)).limit(20)
    )
    return [r.mrn for r in rows]


@registry.handles(RegisterPatient)
async def register_patient(cmd: RegisterPatient, uow: UnitOfWork) -> PatientView:
    check_birth_date(cmd.date_of_birth, uow.settings.clinic_timezone, uow.now)
    # Serialise registrations of the same person, so two desks cannot both miss each other.
    await uow.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 1))"),
                           {"k": f"{cmd.first_name.lower()}|{cmd.last_name.lower()}|{cmd.date_of_birth}"})
    if not cmd.allow_duplicate:
        found = await _duplicates(uow, cmd.first_name, cmd.last_name, cmd.date_of_birth)
        if found:
            raise Conflict("a patient with the same name and date of birth exists", code="possible_duplicate",
                           mrns=found)
    values = {
        "first_name": cmd.first_name, "last_name": cmd.last_name, "date_of_birth": cmd.date_of_birth,
        "gender": cmd.gender.value, "phone": cmd.phone, "address": cmd.address, "blood_type": cmd.blood_type.value,
        "insurance_number": cmd.insurance_number, "is_active": cmd.is_active, "created_by": uow.actor.user_id,
        "created_at": uow.now, "updated_at": uow.now,
    }
    row = None
    for attempt in range(MRN_ATTEMPTS):
        try:
            async with uow.conn.begin_nested():  # a collision must not abort the registration
                row = (await uow.conn.execute(
                    patients.insert().values(mrn=mrns.new_mrn(), **values).returning(*PATIENT_COLUMNS)
                )).one()
            break
        except IntegrityError as exc:
            if constraint_of(exc) != "uq_patients_mrn" or attempt == MRN_ATTEMPTS - 1:
                raise
    assert row is not None
    uow.target("patient", row.id, patient_ids=[row.id], allowDuplicate=cmd.allow_duplicate)
    uow.emit(patient_event(PatientRegistered, row))
    return patient_view(row)


_PATCHABLE = ("first_name", "last_name", "date_of_birth", "gender", "phone", "address", "blood_type",
              "insurance_number", "is_active")


@registry.handles(UpdatePatient)
async def update_patient(cmd: UpdatePatient, uow: UnitOfWork) -> PatientView:
    row = await load_patient(uow.conn, cmd.id, lock=True)
    uow.target("patient", row.id, patient_ids=[row.id])
    check_version(row, cmd.if_match)
    patch = {k: v for k, v in msgspec.structs.asdict(cmd.patch).items() if v is not msgspec.UNSET}
    if "date_of_birth" in patch:
        check_birth_date(patch["date_of_birth"], uow.settings.clinic_timezone, uow.now)
    for key in ("gender", "blood_type"):
        if key in patch:
            patch[key] = patch[key].value
    changed = [k for k in _PATCHABLE if k in patch and getattr(row, k) != patch[k]]
    if not changed:
        return patient_view(row)
    row = (await uow.conn.execute(
        update(patients).where(patients.c.id == cmd.id)
        .values(**{k: patch[k] for k in changed}, updated_at=uow.now, version=patients.c.version + 1)
        .returning(*PATIENT_COLUMNS)
    )).one()
    uow.target("patient", row.id, patient_ids=[row.id], changedFields=changed)
    uow.emit(patient_event(PatientUpdated, row))
    return patient_view(row)


@registry.handles(DeletePatient)
async def delete_patient(cmd: DeletePatient, uow: UnitOfWork) -> None:
    row = await load_patient(uow.conn, cmd.id, lock=True)
    uow.target("patient", row.id, patient_ids=[row.id])
    check_version(row, cmd.if_match)
    open_count = (await uow.conn.execute(
        select(func.count()).select_from(encounters)
        .where(encounters.c.patient_id == cmd.id, encounters.c.status.in_(OPEN))
    )).scalar_one()
    if open_count:
        raise Conflict(f"the patient has {open_count} open encounters", code="patient_has_open_encounters")
    row = (await uow.conn.execute(
        update(patients).where(patients.c.id == cmd.id)
        .values(deleted_at=uow.now, updated_at=uow.now, version=patients.c.version + 1).returning(*PATIENT_COLUMNS)
    )).one()
    uow.emit(patient_event(PatientDeleted, row))
    return None


@registry.handles(RestorePatient)
async def restore_patient(cmd: RestorePatient, uow: UnitOfWork) -> PatientView:
    row = await load_patient(uow.conn, cmd.id, live=False, lock=True)
    uow.target("patient", row.id, patient_ids=[row.id])
    if row.deleted_at is None:
        raise Conflict("the patient is not deleted", code="invalid_transition", currentState="live",
                       targetState="restored")
    row = (await uow.conn.execute(
        update(patients).where(patients.c.id == cmd.id)
        .values(deleted_at=None, updated_at=uow.now, version=patients.c.version + 1).returning(*PATIENT_COLUMNS)
    )).one()
    uow.emit(patient_event(PatientRestored, row))
    return patient_view(row)


# ---------------------------------------------------------------- reads (every one audited)


@registry.handles(ListPatients)
async def list_patients(q: ListPatients, uow: UnitOfWork) -> Page[PatientView]:
    filters: list[Any] = []
    if q.include_deleted and uow.actor.role != "system_admin":
        raise Forbidden("only a system administrator may list deleted patients", code="forbidden",
                        field="includeDeleted")
    if not q.include_deleted:
        filters.append(patients.c.deleted_at.is_(None))
    if q.gender:
        filters.append(patients.c.gender.in_([g.value for g in q.gender]))
    if q.blood_type:
        filters.append(patients.c.blood_type.in_([b.value for b in q.blood_type]))
    if q.date_of_birth is not None:
        filters.append(patients.c.date_of_birth == q.date_of_birth)
    if q.is_active is not None:
        filters.append(patients.c.is_active.is_(q.is_active))
    if q.created_from is not None:
        filters.append(patients.c.created_at >= q.created_from)
    if q.created_to is not None:
        filters.append(patients.c.created_at <= q.created_to)
    term = (q.q or "").strip()
    if term:
        rows, total, lower = await search_page(uow.conn, term, PATIENT_COLUMNS, filters, q, _SORT, "-createdAt")
    else:
        stmt = select(*PATIENT_COLUMNS).where(*filters)
        rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", patients.c.id)
    ids = [r.id for r in rows]
    uow.audit_read("patients.list_patients", "patient", None, ids[:100], count=len(ids), query=bool(term))
    return Page(items=[patient_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetPatient)
async def get_patient(q: GetPatient, uow: UnitOfWork) -> PatientView:
    if q.id is not None:
        row = await load_patient(uow.conn, q.id, live=uow.actor.role != "system_admin")
    elif q.mrn is not None:
        row = (await uow.conn.execute(
            select(*PATIENT_COLUMNS).where(patients.c.mrn == mrns.normalise(q.mrn), patients.c.deleted_at.is_(None))
        )).first()
        if row is None:
            raise NotFound("no patient with this MRN")
    else:
        raise invalid_field("id", "required", "give an id or an MRN")
    uow.audit_read("patients.get_patient", "patient", row.id, [row.id])
    return patient_view(row)


@registry.handles(GetPatientStats)
async def patient_stats(q: GetPatientStats, uow: UnitOfWork) -> PatientStats:
    zone = ZoneInfo(uow.settings.clinic_timezone)
    day = today(uow.settings.clinic_timezone, uow.now)
    start_of_day = datetime.combine(day, time(0), zone)
    start_of_month = datetime.combine(day.replace(day=1), time(0), zone)
    live = patients.c.deleted_at.is_(None)
    row = (await uow.conn.execute(select(
        func.count().filter(live),
        func.count().filter(and_(live, patients.c.is_active)),
        func.count().filter(and_(live, not_(patients.c.is_active))),
        func.count().filter(not_(live)),
        func.count().filter(and_(live, patients.c.created_at >= start_of_day)),
        func.count().filter(and_(live, patients.c.created_at >= start_of_month)),
    ))).one()
    return PatientStats(total=row[0], active=row[1], inactive=row[2], deleted=row[3], new_today=row[4],
                        new_this_month=row[5])


@registry.handles(GetPatientRefs)
async def get_patient_refs(q: GetPatientRefs, uow: UnitOfWork) -> list[PatientRef]:
    if not q.ids:
        return []
    rows = (await uow.conn.execute(select(*PATIENT_COLUMNS).where(patients.c.id.in_(q.ids)))).all()
    uow.audit_read("patients.get_patient_refs", "patient", None, [r.id for r in rows][:100])
    return [patient_ref(r) for r in rows]


@registry.handles(FindByMrn)
async def find_by_mrn(q: FindByMrn, uow: UnitOfWork) -> PatientRef:
    row = (await uow.conn.execute(
        select(*PATIENT_COLUMNS).where(patients.c.mrn == mrns.normalise(q.mrn), patients.c.deleted_at.is_(None))
    )).first()
    if row is None:
        raise NotFound("no patient with this MRN")
    uow.audit_read("patients.find_by_mrn", "patient", row.id, [row.id])
    return patient_ref(row)


