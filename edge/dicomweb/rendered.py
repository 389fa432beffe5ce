"""WADO-RS rendered images and thumbnails (PS3.18 §10.4, imaging.md §7): the asked frame decoded off
the event loop by edge.dicomweb.render; study and series levels render a representative instance;
thumbnails cached in Redis."""

from __future__ import annotations

import asyncio
import hashlib

from litestar import Request, Response, get

from contracts.blobstore import BlobNotFound
from contracts.errors import BadRequest, NotFound
from edge.dicomweb.common import (
    blob_store,
)
from edge.dicomweb.frames import parse_frame_list
from edge.dicomweb.render import RenderError, RenderParams, parse_render_query, render_frame
from edge.dicomweb.wado import READERS, TAGS, forget, locate

THUMBNAIL_TTL = 86400


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


ROUTES = [study_rendered, study_thumbnail, series_rendered, series_thumbnail, instance_rendered, instance_thumbnail,
          frame_rendered, frame_thumbnail]
