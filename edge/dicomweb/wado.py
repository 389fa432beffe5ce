"""WADO-RS (PS3.18 §10.4, imaging.md §7): where the bytes are (`locate`, with the edge's location
cache), retrieving studies, series and instances as multipart/related application/dicom streamed
from the blob store, and metadata from the worker's cache. Frames and bulk data: edge.dicomweb.frames;
rendered images and thumbnails: edge.dicomweb.rendered."""

from __future__ import annotations

import asyncio
import io
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get
from litestar.response import Stream

from contracts.blobstore import BlobStore
from contracts.errors import BadRequest, NotAcceptable, NotFound
from contracts.imaging import GetMetadata, InstanceLocation, LocateInstances, Locations, MetadataRef
from edge.access import ADM, PHY, RAD, TECH, dicomweb_roles
from edge.auth import actor_of
from edge.dicomweb.cache import DicomWebCache
from edge.dicomweb.common import (
    EXPLICIT_LE,
    LOSSY_SYNTAXES,
    accepts_gzip,
    blob_store,
    parse_accept,
    require_json,
)
from edge.dicomweb.multipart import multipart_related, new_boundary

TAGS = ["dicomweb"]
READERS = dicomweb_roles(PHY, RAD, TECH, ADM)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: str, what: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise BadRequest(f"{value[:80]!r} is not a DICOM UID", code="invalid_uid", field=what)
    return value


async def _ask(request: Request, payload: Any, result: Any) -> Any:
    return await request.app.state.bus.call(type(payload).OPERATION, payload, actor_of(request.scope),
                                            result=result, correlation_id=request.scope.get("correlation_id"))


async def locate(request: Request, study: str, series: str | None = None, sop: str | None = None, *,
                 purpose: str, representative: bool = False, cached: bool = True) -> list[InstanceLocation]:
    """Where the bytes are. One instance's location is kept by the edge (edge.dicomweb.cache): a
    viewer's frame, rendered and thumbnail requests then skip the broker; those reads are audited by
    the edge, the others by the imaging worker."""
    q = LocateInstances(study_instance_uid=check_uid(study, "study"),
                        series_instance_uid=check_uid(series, "series") if series else None,
                        sop_instance_uid=check_uid(sop, "instance") if sop else None,
                        purpose=purpose, representative=representative)
    cache: DicomWebCache = request.app.state.dicomweb
    single = sop is not None and series is not None and cached
    if single:
        loc = cache.locations.get((study, series, sop))
        if loc is not None:
            cache.auditor.read(actor_of(request.scope), f"imaging.wado_{purpose}", "study",
                               str(loc.study_id) if loc.study_id else None,
                               (loc.patient_id,) if loc.patient_id else ())
            return [loc]
    if single:
        # A viewer fetches every instance of a series in turn (frames/1 of each): one question for the
        # whole series fills the cache for all of them.
        whole = LocateInstances(study_instance_uid=q.study_instance_uid, series_instance_uid=q.series_instance_uid,
                                purpose=purpose)
        found: Locations = await _ask(request, whole, Locations)
        wanted = None
        for item in found.items:
            cache.locations.put((study, series, item.sop_instance_uid), item)
            if item.sop_instance_uid == sop:
                wanted = item
        if wanted is None:
            raise NotFound("no such instance", code="instance_not_found")
        return [wanted]
    found = await _ask(request, q, Locations)
    return found.items


def forget(request: Request, loc: InstanceLocation) -> None:
    """The instance's bytes are gone (deleted, or replaced): ask the worker next time."""
    request.app.state.dicomweb.locations.drop((loc.study_instance_uid, loc.series_instance_uid,
                                               loc.sop_instance_uid))


# ---------------------------------------------------------------- retrieve


def _retrieve_choice(request: Request, single: bool) -> tuple[bool, str | None]:
    """(multipart?, transfer syntax: '*', a UID, or None = the default Explicit VR Little Endian)."""
    for item in parse_accept(request.headers.get("accept")):
        if item.media_type in ("*/*", "multipart/*"):
            return True, item.transfer_syntax
        if item.media_type == "multipart/related" and item.part_type in (None, "application/dicom"):
            return True, item.transfer_syntax
        if item.media_type == "application/dicom" and single:
            return False, item.transfer_syntax
    raise NotAcceptable('this resource is multipart/related; type="application/dicom"', field="Accept")


def _serve_as(loc: InstanceLocation, wanted: str | None) -> str | None:
    """The syntax to send `loc` in: None = stored bytes as they are; EXPLICIT_LE = transcode."""
    stored = loc.transfer_syntax_uid
    if wanted == "*" or wanted == stored:
        return None
    if wanted is None:
        if stored == EXPLICIT_LE or stored in LOSSY_SYNTAXES:
            return None
        return EXPLICIT_LE
    if wanted == EXPLICIT_LE:
        return EXPLICIT_LE
    raise NotAcceptable(f"transfer syntax {wanted} is not available (stored as {stored}; transcoding to other "
                        "syntaxes is not supported)", code="transfer_syntax_unavailable", field="Accept")


