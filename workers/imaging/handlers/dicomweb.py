"""The queries behind DICOMweb (imaging.md §7): QIDO-RS search, where the bytes of a study, series
or instance are (WADO-RS retrieve, frames, rendered, bulk data), and the metadata, built once per
version of the study/series and cached gzip'd in Redis for the edge to serve.

Every DICOMweb read is audited; the frequent ones (frames, rendered, thumbnails, metadata) coalesce
per user, patient and action over five minutes in the system worker."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
from sqlalchemy import select

from contracts.errors import NotFound
from contracts.imaging import (
    GetMetadata,
    InstanceLocation,
    LocateInstances,
    Locations,
    MetadataRef,
    QidoReply,
    QidoSearch,
)
from workers.imaging.handlers import registry
from workers.imaging.qido import qido_search
from workers.imaging.tables import instances, series, studies
from workers.runtime.unit_of_work import UnitOfWork

METADATA_TTL = 3600  # seconds a built metadata document stays in Redis after its last use
METADATA_PREFIX = "imaging:metadata:"
GENERATION_KEY = "imaging:index:generation"  # bumped after every commit that changes the index (edge caches)


async def bump_generation(uow: UnitOfWork) -> None:
    """After the commit: the edges' cached QIDO answers and metadata references are stale now."""
    await uow.services.redis.incr(GENERATION_KEY)
_BULK_MARKERS = (b'"BulkDataURI":"/dicom-web/', b'"BulkDataURI": "/dicom-web/')


@registry.handles(QidoSearch)
async def qido(q: QidoSearch, uow: UnitOfWork) -> QidoReply:
    patients: set[Any] = set()
    body, warnings = await qido_search(uow.conn, q, base_url=uow.settings.public_base_url,
                                       default_limit=uow.settings.qido_default_limit,
                                       max_limit=uow.settings.qido_max_limit, patients=patients)
    uow.audit_read(f"imaging.qido_{q.level.value}", "dicomweb", q.study_instance_uid, sorted(patients),
                   matches=len(q.matches))
    return QidoReply(warnings=[*q.warnings, *warnings], items=msgspec.Raw(body), patient_ids=sorted(patients))


def _scope(stmt: Any, q: LocateInstances | GetMetadata) -> Any:
    stmt = stmt.where(studies.c.study_instance_uid == q.study_instance_uid)
    if q.series_instance_uid is not None:
        stmt = stmt.where(series.c.series_instance_uid == q.series_instance_uid)
    if q.sop_instance_uid is not None:
        stmt = stmt.where(instances.c.sop_instance_uid == q.sop_instance_uid)
    return stmt


def _missing(q: LocateInstances | GetMetadata) -> NotFound:
    if q.sop_instance_uid is not None:
        return NotFound("no such instance", code="instance_not_found")
    if q.series_instance_uid is not None:
        return NotFound("no such series", code="series_not_found")
    return NotFound("no such study", code="study_not_found")


