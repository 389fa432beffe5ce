"""`/studies`, `/series`, `/instances` for the web UI (imaging.md §3): the DICOM index as REST.
Upload is `edge.dicomweb.stow.upload` (`POST /studies/upload`). Every read is audited by the worker."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Request, delete, get
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.errors import BadRequest
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
    StudyDetail,
    StudyStats,
    StudyView,
)
from edge.access import ADM, PHY, RAD, TECH, roles
from edge.bus import send
from edge.queries import documented, parse_query

TAGS = ["studies"]
IMAGING = (PHY, RAD, TECH, ADM)  # "Imaging+"


class DeleteBody(Struct):
    reason: Annotated[str, Meta(min_length=3, max_length=1000)]


@get("/studies", operation_id="ListStudies", opt=roles(*IMAGING), tags=TAGS, operation_class=documented(ListStudies),
     summary="Studies: status, patient, MRN, patient name, modality, study dates, accession, UID")
async def list_studies(request: Request) -> Page[StudyView]:
    return await send(request, parse_query(request, ListStudies))  # type: ignore[return-value]


@get("/studies/stats", operation_id="StudyStats", opt=roles(*IMAGING), tags=TAGS,
     operation_class=documented(GetStudyStats))
async def study_stats(request: Request) -> StudyStats:
    return await send(request, parse_query(request, GetStudyStats))  # type: ignore[return-value]


@get("/studies/{study_id:uuid}", operation_id="GetStudy", opt=roles(*IMAGING), tags=TAGS,
     summary="A study with its series")
async def get_study(request: Request, study_id: UUID) -> StudyDetail:
    return await send(request, GetStudy(id=study_id), etag=True)  # type: ignore[return-value]


@get("/studies/{study_id:uuid}/series", operation_id="ListStudySeries", opt=roles(*IMAGING), tags=TAGS,
     operation_class=documented(ListSeries, exclude=("studyId",)))
async def list_series(request: Request, study_id: UUID) -> Page[SeriesView]:
    return await send(request, parse_query(request, ListSeries, study_id=str(study_id)))  # type: ignore[return-value]


@get("/series/{series_id:uuid}", operation_id="GetSeries", opt=roles(*IMAGING), tags=TAGS)
async def get_series(request: Request, series_id: UUID) -> SeriesView:
    return await send(request, GetSeries(id=series_id))  # type: ignore[return-value]


@get("/series/{series_id:uuid}/instances", operation_id="ListSeriesInstances", opt=roles(*IMAGING), tags=TAGS,
     operation_class=documented(ListInstances, exclude=("seriesId",)))
async def list_instances(request: Request, series_id: UUID) -> Page[InstanceView]:
    query = parse_query(request, ListInstances, series_id=str(series_id))
    return await send(request, query)  # type: ignore[return-value]


@get("/instances/{instance_id:uuid}", operation_id="GetInstance", opt=roles(*IMAGING), tags=TAGS)
async def get_instance(request: Request, instance_id: UUID) -> InstanceView:
    return await send(request, GetInstance(id=instance_id))  # type: ignore[return-value]


@delete("/studies/{study_id:uuid}", operation_id="DeleteStudy", opt=roles(ADM), tags=TAGS,
        summary="Remove a scanned, rejected or technician-verified study: index rows and blobs; body {reason}")
async def delete_study(request: Request, study_id: UUID) -> None:
    raw = await request.body()
    reason = request.query_params.get("reason")
    if raw.strip():
        try:
            reason = msgspec.json.decode(raw, type=DeleteBody).reason
        except msgspec.ValidationError as exc:
            raise BadRequest(f"reason: {exc}", code="validation_failed", field="reason") from exc
        except msgspec.DecodeError as exc:
            raise BadRequest("the body is not JSON", field="body") from exc
    if reason is None or not 3 <= len(reason) <= 1000:
        raise BadRequest("a reason of 3–1000 characters is required", code="validation_failed", field="reason")
    await send(request, DeleteStudy(id=study_id, reason=reason), empty=True)


ROUTES = [list_studies, study_stats, get_study, list_series, get_series, list_instances, get_instance, delete_study]