def _transcode(path: Any) -> bytes:
    """The instance in Explicit VR Little Endian: native data re-encoded, lossless compression undone."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


async def _instance_bytes(blobs: BlobStore, loc: InstanceLocation, target: str | None) -> AsyncIterator[bytes]:
    if target is None:
        async for chunk in blobs.stream(loc.blob_key):
            yield chunk
        return
    async with blobs.local_file(loc.blob_key) as path:
        try:
            data = await asyncio.to_thread(_transcode, path)
        except Exception as exc:  # no decoder, or data pydicom cannot re-encode
            raise NotAcceptable(f"instance {loc.sop_instance_uid} cannot be sent in {target}",
                                code="transfer_syntax_unavailable") from exc
    yield data


async def _retrieve(request: Request, study: str, series: str | None, sop: str | None) -> Response[Any]:
    # Not from the cache: a whole file is streamed, and a replaced instance must not fail halfway.
    locations = await locate(request, study, series, sop, purpose="retrieve", cached=False)
    multipart, wanted = _retrieve_choice(request, single=sop is not None)
    plan = [(loc, _serve_as(loc, wanted)) for loc in locations]
    blobs = blob_store(request)
    if not multipart:
        loc, target = plan[0]
        syntax = target or loc.transfer_syntax_uid
        return Stream(_instance_bytes(blobs, loc, target), media_type=f"application/dicom; transfer-syntax={syntax}")
    boundary = new_boundary()

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for loc, target in plan:
            headers = {"Content-Type": f"application/dicom; transfer-syntax={target or loc.transfer_syntax_uid}"}
            if target is None:
                headers["Content-Length"] = str(loc.size_bytes)
            yield headers, _instance_bytes(blobs, loc, target)

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return Stream(multipart_related(parts(), boundary), media_type=media)


@get("/dicom-web/studies/{study:str}", operation_id="WadoRsStudy", opt=READERS, tags=TAGS,
     summary="WADO-RS: every instance of the study")
async def retrieve_study(request: Request, study: str) -> Response[Any]:
    return await _retrieve(request, study, None, None)


@get("/dicom-web/studies/{study:str}/series/{series:str}", operation_id="WadoRsSeries", opt=READERS, tags=TAGS)
async def retrieve_series(request: Request, study: str, series: str) -> Response[Any]:
    return await _retrieve(request, study, series, None)


@get("/dicom-web/studies/{study:str}/series/{series:str}/instances/{instance:str}", operation_id="WadoRsInstance",
     opt=READERS, tags=TAGS, summary="WADO-RS: one instance (multipart/related, or application/dicom if asked)")
async def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response[Any]:
    return await _retrieve(request, study, series, instance)


# ---------------------------------------------------------------- metadata


async def _metadata(request: Request, study: str, series: str | None, sop: str | None) -> Response[bytes]:
    require_json(request)
    q = GetMetadata(study_instance_uid=check_uid(study, "study"),
                    series_instance_uid=check_uid(series, "series") if series else None,
                    sop_instance_uid=check_uid(sop, "instance") if sop else None)
    redis = request.app.state.redis
    cache: DicomWebCache = request.app.state.dicomweb
    key = ("metadata", await cache.generation(), study, series, sop)
    ref: MetadataRef | None = cache.answers.get(key)
    body = await redis.hget(ref.cache_key, "gzip") if ref is not None else None
    if ref is not None and body is not None:
        cache.auditor.read(actor_of(request.scope), "imaging.wado_metadata", "study",
                           str(ref.study_id) if ref.study_id else None, (ref.patient_id,) if ref.patient_id else ())
    else:
        for _ in range(2):
            ref = await _ask(request, q, MetadataRef)
            body = await redis.hget(ref.cache_key, "gzip")
            if body is not None:
                cache.answers.put(key, ref)
                break
        else:
            raise NotFound("the metadata could not be built", code="metadata_unavailable")
    assert ref is not None and body is not None
    headers = {"ETag": ref.etag, "Vary": "Accept-Encoding", "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == ref.etag:
        return Response(b"", status_code=304, headers=headers)
    if accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(body, media_type="application/dicom+json", headers=headers)
    return Response(zlib.decompress(body, 31), media_type="application/dicom+json", headers=headers)


@get("/dicom-web/studies/{study:str}/metadata", operation_id="WadoRsStudyMetadata", opt=READERS, tags=TAGS)
async def study_metadata(request: Request, study: str) -> Response[bytes]:
    return await _metadata(request, study, None, None)


@get("/dicom-web/studies/{study:str}/series/{series:str}/metadata", operation_id="WadoRsSeriesMetadata",
     opt=READERS, tags=TAGS, summary="WADO-RS: the series' DICOM JSON (built once per series version, cached)")
async def series_metadata(request: Request, study: str, series: str) -> Response[bytes]:
    return await _metadata(request, study, series, None)


@get("/dicom-web/studies/{study:str}/series/{series:str}/instances/{instance:str}/metadata",
     operation_id="WadoRsInstanceMetadata", opt=READERS, tags=TAGS)
async def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response[bytes]:
    return await _metadata(request, study, series, instance)


ROUTES = [retrieve_study, retrieve_series, retrieve_instance, study_metadata, series_metadata, instance_metadata]
