"""Ingest (imaging.md §4, checks 1–5, 8 and 9): the REST upload and STOW-RS share this handler.

The edge has already staged every part in the blob store (sha256 and size computed on the way).
Here, per part: parse the header (no pixel decoding), validate, check the SOP instance against the
index, match the patient by MRN, check the study and series, then promote the staged bytes to
their permanent key and insert the index rows, all in the command's one transaction. Staged bytes
are discarded after the commit; a permanent blob this transaction created is removed again if it
rolls back, so a failed instance never leaves a file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import Row, Text, cast, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.blobstore import BlobNotFound, BlobStore, BlobStoreError
from contracts.errors import NotFound
from contracts.ids import uuid7
from contracts.imaging import (
    IngestInstances,
    IngestResult,
    InstanceOutcome,
    InstanceResult,
    InstancesStored,
    MatchStatus,
    StudyReceived,
)
from contracts.imaging import InstanceRejected as InstanceRejectedEvent
from contracts.patients import FindByMrn, PatientRef
from workers.imaging.dicom_file import InstanceRejected, ParsedInstance
from workers.imaging.handlers import registry
from workers.imaging.handlers.dicomweb import bump_generation
from workers.imaging.parsing import parse_everywhere, storage_class_supported
from workers.imaging.tables import instances, series, studies
from workers.imaging.views import study_event
from workers.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("imaging.ingest")

MRN_MAX = 20
# One statement object, executed with a list of rows ("insertmanyvalues"): compiled once and cached,
# not a new multi-row VALUES statement to compile for every request.
_INSERT_INSTANCES = (
    pg_insert(instances).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(instances.c.sop_instance_uid, instances.c.id)
)
MAX_EVENT_UIDS = 1000


@dataclass(slots=True)
class Candidate:
    index: int
    parsed: ParsedInstance
    staging_key: str
    sha256: str
    size: int
    file_name: str
    study_id: UUID | None = None
    series_id: UUID | None = None
    replaces: UUID | None = None  # IMAGING_SOP_CONFLICT=replace: the stored instance these bytes replace
    old_blob: str | None = None


@dataclass(slots=True)
class Writes:
    """What this command's writes created or made unreachable, for its events and after-commit work."""

    new_studies: set[UUID] = field(default_factory=set)
    old_blobs: set[str] = field(default_factory=set)


