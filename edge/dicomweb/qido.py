"""QIDO-RS routes (PS3.18 §10.6, imaging.md §7): the query string becomes one `imaging.qido` query;
the worker's JSON array is passed through (gzip'd when accepted) with its `Warning` header."""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Request, Response, get

from contracts.errors import DomainError
from contracts.imaging import QidoLevel, QidoSearch
from edge.access import ADM, PHY, RAD, TECH, dicomweb_roles
from edge.auth import actor_of
from edge.dicomweb.cache import DicomWebCache
from edge.dicomweb.common import accepts_gzip, dicom_json, gzip, query_pairs, require_json, warning_header
from edge.dicomweb.qido_params import parse_qido
from edge.dicomweb.wado import check_uid

TAGS = ["dicomweb"]
READERS = dicomweb_roles(PHY, RAD, TECH, ADM)


class _Reply(msgspec.Struct, rename="camel"):
    warnings: list[str]
    items: msgspec.Raw
    patient_ids: list[UUID] = msgspec.field(default_factory=list)
    gzipped: bytes | None = None  # filled by the edge the first time a client accepts gzip


_reply = msgspec.json.Decoder(_Reply)


async def _search(request: Request, level: QidoLevel, study: str | None = None,
                  series: str | None = None) -> Response[bytes]:
    require_json(request)
    pairs = query_pairs(request)
    q: QidoSearch = parse_qido(level, pairs,
                               study_instance_uid=check_uid(study, "study") if study else None,
                               series_instance_uid=check_uid(series, "series") if series else None,
                               settings=request.app.state.settings)
    # The same search under the same index generation has the same answer (edge.dicomweb.cache).
    cache: DicomWebCache = request.app.state.dicomweb
    key = ("qido", await cache.generation(), level, study, series, tuple(pairs))
    out: _Reply | None = cache.answers.get(key)
    if out is not None:
        cache.auditor.read(actor_of(request.scope), f"imaging.qido_{level.value}", "dicomweb", study,
                           tuple(out.patient_ids))
    else:
        reply = await request.app.state.bus.call_raw(QidoSearch.OPERATION, q, actor_of(request.scope),
                                                     correlation_id=request.scope.get("correlation_id"))
        if reply.error is not None:
            raise DomainError.from_body(reply.error)
        out = _reply.decode(reply.ok)
        cache.answers.put(key, out)
    body = bytes(out.items)
    gzipped = None
    if accepts_gzip(request) and len(body) > 1024:  # compressed once per cached answer, not per request
        gzipped = out.gzipped = out.gzipped or gzip(body)
    return dicom_json(request, body, headers=warning_header(request, out.warnings), gzipped=gzipped)


@get("/dicom-web/studies", operation_id="QidoRsStudies", opt=READERS, tags=TAGS,
     summary="QIDO-RS: search studies (matching keys, includefield, fuzzymatching, limit, offset)")
async def search_studies(request: Request) -> Response[bytes]:
    return await _search(request, QidoLevel.STUDY)


@get("/dicom-web/series", operation_id="QidoRsSeries", opt=READERS, tags=TAGS)
async def search_series(request: Request) -> Response[bytes]:
    return await _search(request, QidoLevel.SERIES)


@get("/dicom-web/studies/{study:str}/series", operation_id="QidoRsStudySeries", opt=READERS, tags=TAGS)
async def search_study_series(request: Request, study: str) -> Response[bytes]:
    return await _search(request, QidoLevel.SERIES, study)


@get("/dicom-web/instances", operation_id="QidoRsInstances", opt=READERS, tags=TAGS)
async def search_instances(request: Request) -> Response[bytes]:
    return await _search(request, QidoLevel.INSTANCE)


@get("/dicom-web/studies/{study:str}/instances", operation_id="QidoRsStudyInstances", opt=READERS, tags=TAGS)
async def search_study_instances(request: Request, study: str) -> Response[bytes]:
    return await _search(request, QidoLevel.INSTANCE, study)


@get("/dicom-web/studies/{study:str}/series/{series:str}/instances", operation_id="QidoRsSeriesInstances",
     opt=READERS, tags=TAGS)
async def search_series_instances(request: Request, study: str, series: str) -> Response[bytes]:
    return await _search(request, QidoLevel.INSTANCE, study, series)


ROUTES = [search_studies, search_series, search_study_series, search_instances, search_study_instances,
          search_series_instances]
