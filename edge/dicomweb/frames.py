"""WADO-RS frames and bulk data (PS3.18 §10.4, imaging.md §7): ranged reads of the stored file from
the pixel index made at ingest, never the whole file; native frames as little-endian octet-stream,
encapsulated ones as stored (or decoded when asked without a transfer syntax)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get
from litestar.response import Stream

from contracts.blobstore import BlobNotFound, BlobStore
from contracts.errors import BadRequest, NotAcceptable, NotFound
from contracts.imaging import InstanceLocation
from contracts.pixel_index import PixelIndex
from edge.dicomweb.cache import Lru
from edge.dicomweb.common import (
    EXPLICIT_LE,
    FRAME_MEDIA,
    blob_store,
    parse_accept,
)
from edge.dicomweb.multipart import multipart_related, new_boundary
from edge.dicomweb.wado import READERS, TAGS, forget, locate

MAX_FRAMES_PER_REQUEST = 1000


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


ROUTES = [retrieve_frames, retrieve_bulkdata]