@registry.handles(IngestInstances)
async def ingest_instances(cmd: IngestInstances, uow: UnitOfWork) -> IngestResult:
    blobs: BlobStore = uow.services.blobs
    results: list[InstanceResult | None] = [None] * len(cmd.parts)
    staged = [p.staging_key for p in cmd.parts if p.failure is None]
    uow.after_commit(lambda: _discard(blobs, staged))

    def fail(i: int, code: str, reason: str, parsed: ParsedInstance | InstanceRejected | None = None) -> None:
        results[i] = InstanceResult(
            file_name=cmd.parts[i].file_name, status=InstanceOutcome.FAILED, code=code, reason=reason,
            sop_class_uid=getattr(parsed, "sop_class_uid", None),
            sop_instance_uid=getattr(parsed, "sop_instance_uid", None),
            study_instance_uid=getattr(parsed, "study_instance_uid", None),
        )

    # 1–2: parse every staged part, off the event loop, in one hop.
    candidates: list[Candidate] = []
    async with contextlib.AsyncExitStack() as files:
        paths: list[Path | None] = []
        for i, part in enumerate(cmd.parts):
            if part.failure is not None:
                fail(i, part.failure, _EDGE_FAILURES.get(part.failure, part.failure))
                paths.append(None)
                continue
            try:
                paths.append(await files.enter_async_context(blobs.local_file(part.staging_key)))
            except BlobNotFound:
                fail(i, "storage_failed", "the staged bytes of this part are gone")
                paths.append(None)
        parsed_all = await parse_everywhere(uow.services, paths)
    for i, parsed in enumerate(parsed_all):
        part = cmd.parts[i]
        if parsed is None:
            continue
        if isinstance(parsed, InstanceRejected):
            fail(i, parsed.code, parsed.reason, parsed)
            continue
        if not storage_class_supported(parsed.sop_class_uid):
            fail(i, "sop_class_not_supported", f"{parsed.sop_class_uid} is not a storage SOP class", parsed)
            continue
        # 3: STOW-RS to /studies/{study}
        if cmd.study_instance_uid is not None and parsed.study_instance_uid != cmd.study_instance_uid:
            fail(i, "study_uid_mismatch",
                 f"StudyInstanceUID {parsed.study_instance_uid} is not the study of the request", parsed)
            continue
        candidates.append(Candidate(i, parsed, part.staging_key, part.sha256, part.size, part.file_name))

    # The same SOP instance twice in one request: the first copy decides.
    first: dict[str, Candidate] = {}
    unique: list[Candidate] = []
    for c in candidates:
        seen = first.get(c.parsed.sop_instance_uid)
        if seen is None:
            first[c.parsed.sop_instance_uid] = c
            unique.append(c)
        elif seen.sha256 == c.sha256:
            results[c.index] = InstanceResult(file_name=c.file_name, status=InstanceOutcome.ALREADY_STORED,
                                              sop_class_uid=c.parsed.sop_class_uid,
                                              sop_instance_uid=c.parsed.sop_instance_uid,
                                              study_instance_uid=c.parsed.study_instance_uid,
                                              series_instance_uid=c.parsed.series_instance_uid)
        else:
            fail(c.index, "duplicate_in_request", "another part of this request has this SOP Instance UID "
                 "with other bytes", c.parsed)

    # 4: already stored?
    fresh = await _check_existing(uow, unique, results, fail)

    # 5: patient by MRN; 8: study and series.
    patients = await _match_patients(uow, fresh)
    writes = Writes()
    fresh = await _lock_studies(uow, fresh, patients, fail, writes)
    fresh = await _lock_series(uow, fresh, fail)

    # 9: promote, then index.
    stored = await _promote_and_insert(uow, blobs, fresh, results, cmd, fail, writes)
    await _update_counters(uow, stored, cmd, writes)
    if stored:
        uow.after_commit(lambda: bump_generation(uow))

    # Duplicates resolved against instances stored in this same request.
    for i, r in enumerate(results):
        if r is not None and r.status == InstanceOutcome.ALREADY_STORED and r.instance_id is None:
            seen = first.get(r.sop_instance_uid or "")
            if seen is not None and results[seen.index] is not None:
                _copy_ids(results, i, seen.index)

    for r in results:
        if r is not None and r.status == InstanceOutcome.FAILED:
            uow.emit(InstanceRejectedEvent(sop_instance_uid=r.sop_instance_uid,
                                           study_instance_uid=r.study_instance_uid, code=r.code or "failed",
                                           source=cmd.source))
    final = [r for r in results if r is not None]
    assert len(final) == len(cmd.parts)
    counts = defaultdict(int)
    for r in final:
        counts[r.status] += 1
    study_ids = sorted({r.study_id for r in final if r.study_id is not None})
    uow.target("study" if len(study_ids) == 1 else "studies", study_ids[0] if len(study_ids) == 1 else None,
               patient_ids=sorted({p for p in patients.values() if p is not None}),
               stored=counts[InstanceOutcome.STORED], alreadyStored=counts[InstanceOutcome.ALREADY_STORED],
               failed=counts[InstanceOutcome.FAILED], source=cmd.source.value)
    return IngestResult(results=final, stored=counts[InstanceOutcome.STORED],
                        already_stored=counts[InstanceOutcome.ALREADY_STORED], failed=counts[InstanceOutcome.FAILED])


_EDGE_FAILURES = {
    "too_large": "the part is larger than the per-instance limit",
    "not_dicom": "the part is not application/dicom",
}


def _copy_ids(results: list[InstanceResult | None], target: int, source: int) -> None:
    src, dst = results[source], results[target]
    if src is None or dst is None or src.status == InstanceOutcome.FAILED:
        return
    dst.study_id, dst.series_id, dst.instance_id = src.study_id, src.series_id, src.instance_id


async def _discard(blobs: BlobStore, keys: list[str]) -> None:
    await asyncio.gather(*(blobs.discard(k) for k in keys), return_exceptions=True)


async def _check_existing(uow: UnitOfWork, unique: list[Candidate], results: list[InstanceResult | None],
                          fail: Any) -> list[Candidate]:
    if not unique:
        return []
    rows = {r.sop_instance_uid: r for r in (await uow.conn.execute(
        select(instances.c.sop_instance_uid, instances.c.sha256, instances.c.id, instances.c.series_id,
               instances.c.study_id, instances.c.blob_key, series.c.series_instance_uid)
        .join(series, series.c.id == instances.c.series_id)
        .where(instances.c.sop_instance_uid.in_([c.parsed.sop_instance_uid for c in unique]))
    )).all()}
    fresh: list[Candidate] = []
    for c in unique:
        row = rows.get(c.parsed.sop_instance_uid)
        if row is None:
            fresh.append(c)
        elif row.sha256 == c.sha256:
            results[c.index] = _already(c, row)
        elif (uow.settings.imaging_sop_conflict == "replace" and c.replaces is None
              and row.series_instance_uid == c.parsed.series_instance_uid):
            # Replaced in place if its study still takes instances (check 8 below: `scanned`).
            c.replaces, c.old_blob = row.id, row.blob_key
            fresh.append(c)
        else:
            fail(c.index, "sop_instance_conflict",
                 "this SOP Instance UID is stored with other bytes", c.parsed)
    return fresh


