"""Imaging domain (spec imaging.md): the DICOM index, ingest (REST upload and STOW-RS), the queries
behind QIDO-RS and WADO-RS, and the study views of the web UI.

Big bytes never ride the broker: the edge stages each uploaded file in the blob store and the
command carries its key; WADO-RS asks the worker where the bytes are and streams them itself.
Orders, catalogues and the study lifecycle come with their own issue.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import Meta

from contracts.common import Empty, ListParams, Page, PingResult, Struct, View
from contracts.envelope import Event
from contracts.registry import command, event, query

STUDY_SORT = ("studyDate", "createdAt", "status", "receivedAt")
SERIES_SORT = ("seriesNumber", "createdAt")
INSTANCE_SORT = ("instanceNumber", "storedAt")

Uid = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]
Tag = Annotated[str, Meta(pattern=r"^[0-9A-F]{8}$")]  # a DICOM tag as 8 upper-case hex digits


class StudyStatus(enum.StrEnum):
    SCANNED = "scanned"
    TECHNICIAN_VERIFIED = "technician_verified"
    REJECTED = "rejected"
    READING = "reading"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    RESULT_PRINTED = "result_printed"


class MatchStatus(enum.StrEnum):
    MATCHED = "matched"
    UNMATCHED = "unmatched"


class IngestSource(enum.StrEnum):
    UPLOAD = "upload"
    STOW = "stow"


class InstanceOutcome(enum.StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    FAILED = "failed"


class QidoLevel(enum.StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


# Failure codes of one instance (imaging.md §4) and the STOW FailureReason (0008,1197) each maps to.
FAILURE_REASONS: dict[str, int] = {
    "not_dicom": 0xC000,
    "malformed": 0xC000,
    "missing_attribute": 0xC000,
    "invalid_uid": 0xC000,
    "too_large": 0xA700,  # out of resources: the part is larger than IMAGING_MAX_INSTANCE_BYTES
    "storage_failed": 0xA700,
    "sop_class_not_supported": 0x0122,
    "study_uid_mismatch": 0x0110,
    "sop_instance_conflict": 0x0110,
    "study_patient_mismatch": 0x0110,
    "study_locked": 0x0110,
    "series_study_mismatch": 0x0110,
    "duplicate_in_request": 0x0110,
}


# ---------------------------------------------------------------- ingest


class IngestPart(Struct):
    staging_key: Annotated[str, Meta(min_length=1, max_length=300)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Meta(ge=0)]
    file_name: Annotated[str, Meta(max_length=255)] = ""
    failure: str | None = None  # the edge already refused this part (e.g. `too_large`); nothing staged


class InstanceResult(View):
    file_name: str
    status: InstanceOutcome
    code: str | None = None
    reason: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_id: UUID | None = None
    series_id: UUID | None = None
    instance_id: UUID | None = None


class IngestResult(View):
    results: list[InstanceResult]
    stored: int
    already_stored: int
    failed: int


@command("imaging.ingest_instances", result=IngestResult,
         summary="Index staged DICOM files: validate, promote the bytes, insert study/series/instance, emit events")
class IngestInstances(Struct):
    parts: Annotated[list[IngestPart], Meta(min_length=1, max_length=1000)]
    source: IngestSource
    study_instance_uid: Uid | None = None  # STOW-RS `/studies/{study}`: every instance must belong to it


# ---------------------------------------------------------------- the study views (REST)


class InstanceView(View):
    id: UUID
    study_id: UUID
    series_id: UUID
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    number_of_frames: int
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    photometric_interpretation: str | None
    size_bytes: int
    sha256: str
    file_name: str
    source: IngestSource
    stored_at: datetime
    stored_by: UUID | None
    retrieve_url: str
    metadata_url: str
    rendered_url: str
    thumbnail_url: str


class SeriesView(View):
    id: UUID
    study_id: UUID
    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    body_part_examined: str | None
    series_date: date | None
    series_time: str | None
    protocol_name: str | None
    number_of_instances: int
    created_at: datetime
    updated_at: datetime
    retrieve_url: str
    thumbnail_url: str


class StudyView(View):
    id: UUID
    study_instance_uid: str
    patient_id: UUID | None
    match_status: MatchStatus
    patient_id_in_file: str | None
    patient_name_in_file: str | None
    accession_number: str | None
    study_date: date | None
    study_time: str | None
    study_description: str | None
    referring_physician_name: str | None
    modalities_in_study: list[str]
    number_of_series: int
    number_of_instances: int
    status: StudyStatus
    order_id: UUID | None
    received_at: datetime
    last_instance_at: datetime
    stable_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int
    retrieve_url: str


class StudyDetail(StudyView):
    series: list[SeriesView] = msgspec.field(default_factory=list)


class StudyStatusCount(View):
    status: StudyStatus
    today: int
    total: int


class StudyStats(View):
    date_from: date
    date_to: date
    by_status: list[StudyStatusCount]
    total: int
    unmatched: int


@query("imaging.list_studies", result=Page[StudyView], summary="Studies, filtered and paged")
class ListStudies(ListParams):
    status: list[StudyStatus] | None = None
    patient_id: UUID | None = None
    mrn: Annotated[str, Meta(max_length=64)] | None = None
    patient_name: Annotated[str, Meta(max_length=100)] | None = None
    match_status: MatchStatus | None = None
    accession_number: Annotated[str, Meta(max_length=64)] | None = None
    modality: Annotated[str, Meta(max_length=16)] | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    study_instance_uid: Uid | None = None


@query("imaging.get_study", result=StudyDetail, summary="One study with its series")
class GetStudy(Struct):
    id: UUID


@query("imaging.study_stats", result=StudyStats, summary="Studies per status: received today and in all")
class GetStudyStats(Struct):
    date_from: date | None = None
    date_to: date | None = None


@query("imaging.list_series", result=Page[SeriesView], summary="The series of a study")
class ListSeries(ListParams, kw_only=True):
    study_id: UUID


@query("imaging.get_series", result=SeriesView)
class GetSeries(Struct):
    id: UUID


@query("imaging.list_instances", result=Page[InstanceView], summary="The instances of a series")
class ListInstances(ListParams, kw_only=True):
    series_id: UUID


@query("imaging.get_instance", result=InstanceView)
class GetInstance(Struct):
    id: UUID


@command("imaging.delete_study", summary="Remove a study: index rows now, its blobs after the commit")
class DeleteStudy(Struct):
    id: UUID
    reason: Annotated[str, Meta(min_length=3, max_length=1000)]


# ---------------------------------------------------------------- DICOMweb queries


class QidoMatch(Struct):
    tag: Tag
    value: Annotated[str, Meta(max_length=1024)]


class QidoReply(View):
    warnings: list[str]
    items: msgspec.Raw  # a JSON array of DICOM JSON objects, passed through by the edge
    patient_ids: list[UUID] = msgspec.field(default_factory=list)  # matched patients in the answer (audit)


@query("imaging.qido", result=QidoReply, summary="QIDO-RS search at one level")
class QidoSearch(Struct):
    level: QidoLevel
    study_instance_uid: Uid | None = None  # the path's study (series and instance levels)
    series_instance_uid: Uid | None = None  # the path's series (instance level)
    matches: list[QidoMatch] = msgspec.field(default_factory=list)
    include_fields: list[Tag] = msgspec.field(default_factory=list)
    include_all: bool = False
    fuzzy: bool = False
    limit: Annotated[int, Meta(ge=0)] | None = None
    offset: Annotated[int, Meta(ge=0)] = 0
    warnings: list[str] = msgspec.field(default_factory=list)  # from the edge's parsing, echoed in the reply


class InstanceLocation(View):
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    blob_key: str
    size_bytes: int
    transfer_syntax_uid: str
    number_of_frames: int
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    photometric_interpretation: str | None
    pixel_index: dict[str, Any] | None
    instance_number: int | None
    series_number: int | None
    study_id: UUID | None = None  # whose data this is, for the audit of reads the edge answers from its cache
    patient_id: UUID | None = None


class Locations(View):
    items: list[InstanceLocation]


@query("imaging.locate_instances", result=Locations,
       summary="Where the bytes of a study, series or instance are (WADO-RS retrieve, frames, rendered)")
class LocateInstances(Struct):
    study_instance_uid: Uid
    series_instance_uid: Uid | None = None
    sop_instance_uid: Uid | None = None
    purpose: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")] = "retrieve"  # the audit action's suffix
    representative: bool = False  # only the instance that stands for the study/series (rendered, thumbnail)


class MetadataRef(View):
    cache_key: str  # Redis key holding the gzip'd JSON array
    etag: str
    count: int
    study_id: UUID | None = None
    patient_id: UUID | None = None


@query("imaging.get_metadata", result=MetadataRef,
       summary="WADO-RS metadata of a study, series or instance: built once per version and cached in Redis")
class GetMetadata(Struct):
    study_instance_uid: Uid
    series_instance_uid: Uid | None = None
    sop_instance_uid: Uid | None = None


@query("imaging.ping", result=PingResult)
class PingImaging(Empty):
    pass


# ---------------------------------------------------------------- events


class StudyEventBase(Event):
    study_id: UUID
    study_instance_uid: str
    patient_id: UUID | None
    match_status: MatchStatus
    order_id: UUID | None
    accession_number: str | None
    modalities: list[str]
    number_of_series: int
    number_of_instances: int


@event("imaging.study.received")
class StudyReceived(StudyEventBase):
    pass


@event("imaging.study.stabilized")
class StudyStabilized(StudyEventBase):
    pass


@event("imaging.study.deleted")
class StudyDeleted(StudyEventBase):
    status: StudyStatus
    reason: str


@event("imaging.instances.stored")
class InstancesStored(Event):
    study_id: UUID
    study_instance_uid: str
    patient_id: UUID | None
    order_id: UUID | None
    source: IngestSource
    count: int
    series_instance_uids: list[str]
    sop_instance_uids: list[str]  # at most 1,000


@event("imaging.instance.rejected")
class InstanceRejected(Event):
    sop_instance_uid: str | None
    study_instance_uid: str | None
    code: str
    source: IngestSource
