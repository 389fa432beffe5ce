"""Index rows → views and events (imaging.md §2, §8)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from contracts.imaging import (
    IngestSource,
    InstanceView,
    MatchStatus,
    SeriesView,
    StudyEventBase,
    StudyStatus,
    StudyView,
)


def dicomweb_url(base: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> str:
    url = f"{base}/dicom-web/studies/{study_uid}"
    if series_uid:
        url += f"/series/{series_uid}"
        if sop_uid:
            url += f"/instances/{sop_uid}"
    return url


def study_event(cls: type[StudyEventBase], row: Row[Any], **extra: Any) -> Any:
    return cls(
        study_id=row.id, study_instance_uid=row.study_instance_uid, patient_id=row.patient_id,
        match_status=MatchStatus(row.match_status), order_id=row.order_id, accession_number=row.accession_number,
        modalities=list(row.modalities_in_study or []), number_of_series=row.number_of_series,
        number_of_instances=row.number_of_instances, **extra,
    )


def study_view(row: Row[Any], base: str) -> StudyView:
    return StudyView(
        id=row.id, study_instance_uid=row.study_instance_uid, patient_id=row.patient_id,
        match_status=MatchStatus(row.match_status), patient_id_in_file=row.patient_id_in_file,
        patient_name_in_file=row.patient_name_in_file, accession_number=row.accession_number,
        study_date=row.study_date, study_time=row.study_time, study_description=row.study_description,
        referring_physician_name=row.referring_physician_name,
        modalities_in_study=list(row.modalities_in_study or []), number_of_series=row.number_of_series,
        number_of_instances=row.number_of_instances, status=StudyStatus(row.status), order_id=row.order_id,
        received_at=row.received_at, last_instance_at=row.last_instance_at, stable_at=row.stable_at,
        created_at=row.created_at, updated_at=row.updated_at, version=row.version,
        retrieve_url=dicomweb_url(base, row.study_instance_uid),
    )


def series_view(row: Row[Any], study_uid: str, base: str) -> SeriesView:
    url = dicomweb_url(base, study_uid, row.series_instance_uid)
    return SeriesView(
        id=row.id, study_id=row.study_id, series_instance_uid=row.series_instance_uid,
        series_number=row.series_number, modality=row.modality, series_description=row.series_description,
        body_part_examined=row.body_part_examined, series_date=row.series_date, series_time=row.series_time,
        protocol_name=row.protocol_name, number_of_instances=row.number_of_instances,
        created_at=row.created_at, updated_at=row.updated_at, retrieve_url=url, thumbnail_url=f"{url}/thumbnail",
    )


def instance_view(row: Row[Any], study_uid: str, series_uid: str, base: str) -> InstanceView:
    url = dicomweb_url(base, study_uid, series_uid, row.sop_instance_uid)
    return InstanceView(
        id=row.id, study_id=row.study_id, series_id=row.series_id, sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid, instance_number=row.instance_number,
        transfer_syntax_uid=row.transfer_syntax_uid, number_of_frames=row.number_of_frames, rows=row.rows,
        columns=row.columns, bits_allocated=row.bits_allocated,
        photometric_interpretation=row.photometric_interpretation, size_bytes=row.size_bytes, sha256=row.sha256,
        file_name=row.file_name, source=IngestSource(row.source), stored_at=row.stored_at, stored_by=row.stored_by,
        retrieve_url=url, metadata_url=f"{url}/metadata", rendered_url=f"{url}/rendered",
        thumbnail_url=f"{url}/thumbnail",
    )