def _already(c: Candidate, row: Row[Any]) -> InstanceResult:
    return InstanceResult(file_name=c.file_name, status=InstanceOutcome.ALREADY_STORED,
                          sop_class_uid=c.parsed.sop_class_uid, sop_instance_uid=c.parsed.sop_instance_uid,
                          study_instance_uid=c.parsed.study_instance_uid,
                          series_instance_uid=row.series_instance_uid, study_id=row.study_id,
                          series_id=row.series_id, instance_id=row.id)


async def _match_patients(uow: UnitOfWork, fresh: list[Candidate]) -> dict[str, UUID | None]:
    """PatientID → the live patient with that MRN (patients.find_by_mrn), else None (unmatched)."""
    found: dict[str, UUID | None] = {}
    for pid in sorted({(c.parsed.study.get("patient_id_in_file") or "").strip() for c in fresh}):
        if not pid or len(pid) > MRN_MAX:
            found[pid] = None
            continue
        try:
            ref: PatientRef = await uow.ask(FindByMrn(mrn=pid), PatientRef)
            found[pid] = ref.id
        except NotFound:
            found[pid] = None
    return found


def _pid(c: Candidate) -> str:
    return (c.parsed.study.get("patient_id_in_file") or "").strip()


async def _lock_studies(uow: UnitOfWork, fresh: list[Candidate], patients: dict[str, UUID | None],
                        fail: Any, writes: Writes) -> list[Candidate]:
    """Check 8 for studies: insert-or-get each study, locked for this transaction."""
    by_uid: dict[str, list[Candidate]] = defaultdict(list)
    for c in fresh:
        by_uid[c.parsed.study_instance_uid].append(c)
    ok: list[Candidate] = []
    for uid in sorted(by_uid):  # a fixed order: two requests never wait on each other's studies crosswise
        group = by_uid[uid]
        head = group[0]
        patient_id = patients.get(_pid(head))
        row = (await uow.conn.execute(
            select(studies.c.id, studies.c.patient_id, studies.c.patient_id_in_file, studies.c.status)
            .where(studies.c.study_instance_uid == uid).with_for_update()
        )).first()
        if row is None:
            values = _study_values(head.parsed, patient_id, uow)
            inserted = (await uow.conn.execute(
                pg_insert(studies).values(**values).on_conflict_do_nothing(index_elements=["study_instance_uid"])
                .returning(studies.c.id)
            )).first()
            if inserted is not None:
                writes.new_studies.add(inserted.id)
                for c in group:
                    _study_check(c, inserted.id, patient_id, _pid(head), patients, None, ok, fail)
                continue
            row = (await uow.conn.execute(
                select(studies.c.id, studies.c.patient_id, studies.c.patient_id_in_file, studies.c.status)
                .where(studies.c.study_instance_uid == uid).with_for_update()
            )).one()
        for c in group:
            _study_check(c, row.id, row.patient_id, row.patient_id_in_file or "", patients, row, ok, fail)
    return ok


def _study_check(c: Candidate, study_id: UUID, study_patient: UUID | None, study_pid: str,
                 patients: dict[str, UUID | None], row: Row[Any] | None, ok: list[Candidate], fail: Any) -> None:
    """Check 8: the study accepts instances (`scanned`) of the same patient: the same matched
    patient, or, both unmatched, the same PatientID in the file."""
    if row is not None and row.status != "scanned":
        fail(c.index, "study_locked", f"the study is {row.status}: no instance may be added", c.parsed)
        return
    mine = patients.get(_pid(c))
    same = mine == study_patient if (mine or study_patient) else _pid(c) == study_pid
    if not same:
        fail(c.index, "study_patient_mismatch", "the study belongs to another patient", c.parsed)
        return
    c.study_id = study_id
    ok.append(c)


