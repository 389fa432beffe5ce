"""Reading encounters: lists, a room's queue, queue and encounter stats, one encounter, a patient's
overview. Every read names the patients it returned in the audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, case, desc, distinct, func, or_, select

from contracts.common import Page, Role
from contracts.encounters import (
    EncounterQueue,
    EncounterState,
    EncounterStats,
    EncounterStatus,
    EncounterSummary,
    EncounterType,
    EncounterView,
    GetEncounter,
    GetEncounterState,
    GetEncounterStats,
    GetPatientOverview,
    GetQueueStats,
    ListEncounters,
    PatientOverview,
    Priority,
    QueueStats,
)
from contracts.errors import NotFound, invalid_field
from contracts.patients import LatestVital
from contracts.scheduling import AssignmentView, CurrentAssignments
from workers.patients.handlers import registry
from workers.patients.name_search import NameQuery, correct, identifier_match
from workers.patients.queries import condition_view, load_patient, patient_ref, patient_view, today
from workers.patients.tables import conditions, encounters, patients, vital_signs
from workers.patients.views import encounter_views
from workers.patients.vitals import CATALOGUE
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork

OPEN = ("waiting", "arrived", "in_progress")
_SORT = {
    "queueNumber": encounters.c.queue_number,
    "priority": case((encounters.c.priority == "stat", 0), (encounters.c.priority == "urgent", 1), else_=2),
    "createdAt": encounters.c.created_at,
}


async def _patient_search(uow: UnitOfWork, stmt: Select[Any], q: str) -> Select[Any]:
    """Encounters of the patients a free-text search finds: an identifier, or every typed word of
    the name (typo-tolerant, see workers.patients.name_search)."""
    term = q.strip()
    match = identifier_match(term)
    words = await correct(uow.conn, term)
    if words is not None:
        match = or_(match, NameQuery.of(words).matches())
    return stmt.where(encounters.c.patient_id.in_(select(patients.c.id).where(match)))


@registry.handles(ListEncounters)
async def list_encounters(q: ListEncounters, uow: UnitOfWork) -> Page[EncounterView]:
    e = encounters
    stmt = select(e)
    for value, column in ((q.patient_id, e.c.patient_id), (q.room_id, e.c.room_id), (q.service_id, e.c.service_id),
                          (q.service_room_id, e.c.service_room_id), (q.created_by, e.c.created_by),
                          (q.assigned_physician_id, e.c.assigned_physician_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    for values, column in ((q.status, e.c.status), (q.type, e.c.type), (q.priority, e.c.priority)):
        if values:
            stmt = stmt.where(column.in_([v.value for v in values]))
    if q.date_from is not None:
        stmt = stmt.where(e.c.business_date >= q.date_from)
    if q.date_to is not None:
        stmt = stmt.where(e.c.business_date <= q.date_to)
    if q.q:
        stmt = await _patient_search(uow, stmt, q.q)
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", e.c.id)
    views = await encounter_views(uow, rows)
    uow.audit_read("patients.list_encounters", "encounter", q.patient_id,
                   sorted({v.patient_id for v in views})[:100], count=len(views))
    return Page(items=views, total=total, page=q.page, limit=q.limit, total_is_lower_bound=lower)


@registry.handles(EncounterQueue)
async def encounter_queue(q: EncounterQueue, uow: UnitOfWork) -> Page[EncounterView]:
    room_id = q.room_id
    if room_id is None:
        duty: list[AssignmentView] = await uow.ask(CurrentAssignments(), list[AssignmentView])
        if not duty:
            raise invalid_field("roomId", "required", "you are not on duty in a room now: name one")
        room_id = duty[0].room_id
    day = q.date or today(uow.settings.clinic_timezone, uow.now)
    statuses = [s.value for s in q.status] if q.status else list(OPEN)
    e = encounters
    stmt = select(e).where(e.c.room_id == room_id, e.c.business_date == day, e.c.status.in_(statuses))
    if q.priority:
        stmt = stmt.where(e.c.priority.in_([p.value for p in q.priority]))
    if q.q:
        stmt = await _patient_search(uow, stmt, q.q)
    q.window_check()
    ordered = stmt.order_by(desc(e.c.status == "in_progress"), _SORT["priority"], e.c.queue_number)
    rows = (await uow.conn.execute(ordered.limit(q.limit).offset((q.page - 1) * q.limit))).all()
    total = (await uow.conn.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    views = await encounter_views(uow, rows)
    uow.audit_read("patients.encounter_queue", "room", room_id, sorted({v.patient_id for v in views})[:100],
                   count=len(views))
    return Page(items=views, total=total, page=q.page, limit=q.limit)


@registry.handles(GetQueueStats)
async def queue_stats(q: GetQueueStats, uow: UnitOfWork) -> list[QueueStats]:
    day = q.date or today(uow.settings.clinic_timezone, uow.now)
    e = encounters
    rows = (await uow.conn.execute(
        select(
            e.c.room_id, func.count(),
            *(func.count().filter(e.c.status == s) for s in ("waiting", "arrived", "in_progress", "finished",
                                                              "cancelled")),
            func.coalesce(func.max(e.c.queue_number), 0),
            func.array_agg(e.c.queue_number).filter(e.c.status == "in_progress"),
            func.min(e.c.queue_number).filter(e.c.status.in_(("waiting", "arrived"))),
        ).where(e.c.room_id.in_(q.room_ids), e.c.business_date == day).group_by(e.c.room_id)
    )).all()
    by_room = {r[0]: r for r in rows}
    out = []
    for room_id in q.room_ids:
        r = by_room.get(room_id)
        if r is None:
            out.append(QueueStats(room_id=room_id, date=day, total=0, waiting=0, arrived=0, in_progress=0,
                                  finished=0, cancelled=0, last_queue_number=0, now_serving=[], next_up=None))
        else:
            out.append(QueueStats(room_id=room_id, date=day, total=r[1], waiting=r[2], arrived=r[3], in_progress=r[4],
                                  finished=r[5], cancelled=r[6], last_queue_number=r[7],
                                  now_serving=sorted(r[8] or []), next_up=r[9]))
    return out


@registry.handles(GetEncounterStats)
async def encounter_stats(q: GetEncounterStats, uow: UnitOfWork) -> EncounterStats:
    e = encounters
    where = []
    if q.date_from is not None:
        where.append(e.c.business_date >= q.date_from)
    if q.date_to is not None:
        where.append(e.c.business_date <= q.date_to)
    if q.room_id is not None:
        where.append(e.c.room_id == q.room_id)
    cond = and_(*where) if where else None

    async def grouped(column: Any) -> dict[str, int]:
        stmt = select(column, func.count()).group_by(column)
        if cond is not None:
            stmt = stmt.where(cond)
        return {k: v for k, v in (await uow.conn.execute(stmt)).all()}

    day = today(uow.settings.clinic_timezone, uow.now)
    totals = select(
        func.count(), func.count().filter(e.c.business_date == day),
        func.avg(func.extract("epoch", e.c.started_at - e.c.created_at) / 60).filter(e.c.started_at.isnot(None)),
        func.count(distinct(e.c.patient_id)),
    )
    if cond is not None:
        totals = totals.where(cond)
    total, today_count, wait, patients_count = (await uow.conn.execute(totals)).one()
    by_status, by_type, by_priority = await grouped(e.c.status), await grouped(e.c.type), await grouped(e.c.priority)
    return EncounterStats(
        total=total,
        by_status={s.value: by_status.get(s.value, 0) for s in EncounterStatus},
        by_type={t.value: by_type.get(t.value, 0) for t in EncounterType},
        by_priority={p.value: by_priority.get(p.value, 0) for p in Priority},
        today=today_count,
        average_wait_minutes=round(float(wait), 2) if wait is not None else None,
        average_per_patient=round(total / patients_count, 2) if patients_count else None,
    )


@registry.handles(GetEncounter)
async def get_encounter(q: GetEncounter, uow: UnitOfWork) -> EncounterView:
    row = (await uow.conn.execute(select(encounters).where(encounters.c.id == q.id))).first()
    if row is None:
        raise NotFound("no such encounter")
    uow.audit_read("patients.get_encounter", "encounter", row.id, [row.patient_id])
    return (await encounter_views(uow, [row]))[0]


@registry.handles(GetEncounterState)
async def get_encounter_state(q: GetEncounterState, uow: UnitOfWork) -> EncounterState:
    row = (await uow.conn.execute(select(encounters).where(encounters.c.id == q.id))).first()
    if row is None:
        raise NotFound("no such encounter")
    return EncounterState(id=row.id, patient_id=row.patient_id, status=EncounterStatus(row.status), room_id=row.room_id,
                          service_id=row.service_id, assigned_physician_id=row.assigned_physician_id)


def _summary(row: Any) -> EncounterSummary:
    return EncounterSummary(id=row.id, queue_number=row.queue_number, business_date=row.business_date,
                            room_id=row.room_id, service_id=row.service_id, type=EncounterType(row.type),
                            priority=Priority(row.priority), status=EncounterStatus(row.status),
                            assigned_physician_id=row.assigned_physician_id, created_at=row.created_at)


@registry.handles(GetPatientOverview)
async def patient_overview(q: GetPatientOverview, uow: UnitOfWork) -> PatientOverview:
    patient = await load_patient(uow.conn, q.id)
    v = vital_signs
    latest = (await uow.conn.execute(
        select(v.c.code, v.c.value, v.c.unit, v.c.recorded_at).distinct(v.c.code)
        .where(v.c.patient_id == q.id, v.c.status == "final").order_by(v.c.code, v.c.recorded_at.desc())
    )).all()
    active = None
    if uow.actor.role != Role.RECEPTION_STAFF:
        rows = (await uow.conn.execute(
            select(conditions).where(conditions.c.patient_id == q.id, conditions.c.deleted_at.is_(None),
                                     conditions.c.clinical_status.in_(("active", "recurrent")))
            .order_by(conditions.c.recorded_at.desc()).limit(5)
        )).all()
        ref = patient_ref(patient)
        active = [condition_view(r, ref) for r in rows]
    recent = (await uow.conn.execute(
        select(encounters).where(encounters.c.patient_id == q.id).order_by(encounters.c.created_at.desc()).limit(5)
    )).all()
    open_row = (await uow.conn.execute(
        select(encounters).where(encounters.c.patient_id == q.id, encounters.c.status.in_(OPEN))
        .order_by(encounters.c.created_at.desc()).limit(1)
    )).first()
    uow.audit_read("patients.patient_overview", "patient", patient.id, [patient.id])
    return PatientOverview(
        patient=patient_view(patient),
        latest_vital_signs=[
            LatestVital(code=r.code, display=CATALOGUE[r.code].display if r.code in CATALOGUE else r.code,
                        value=r.value, unit=r.unit, recorded_at=r.recorded_at)
            for r in latest
        ],
        active_conditions=active,
        open_encounter=_summary(open_row) if open_row is not None else None,
        recent_encounters=[_summary(r) for r in recent],
        report_count=0,  # diagnosis reports arrive with their own issue; none can exist before it
    )