@registry.handles(LocateInstances)
async def locate_instances(q: LocateInstances, uow: UnitOfWork) -> Locations:
    stmt = _scope(
        select(instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.blob_key, instances.c.size_bytes,
               instances.c.transfer_syntax_uid, instances.c.number_of_frames, instances.c.rows, instances.c.columns,
               instances.c.bits_allocated, instances.c.photometric_interpretation, instances.c.pixel_index,
               instances.c.instance_number, series.c.series_instance_uid, series.c.series_number,
               studies.c.study_instance_uid, studies.c.id.label("study_id"), studies.c.patient_id)
        .join(series, series.c.id == instances.c.series_id).join(studies, studies.c.id == instances.c.study_id),
        q,
    ).order_by(series.c.series_number.asc().nulls_last(), series.c.id, instances.c.instance_number.asc().nulls_last(),
               instances.c.id)
    rows = (await uow.conn.execute(stmt)).all()
    if not rows:
        raise _missing(q)
    if q.representative:
        first_series = [r for r in rows if r.series_instance_uid == rows[0].series_instance_uid]
        rows = [first_series[len(first_series) // 2]]
    uow.audit_read(f"imaging.wado_{q.purpose}", "study", rows[0].study_id,
                   [rows[0].patient_id] if rows[0].patient_id else [], studyInstanceUid=q.study_instance_uid)
    return Locations(items=[InstanceLocation(
        sop_instance_uid=r.sop_instance_uid, sop_class_uid=r.sop_class_uid,
        series_instance_uid=r.series_instance_uid, study_instance_uid=r.study_instance_uid, blob_key=r.blob_key,
        size_bytes=r.size_bytes, transfer_syntax_uid=r.transfer_syntax_uid, number_of_frames=r.number_of_frames,
        rows=r.rows, columns=r.columns, bits_allocated=r.bits_allocated,
        photometric_interpretation=r.photometric_interpretation, pixel_index=r.pixel_index,
        instance_number=r.instance_number, series_number=r.series_number, study_id=r.study_id,
        patient_id=r.patient_id,
    ) for r in rows])


@registry.handles(GetMetadata)
async def get_metadata(q: GetMetadata, uow: UnitOfWork) -> MetadataRef:
    """The key of the cached document: `<level>:<uid>:<version>`, so a new instance (which bumps the
    series' and study's version) makes a new key and the old one simply expires."""
    if q.sop_instance_uid is not None:
        head = (await uow.conn.execute(_scope(
            select(instances.c.id, studies.c.id.label("study_id"), studies.c.patient_id)
            .join(series, series.c.id == instances.c.series_id).join(studies, studies.c.id == instances.c.study_id),
            q))).first()
        key = f"{METADATA_PREFIX}instance:{q.sop_instance_uid}:1"
        version, where = 1, instances.c.id == (head.id if head else None)
    elif q.series_instance_uid is not None:
        head = (await uow.conn.execute(_scope(
            select(series.c.id, series.c.version, studies.c.id.label("study_id"), studies.c.patient_id)
            .join(studies, studies.c.id == series.c.study_id), q))).first()
        version = head.version if head else 0
        key = f"{METADATA_PREFIX}series:{q.series_instance_uid}:{version}"
        where = instances.c.series_id == (head.id if head else None)
    else:
        head = (await uow.conn.execute(_scope(
            select(studies.c.id.label("study_id"), studies.c.version, studies.c.patient_id), q))).first()
        version = head.version if head else 0
        key = f"{METADATA_PREFIX}study:{q.study_instance_uid}:{version}"
        where = instances.c.study_id == (head.study_id if head else None)
    if head is None:
        raise _missing(q)
    uow.audit_read("imaging.wado_metadata", "study", head.study_id, [head.patient_id] if head.patient_id else [],
                   studyInstanceUid=q.study_instance_uid)
    redis = uow.services.redis
    count = await redis.hget(key, "count")
    if count is not None:
        await redis.expire(key, METADATA_TTL)
        return MetadataRef(cache_key=key, etag=f'"{version}"', count=int(count), study_id=head.study_id,
                           patient_id=head.patient_id)
    docs = (await uow.conn.execute(
        select(instances.c.metadata).join(series, series.c.id == instances.c.series_id).where(where)
        .order_by(series.c.series_number.asc().nulls_last(), series.c.id,
                  instances.c.instance_number.asc().nulls_last(), instances.c.id)
    )).scalars().all()
    body = build_metadata(docs, uow.settings.public_base_url)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"count": len(docs), "gzip": gzip_body(body)})
        pipe.expire(key, METADATA_TTL)
        await pipe.execute()
    return MetadataRef(cache_key=key, etag=f'"{version}"', count=len(docs), study_id=head.study_id,
                       patient_id=head.patient_id)


def build_metadata(docs: list[str], base_url: str) -> bytes:
    """One JSON array of the stored DICOM JSON objects, bulk data URIs made absolute."""
    body = b"[" + b",".join(d.encode() for d in docs) + b"]"
    for marker in _BULK_MARKERS:
        body = body.replace(marker, marker.replace(b"/dicom-web/", base_url.encode() + b"/dicom-web/"))
    return body


def gzip_body(body: bytes) -> bytes:
    """gzip framing (not bare zlib), so the edge can send it as `Content-Encoding: gzip` unchanged."""
    compressor = zlib.compressobj(5, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()