def _study_values(p: ParsedInstance, patient_id: UUID | None, uow: UnitOfWork) -> dict[str, Any]:
    s = p.study
    return {
        "id": uuid7(),
        "study_instance_uid": p.study_instance_uid,
        "patient_id": patient_id,
        "match_status": MatchStatus.MATCHED if patient_id else MatchStatus.UNMATCHED,
        "patient_id_in_file": s.get("patient_id_in_file"),
        "patient_name_in_file": s.get("patient_name_in_file"),
        "patient_name_key": s.get("patient_name_key"),
        "patient_birth_date": s.get("patient_birth_date"),
        "patient_sex": s.get("patient_sex"),
        "accession_number": s.get("accession_number"),
        "study_id_tag": s.get("study_id_tag"),
        "study_date": s.get("study_date"),
        "study_time": s.get("study_time"),
        "study_description": s.get("study_description"),
        "referring_physician_name": s.get("referring_physician_name"),
        "attributes": p.study_attributes,
        "specific_character_set": p.specific_character_set,
        "received_at": uow.now,
        "last_instance_at": uow.now,
        "created_by": uow.actor_id,
    }


async def _lock_series(uow: UnitOfWork, fresh: list[Candidate], fail: Any) -> list[Candidate]:
    by_uid: dict[str, list[Candidate]] = defaultdict(list)
    for c in fresh:
        by_uid[c.parsed.series_instance_uid].append(c)
    ok: list[Candidate] = []
    for uid in sorted(by_uid):
        group = by_uid[uid]
        head = group[0]
        row = (await uow.conn.execute(
            select(series.c.id, series.c.study_id).where(series.c.series_instance_uid == uid).with_for_update()
        )).first()
        if row is None:
            s = head.parsed.series
            inserted = (await uow.conn.execute(
                pg_insert(series).values(
                    id=uuid7(), study_id=head.study_id, series_instance_uid=uid, modality=s.get("modality"),
                    series_number=s.get("series_number"), series_description=s.get("series_description"),
                    body_part_examined=s.get("body_part_examined"), series_date=s.get("series_date"),
                    series_time=s.get("series_time"), protocol_name=s.get("protocol_name"),
                    attributes=head.parsed.series_attributes,
                    specific_character_set=head.parsed.specific_character_set,
                ).on_conflict_do_nothing(index_elements=["series_instance_uid"])
                .returning(series.c.id, series.c.study_id)
            )).first()
            row = inserted or (await uow.conn.execute(
                select(series.c.id, series.c.study_id).where(series.c.series_instance_uid == uid).with_for_update()
            )).one()
        for c in group:
            if row.study_id != c.study_id:
                fail(c.index, "series_study_mismatch", "this series belongs to another study", c.parsed)
                continue
            c.series_id = row.id
            ok.append(c)
    return ok


