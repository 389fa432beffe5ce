"""The study views of the web UI (imaging.md §3): lists, details, stats, and deleting a study.
Every read that returns patient data is audited (coalesced per user, patient and action)."""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, func, select

from contracts.blobstore import BlobStore
from contracts.common import Page
from contracts.errors import Conflict, NotFound
from contracts.imaging import (
    DeleteStudy,
    GetInstance,
    GetSeries,
    GetStudy,
    GetStudyStats,
    InstanceView,
    ListInstances,
    ListSeries,
    ListStudies,
    SeriesView,
    StudyDeleted,
    StudyDetail,
    StudyStats,
    StudyStatus,
    StudyStatusCount,
    StudyView,
)
from workers.imaging.dicom_file import name_key
from workers.imaging.handlers import registry
from workers.imaging.handlers.dicomweb import bump_generation
from workers.imaging.tables import instances, series, studies
from workers.imaging.views import instance_view, series_view, study_event, study_view
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork

DELETABLE = ("scanned", "rejected", "technician_verified")
_STUDY_SORT = {
    "studyDate": studies.c.study_date,
    "createdAt": studies.c.created_at,
    "receivedAt": studies.c.received_at,
    "status": studies.c.status,
}
_SERIES_SORT = {"seriesNumber": series.c.series_number, "createdAt": series.c.created_at}
_INSTANCE_SORT = {"instanceNumber": instances.c.instance_number, "storedAt": instances.c.stored_at}


def _patients_of(rows: list[Any]) -> list[UUID]:
    return sorted({r.patient_id for r in rows if r.patient_id is not None})


