"""WADO-RS (PS3.18 §10.4, imaging.md §7): retrieve studies, series and instances as
multipart/related application/dicom streamed from the blob store; metadata from the worker's cache;
frames by ranged reads of the stored file (native or encapsulated, never the whole file); bulk data;
rendered images and thumbnails (decoded off the event loop, thumbnails cached)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get
from litestar.response import Stream

from contracts.blobstore import BlobNotFound, BlobStore
from contracts.errors import BadRequest, NotAcceptable, NotFound
from contracts.imaging import GetMetadata, InstanceLocation, LocateInstances, Locations, MetadataRef
from contracts.pixel_index import PixelIndex
from edge.access import ADM, PHY, RAD, TECH, dicomweb_roles
from edge.auth import actor_of
from edge.dicomweb.cache import DicomWebCache, Lru
from edge.dicomweb.common import (
    EXPLICIT_LE,
    FRAME_MEDIA,
    LOSSY_SYNTAXES,
    accepts_gzip,
    blob_store,
    parse_accept,
    require_json,
)
from edge.dicomweb.multipart import multipart_related, new_boundary
from edge.dicomweb.render import RenderError, RenderParams, parse_render_query, render_frame

TAGS = ["dicomweb"]
READERS = dicomweb_roles(PHY, RAD, TECH, ADM)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_FRAMES_PER_REQUEST = 1000
THUMBNAIL_TTL = 86400


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


# ---------------------------------------------------------------- frames


_INDEXES: Lru[PixelIndex] = Lru(100_000, 3600.0)


def _pixel_index(loc: InstanceLocation) -> PixelIndex:
    """The parsed pixel index of an instance (its JSON parsed once per instance, not per frame)."""
    key = (loc.blob_key, loc.sop_instance_uid)
    index = _INDEXES.get(key)
    if index is None:
        index = PixelIndex.from_json(loc.pixel_index or {})
        _INDEXES.put(key, index)
    return index


def parse_frame_list(raw: str) -> list[int]:
    numbers: list[int] = []
    for token in raw.split(","):
        token = token.strip()
        if not token.isdigit() or int(token) < 1:
            raise BadRequest(f"frame numbers are positive integers, got {token[:20]!r}", code="invalid_frame_list",
                             field="frames")
        numbers.append(int(token))
    if not numbers or len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"1–{MAX_FRAMES_PER_REQUEST} frame numbers", code="invalid_frame_list", field="frames")
    return numbers


def _frame_choice(request: Request, loc: InstanceLocation, encapsulated: bool) -> tuple[str, bool]:
    """(the part media type to send, decode?) for the frames of `loc`."""
    stored = loc.transfer_syntax_uid
    image_media = FRAME_MEDIA.get(stored)
    for item in parse_accept(request.headers.get("accept")):
        kind = item.part_type if item.media_type == "multipart/related" else item.media_type
        ts = item.transfer_syntax
        if kind in (None, "*/*", "multipart/*"):
            kind = "*/*"
        if not encapsulated:
            if kind in ("*/*", "application/octet-stream") and ts in (None, "*", EXPLICIT_LE):
                return f"application/octet-stream; transfer-syntax={EXPLICIT_LE}", False
            continue
        if kind == "*/*" or (kind == "application/octet-stream" and ts in ("*", stored)):
            return f"application/octet-stream; transfer-syntax={stored}", False
        if image_media and kind in (image_media, "image/*") and ts in (None, "*", stored):
            return f"{image_media}; transfer-syntax={stored}", False
        if kind == "application/octet-stream" and ts in (None, EXPLICIT_LE):
            return f"application/octet-stream; transfer-syntax={EXPLICIT_LE}", True
    raise NotAcceptable(f"the frames are stored as {stored}; ask for "
                        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
                        code="not_acceptable", field="Accept")


def _swap(data: bytes, bits: int | None) -> bytes:
    if bits not in (16, 32, 64):
        return data
    import numpy as np

    dtype = {16: ">u2", 32: ">u4", 64: ">u8"}[bits]
    return np.frombuffer(data, dtype=dtype).astype(dtype.replace(">", "<")).tobytes()


def _decode_frame(path: Any, number: int) -> bytes:
    import numpy as np
    from pydicom.pixels import pixel_array

    arr = pixel_array(path, index=number - 1)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


async def _frame_bytes(blobs: BlobStore, loc: InstanceLocation, index: PixelIndex, number: int,
                       decode: bool) -> bytes:
    if decode:
        try:
            async with blobs.local_file(loc.blob_key) as path:
                try:
                    return await asyncio.to_thread(_decode_frame, path, number)
                except Exception as exc:
                    raise NotAcceptable(f"no decoder for {loc.transfer_syntax_uid}",
                                        code="transfer_syntax_unavailable") from exc
        except BlobNotFound as exc:
            raise NotFound("the instance's bytes are gone", code="instance_not_found") from exc
    ranges = index.frame_ranges(number)
    try:
        chunks = [await blobs.read_range(loc.blob_key, start, length) for start, length in ranges]
    except BlobNotFound as exc:
        raise NotFound("the instance's bytes are gone", code="instance_not_found") from exc
    data = b"".join(chunks)
    if index.big_endian:
        data = _swap(data, loc.bits_allocated)
    return data


@get("/dicom-web/studies/{study:str}/series/{series:str}/instances/{instance:str}/frames/{frames:str}",
     operation_id="WadoRsFrames", opt=READERS, tags=TAGS,
     summary="WADO-RS frames: native as octet-stream, encapsulated as stored (transfer-syntax=*) or decoded")
async def retrieve_frames(request: Request, study: str, series: str, instance: str, frames: str) -> Response[Any]:
    numbers = parse_frame_list(frames)
    try:
        return await _frames(request, study, series, instance, numbers, cached=True)
    except NotFound as exc:
        if exc.code != "instance_not_found":
            raise
        # The cached location's bytes are gone (the instance was deleted or replaced): ask again once.
        return await _frames(request, study, series, instance, numbers, cached=False)


async def _frames(request: Request, study: str, series: str, instance: str, numbers: list[int], *,
                  cached: bool) -> Response[Any]:
    loc = (await locate(request, study, series, instance, purpose="frames", cached=cached))[0]
    if loc.pixel_index is None:
        raise NotFound("this instance has no pixel data frames", code="no_pixel_data")
    index = _pixel_index(loc)
    for n in numbers:
        if n > index.number_of_frames:
            raise NotFound(f"frame {n} is out of range (the instance has {index.number_of_frames})",
                           code="frame_out_of_range", field="frames")
    media, decode = _frame_choice(request, loc, index.encapsulated)
    if not index.encapsulated and index.frame_length == 0:
        decode = True  # packed bits across frames: cut after decoding
    blobs = blob_store(request)
    boundary = new_boundary()
    part_type = media.split(";")[0]
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    try:
        first_data = await _frame_bytes(blobs, loc, index, numbers[0], decode)
    except NotFound:
        forget(request, loc)
        raise
    if len(numbers) == 1:  # what viewers ask: one frame, one buffer, a Content-Length
        head = f"--{boundary}\r\nContent-Type: {media}\r\nContent-Length: {len(first_data)}\r\n\r\n".encode()
        return Response(b"".join((head, first_data, f"\r\n--{boundary}--\r\n".encode())),
                        media_type=content_type)

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield {"Content-Type": media, "Content-Length": str(len(first_data))}, _one(first_data)
        for n in numbers[1:]:
            data = await _frame_bytes(blobs, loc, index, n, decode)
            yield {"Content-Type": media, "Content-Length": str(len(data))}, _one(data)

    first = await anext(parts_iter := parts())

    async def all_parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield first
        async for item in parts_iter:
            yield item

    return Stream(multipart_related(all_parts(), boundary), media_type=content_type)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# ---------------------------------------------------------------- bulk data


def _bulk_value(path: Any, tag_path: list[str]) -> bytes:
    from pydicom import dcmread
    from pydicom.tag import Tag

    ds: Any = dcmread(path)
    element = None
    steps = list(tag_path)
    while steps:
        tag = Tag(int(steps.pop(0), 16))
        if tag not in ds:
            raise KeyError(tag)
        element = ds[tag]
        if steps:
            ds = element.value[int(steps.pop(0))]
    if element is None or not isinstance(element.value, bytes | bytearray):
        raise KeyError("not a bulk value")
    return bytes(element.value)


async def _bulk(blobs: BlobStore, loc: InstanceLocation, steps: list[str]) -> tuple[str, list[bytes]]:
    """(part media type, the value's parts): PixelData from the index (each frame of encapsulated data
    as one part), any other bulk value by its path in the data set."""
    if [s.upper() for s in steps] == ["7FE00010"]:
        if loc.pixel_index is None:
            raise NotFound("no pixel data", code="bulkdata_not_found")
        index = PixelIndex.from_json(loc.pixel_index)
        if index.encapsulated:
            frames = [await _frame_bytes(blobs, loc, index, n, False) for n in range(1, index.number_of_frames + 1)]
            return f"application/octet-stream; transfer-syntax={loc.transfer_syntax_uid}", frames
        data = await blobs.read_range(loc.blob_key, index.offset, index.length or 0)
        return "application/octet-stream", [_swap(data, loc.bits_allocated) if index.big_endian else data]
    async with blobs.local_file(loc.blob_key) as local:
        try:
            return "application/octet-stream", [await asyncio.to_thread(_bulk_value, local, steps)]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise NotFound("no bulk data at this path", code="bulkdata_not_found") from exc


@get("/dicom-web/studies/{study:str}/series/{series:str}/instances/{instance:str}/bulkdata/{path:path}",
     operation_id="WadoRsBulkdata", opt=READERS, tags=TAGS, summary="The value behind a BulkDataURI")
async def retrieve_bulkdata(request: Request, study: str, series: str, instance: str, path: str) -> Response[Any]:
    steps = [s for s in path.strip("/").split("/") if s]
    if not steps or len(steps) % 2 == 0 or any(
            not re.fullmatch(r"[0-9A-Fa-f]{8}", s) for s in steps[::2]) or any(not s.isdigit() for s in steps[1::2]):
        raise BadRequest("a bulk data path is <tag>[/<item>/<tag>…]", code="invalid_bulkdata_path", field="path")
    loc = (await locate(request, study, series, instance, purpose="bulkdata", cached=False))[0]
    blobs = blob_store(request)
    boundary = new_boundary()
    try:
        media, datas = await _bulk(blobs, loc, steps)
    except BlobNotFound as exc:
        raise NotFound("the instance's bytes are gone", code="instance_not_found") from exc

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for data in datas:
            yield {"Content-Type": media, "Content-Length": str(len(data))}, _one(data)

    return Stream(multipart_related(parts(), boundary),
                  media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


# ---------------------------------------------------------------- rendered and thumbnails


def _render_params(request: Request, thumbnail: bool) -> RenderParams:
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.items():
        query.setdefault(key, []).append(value)
    for key in request.query_params:
        query[key] = request.query_params.getall(key)
    try:
        return parse_render_query(query, accept=request.headers.get("accept"), thumbnail=thumbnail)
    except RenderError as exc:
        raise _render_error(exc) from exc


def _render_error(exc: RenderError) -> Exception:
    from contracts.errors import DomainError

    head, sep, _ = exc.reason.partition(":")
    field = head if exc.status == 400 and sep and head.isidentifier() else None
    err = DomainError(exc.reason, code={400: "invalid_render_parameter", 404: "frame_out_of_range",
                                        406: "cannot_render"}.get(exc.status, "cannot_render"), field=field)
    err.status = exc.status  # type: ignore[misc]
    return err


async def _rendered(request: Request, study: str, series: str | None, sop: str | None, frame: int | None,
                    thumbnail: bool) -> Response[bytes]:
    params = _render_params(request, thumbnail)
    representative = sop is None
    locs = await locate(request, study, series, sop, purpose="thumbnail" if thumbnail else "rendered",
                        representative=representative)
    loc = locs[0]
    number = frame or (max(1, (loc.number_of_frames + 1) // 2) if representative else 1)
    if number > loc.number_of_frames:
        raise NotFound(f"frame {number} is out of range", code="frame_out_of_range", field="frame")
    redis = request.app.state.redis
    cache_key = None
    if thumbnail:
        digest = hashlib.sha256(repr((params, number)).encode()).hexdigest()[:24]
        cache_key = f"imaging:thumbnail:{loc.sop_instance_uid}:{digest}"
        cached = await redis.get(cache_key)
        if cached is not None:
            return Response(cached, media_type=params.media_type, headers={"Cache-Control": "private, max-age=3600"})
    blobs = blob_store(request)
    try:
        async with blobs.local_file(loc.blob_key) as path:
            data = await asyncio.to_thread(render_frame, path, number, params)
    except RenderError as exc:
        raise _render_error(exc) from exc
    except BlobNotFound as exc:
        forget(request, loc)  # deleted or replaced since it was cached: the next request asks again
        raise NotFound("the instance's bytes are gone", code="blob_missing") from exc
    if cache_key is not None:
        await redis.set(cache_key, data, ex=THUMBNAIL_TTL)
    return Response(data, media_type=params.media_type, headers={"Cache-Control": "private, max-age=3600"})


_I = "/dicom-web/studies/{study:str}/series/{series:str}/instances/{instance:str}"


@get("/dicom-web/studies/{study:str}/rendered", operation_id="WadoRsStudyRendered", opt=READERS, tags=TAGS)
async def study_rendered(request: Request, study: str) -> Response[bytes]:
    return await _rendered(request, study, None, None, None, False)


@get("/dicom-web/studies/{study:str}/thumbnail", operation_id="WadoRsStudyThumbnail", opt=READERS, tags=TAGS)
async def study_thumbnail(request: Request, study: str) -> Response[bytes]:
    return await _rendered(request, study, None, None, None, True)


@get("/dicom-web/studies/{study:str}/series/{series:str}/rendered", operation_id="WadoRsSeriesRendered",
     opt=READERS, tags=TAGS)
async def series_rendered(request: Request, study: str, series: str) -> Response[bytes]:
    return await _rendered(request, study, series, None, None, False)


@get("/dicom-web/studies/{study:str}/series/{series:str}/thumbnail", operation_id="WadoRsSeriesThumbnail",
     opt=READERS, tags=TAGS)
async def series_thumbnail(request: Request, study: str, series: str) -> Response[bytes]:
    return await _rendered(request, study, series, None, None, True)


@get(f"{_I}/rendered", operation_id="WadoRsInstanceRendered", opt=READERS, tags=TAGS,
     summary="Rendered image: window=center,width[,linear|linear-exact|sigmoid], viewport=w,h, quality")
async def instance_rendered(request: Request, study: str, series: str, instance: str) -> Response[bytes]:
    return await _rendered(request, study, series, instance, None, False)


@get(f"{_I}/thumbnail", operation_id="WadoRsInstanceThumbnail", opt=READERS, tags=TAGS)
async def instance_thumbnail(request: Request, study: str, series: str, instance: str) -> Response[bytes]:
    return await _rendered(request, study, series, instance, None, True)


def _one_frame(frames: str) -> int:
    numbers = parse_frame_list(frames)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame is one frame number", code="invalid_frame_list", field="frames")
    return numbers[0]


@get(f"{_I}/frames/{{frames:str}}/rendered", operation_id="WadoRsFrameRendered", opt=READERS, tags=TAGS)
async def frame_rendered(request: Request, study: str, series: str, instance: str, frames: str) -> Response[bytes]:
    return await _rendered(request, study, series, instance, _one_frame(frames), False)


@get(f"{_I}/frames/{{frames:str}}/thumbnail", operation_id="WadoRsFrameThumbnail", opt=READERS, tags=TAGS)
async def frame_thumbnail(request: Request, study: str, series: str, instance: str, frames: str) -> Response[bytes]:
    return await _rendered(request, study, series, instance, _one_frame(frames), True)


ROUTES = [retrieve_study, retrieve_series, retrieve_instance, study_metadata, series_metadata, instance_metadata,
          retrieve_frames, retrieve_bulkdata, study_rendered, study_thumbnail, series_rendered, series_thumbnail,
          instance_rendered, instance_thumbnail, frame_rendered, frame_thumbnail]