async def _promote_and_insert(uow: UnitOfWork, blobs: BlobStore, fresh: list[Candidate],
                              results: list[InstanceResult | None], cmd: IngestInstances, fail: Any,
                              writes: Writes) -> list[Candidate]:
    if not fresh:
        return []
    keys = [blobs.final_key(c.parsed.study_instance_uid, c.sha256) for c in fresh]
    outcomes = await asyncio.gather(*(blobs.promote(c.staging_key, k) for c, k in zip(fresh, keys, strict=True)),
                                    return_exceptions=True)
    created = [k for k, outcome in zip(keys, outcomes, strict=True) if outcome is True]
    uow.on_rollback(lambda: _discard_final(blobs, created))  # only what this command made; shared blobs stay
    ready: list[tuple[Candidate, str]] = []
    for c, key, outcome in zip(fresh, keys, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, BlobStoreError | BlobNotFound | OSError):
                raise outcome
            log.warning("promotion failed", extra={"fields": {"error": repr(outcome)}})
            fail(c.index, "storage_failed", "the bytes could not be stored", c.parsed)
            continue
        ready.append((c, key))
    if not ready:
        return []
    rows = []
    for c, key in ready:
        p, inst = c.parsed, c.parsed.instance
        pixel = p.pixel
        rows.append({
            "id": uuid7(), "study_id": c.study_id, "series_id": c.series_id,
            "sop_instance_uid": p.sop_instance_uid, "sop_class_uid": p.sop_class_uid,
            "instance_number": inst.get("instance_number"), "transfer_syntax_uid": p.transfer_syntax_uid,
            "number_of_frames": inst.get("number_of_frames") or 1, "rows": inst.get("rows"),
            "columns": inst.get("columns"), "bits_allocated": inst.get("bits_allocated"),
            "photometric_interpretation": inst.get("photometric_interpretation"),
            "size_bytes": c.size, "sha256": c.sha256,
            "file_name": f"{p.sop_instance_uid}.dcm", "source": cmd.source.value, "blob_key": key,
            "metadata": p.metadata.decode(),
            "pixel_data_offset": pixel.offset if pixel else None,
            "pixel_data_length": pixel.length if pixel else None,
            "pixel_index": pixel.to_json() if pixel else None,
            "specific_character_set": p.specific_character_set,
            "stored_at": uow.now, "stored_by": uow.actor_id,
        })
    replaced = [c for c, _ in ready if c.replaces is not None]
    if replaced:
        await uow.conn.execute(delete(instances).where(instances.c.id.in_([c.replaces for c in replaced])))
        writes.old_blobs = {c.old_blob for c in replaced if c.old_blob}
    inserted = {r.sop_instance_uid: r.id for r in (await uow.conn.execute(_INSERT_INSTANCES, rows)).all()}
    stored: list[Candidate] = []
    lost = [c for c, _ in ready if c.parsed.sop_instance_uid not in inserted]
    if lost:  # stored concurrently by another request since the check
        await _check_existing(uow, lost, results, fail)
    for c, _ in ready:
        iid = inserted.get(c.parsed.sop_instance_uid)
        if iid is None:
            continue
        results[c.index] = InstanceResult(
            file_name=c.file_name, status=InstanceOutcome.STORED, sop_class_uid=c.parsed.sop_class_uid,
            sop_instance_uid=c.parsed.sop_instance_uid, study_instance_uid=c.parsed.study_instance_uid,
            series_instance_uid=c.parsed.series_instance_uid, study_id=c.study_id, series_id=c.series_id,
            instance_id=iid, reason="replaced the stored bytes" if c.replaces else None)
        stored.append(c)
    olds = writes.old_blobs
    if olds:  # content-addressed: keep an old blob another instance (or the new bytes) still uses
        still = set((await uow.conn.execute(
            select(instances.c.blob_key).where(instances.c.blob_key.in_(olds))
        )).scalars())
        gone = sorted(olds - still)
        uow.after_commit(lambda: _discard_final(blobs, gone))
    return stored


async def _discard_final(blobs: BlobStore, keys: list[str]) -> None:
    await asyncio.gather(*(blobs.delete(k) for k in keys), return_exceptions=True)


async def _update_counters(uow: UnitOfWork, stored: list[Candidate], cmd: IngestInstances, writes: Writes) -> None:
    if not stored:
        return
    per_series: dict[UUID, int] = defaultdict(int)
    per_study: dict[UUID, list[Candidate]] = defaultdict(list)
    for c in stored:
        assert c.series_id is not None and c.study_id is not None
        per_series[c.series_id] += 0 if c.replaces else 1  # a replacement changes the version, not the count
        per_study[c.study_id].append(c)
    for series_id in sorted(per_series):
        await uow.conn.execute(
            update(series).where(series.c.id == series_id)
            .values(number_of_instances=series.c.number_of_instances + per_series[series_id],
                    updated_at=uow.now, version=series.c.version + 1)
        )
    for study_id in sorted(per_study):
        group = per_study[study_id]
        modalities = (
            select(func.coalesce(func.array_agg(series.c.modality.distinct()), cast(literal("{}"), ARRAY(Text))))
            .where(series.c.study_id == study_id, series.c.modality.is_not(None)).scalar_subquery()
        )
        row = (await uow.conn.execute(
            update(studies).where(studies.c.id == study_id)
            .values(number_of_instances=studies.c.number_of_instances + sum(1 for c in group if not c.replaces),
                    number_of_series=select(func.count()).select_from(series)
                    .where(series.c.study_id == study_id).scalar_subquery(),
                    modalities_in_study=modalities, last_instance_at=uow.now, stable_at=None,
                    updated_at=uow.now, version=studies.c.version + 1)
            .returning(studies)
        )).one()
        if study_id in writes.new_studies:
            uow.emit(study_event(StudyReceived, row))
        uow.emit(InstancesStored(
            study_id=study_id, study_instance_uid=row.study_instance_uid, patient_id=row.patient_id,
            order_id=row.order_id, source=cmd.source,
            count=len(group), series_instance_uids=sorted({c.parsed.series_instance_uid for c in group}),
            sop_instance_uids=[c.parsed.sop_instance_uid for c in group][:MAX_EVENT_UIDS],
        ))