@registry.handles(ListStudies)
async def list_studies(q: ListStudies, uow: UnitOfWork) -> Page[StudyView]:
    s = studies
    stmt = select(s)
    if q.status:
        stmt = stmt.where(s.c.status.in_([v.value for v in q.status]))
    if q.patient_id is not None:
        stmt = stmt.where(s.c.patient_id == q.patient_id)
    if q.mrn:
        stmt = stmt.where(s.c.patient_id_in_file == q.mrn.strip().upper())
    if q.patient_name:
        stmt = stmt.where(s.c.patient_name_key.like(like_pattern(name_key(q.patient_name))))
    if q.match_status is not None:
        stmt = stmt.where(s.c.match_status == q.match_status.value)
    if q.accession_number:
        stmt = stmt.where(s.c.accession_number == q.accession_number)
    if q.modality:
        stmt = stmt.where(s.c.modalities_in_study.contains([q.modality.upper()]))
    if q.study_date_from is not None:
        stmt = stmt.where(s.c.study_date >= q.study_date_from)
    if q.study_date_to is not None:
        stmt = stmt.where(s.c.study_date <= q.study_date_to)
    if q.study_instance_uid:
        stmt = stmt.where(s.c.study_instance_uid == q.study_instance_uid)
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _STUDY_SORT, "-createdAt", s.c.id)
    base = uow.settings.public_base_url
    uow.audit_read("imaging.list_studies", "study", None, _patients_of(rows), count=len(rows))
    return Page(items=[study_view(r, base) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


async def load_study(uow: UnitOfWork, study_id: UUID, *, lock: bool = False) -> Any:
    stmt = select(studies).where(studies.c.id == study_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such study")
    return row


@registry.handles(GetStudy)
async def get_study(q: GetStudy, uow: UnitOfWork) -> StudyDetail:
    row = await load_study(uow, q.id)
    base = uow.settings.public_base_url
    rows = (await uow.conn.execute(
        select(series).where(series.c.study_id == row.id)
        .order_by(series.c.series_number.asc().nulls_last(), series.c.created_at, series.c.id)
    )).all()
    view = study_view(row, base)
    uow.audit_read("imaging.get_study", "study", row.id, _patients_of([row]))
    return StudyDetail(**{f: getattr(view, f) for f in view.__struct_fields__},
                       series=[series_view(r, row.study_instance_uid, base) for r in rows])


@registry.handles(GetStudyStats)
async def study_stats(q: GetStudyStats, uow: UnitOfWork) -> StudyStats:
    zone = ZoneInfo(uow.settings.clinic_timezone)
    today = uow.now.astimezone(zone).date()
    date_from, date_to = q.date_from or today, q.date_to or today
    if date_to < date_from:
        from contracts.errors import invalid_field

        raise invalid_field("dateTo", "invalid_range", "dateTo is before dateFrom")
    start = datetime.combine(date_from, time(), zone)
    end = datetime.combine(date_to + timedelta(days=1), time(), zone)
    rows = (await uow.conn.execute(
        select(studies.c.status, func.count().label("total"),
               func.count().filter(and_(studies.c.received_at >= start, studies.c.received_at < end)).label("today"))
        .group_by(studies.c.status)
    )).all()
    unmatched = (await uow.conn.execute(
        select(func.count()).select_from(studies).where(studies.c.match_status == "unmatched")
    )).scalar_one()
    counts = {r.status: r for r in rows}
    by_status = [StudyStatusCount(status=st, today=counts[st].today if st in counts else 0,
                                  total=counts[st].total if st in counts else 0) for st in StudyStatus]
    return StudyStats(date_from=date_from, date_to=date_to, by_status=by_status,
                      total=sum(c.total for c in by_status), unmatched=unmatched)


@registry.handles(ListSeries)
async def list_series(q: ListSeries, uow: UnitOfWork) -> Page[SeriesView]:
    study = await load_study(uow, q.study_id)
    rows, total, lower = await fetch_page(uow.conn, select(series).where(series.c.study_id == study.id), q,
                                          _SERIES_SORT, "seriesNumber", series.c.id)
    base = uow.settings.public_base_url
    uow.audit_read("imaging.list_series", "study", study.id, _patients_of([study]))
    return Page(items=[series_view(r, study.study_instance_uid, base) for r in rows], total=total, page=q.page,
                limit=q.limit, total_is_lower_bound=lower)


@registry.handles(GetSeries)
async def get_series(q: GetSeries, uow: UnitOfWork) -> SeriesView:
    row = (await uow.conn.execute(
        select(series, studies.c.study_instance_uid, studies.c.patient_id)
        .join(studies, studies.c.id == series.c.study_id).where(series.c.id == q.id)
    )).first()
    if row is None:
        raise NotFound("no such series")
    uow.audit_read("imaging.get_series", "study", row.study_id, _patients_of([row]))
    return series_view(row, row.study_instance_uid, uow.settings.public_base_url)


@registry.handles(ListInstances)
async def list_instances(q: ListInstances, uow: UnitOfWork) -> Page[InstanceView]:
    head = (await uow.conn.execute(
        select(series.c.id, series.c.series_instance_uid, series.c.study_id, studies.c.study_instance_uid,
               studies.c.patient_id)
        .join(studies, studies.c.id == series.c.study_id).where(series.c.id == q.series_id)
    )).first()
    if head is None:
        raise NotFound("no such series")
    cols = [c for c in instances.c if c.name not in ("metadata", "pixel_index")]
    rows, total, lower = await fetch_page(uow.conn, select(*cols).where(instances.c.series_id == head.id), q,
                                          _INSTANCE_SORT, "instanceNumber", instances.c.id)
    base = uow.settings.public_base_url
    uow.audit_read("imaging.list_instances", "study", head.study_id, _patients_of([head]))
    return Page(items=[instance_view(r, head.study_instance_uid, head.series_instance_uid, base) for r in rows],
                total=total, page=q.page, limit=q.limit, total_is_lower_bound=lower)


@registry.handles(GetInstance)
async def get_instance(q: GetInstance, uow: UnitOfWork) -> InstanceView:
    cols = [c for c in instances.c if c.name not in ("metadata", "pixel_index")]
    row = (await uow.conn.execute(
        select(*cols, series.c.series_instance_uid, studies.c.study_instance_uid, studies.c.patient_id)
        .join(series, series.c.id == instances.c.series_id).join(studies, studies.c.id == instances.c.study_id)
        .where(instances.c.id == q.id)
    )).first()
    if row is None:
        raise NotFound("no such instance")
    uow.audit_read("imaging.get_instance", "study", row.study_id, _patients_of([row]))
    return instance_view(row, row.study_instance_uid, row.series_instance_uid, uow.settings.public_base_url)


@registry.handles(DeleteStudy)
async def delete_study(cmd: DeleteStudy, uow: UnitOfWork) -> None:
    row = await load_study(uow, cmd.id, lock=True)
    uow.target("study", row.id, patient_ids=_patients_of([row]), reason=cmd.reason)
    if row.status not in DELETABLE:
        raise Conflict(f"a {row.status} study cannot be deleted", code="study_locked")
    keys = set((await uow.conn.execute(
        select(instances.c.blob_key).where(instances.c.study_id == row.id)
    )).scalars())
    await uow.conn.execute(delete(studies).where(studies.c.id == row.id))  # series and instances cascade
    if keys:  # content-addressed: keep a blob another study's instance still points at
        shared = set((await uow.conn.execute(
            select(instances.c.blob_key).where(instances.c.blob_key.in_(keys))
        )).scalars())
        keys -= shared
    blobs: BlobStore = uow.services.blobs

    async def remove() -> None:
        await asyncio.gather(*(blobs.delete(k) for k in sorted(keys)), return_exceptions=True)

    uow.after_commit(remove)
    uow.after_commit(lambda: bump_generation(uow))
    uow.emit(study_event(StudyDeleted, row, status=StudyStatus(row.status), reason=cmd.reason))

