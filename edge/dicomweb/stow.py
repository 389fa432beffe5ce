"""Ingest at the edge (imaging.md §4): STOW-RS (`multipart/related; type="application/dicom"`) and the
web UI's upload (`multipart/form-data`, field `files`). Each part streams into the blob store's
staging area (sha256 and size computed on the way, fsync'd), never whole in memory; then one
`imaging.ingest_instances` command carries the staging keys. A client that disconnects, or a request
over the limits, leaves nothing staged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post

from contracts.blobstore import BlobStore, BlobTooLarge
from contracts.errors import BadRequest, DomainError, Invalid, PayloadTooLarge, UnsupportedMediaType
from contracts.imaging import FAILURE_REASONS, IngestInstances, IngestPart, IngestResult, IngestSource, InstanceOutcome
from edge.access import ADM, RAD, TECH, dicomweb_roles
from edge.auth import actor_of
from edge.dicomweb.common import DICOM_JSON, blob_store
from edge.dicomweb.multipart import MultipartError, Part, iter_parts, parse_content_type

log = logging.getLogger("edge.stow")
_result = msgspec.json.Decoder(IngestResult)
_enc = msgspec.json.Encoder()
TAGS = ["dicomweb"]


class _Budget:
    """Counts the request's bytes as they arrive; over the limit → 413."""

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self.source = source
        self.limit = limit
        self.seen = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.source:
            self.seen += len(chunk)
            if self.seen > self.limit:
                raise PayloadTooLarge(f"the request is larger than {self.limit} bytes", code="payload_too_large")
            yield chunk


def _boundary(request: Request, expected: str) -> tuple[str, dict[str, str]]:
    media, params = parse_content_type(request.headers.get("content-type", ""))
    if media != expected:
        raise UnsupportedMediaType(f"the body must be {expected}", code="unsupported_media_type",
                                   field="Content-Type")
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("the multipart body has no boundary", field="Content-Type")
    return boundary, params


async def stage_parts(request: Request, parts: AsyncIterator[Part], *, form: bool) -> list[IngestPart]:
    """Stage every DICOM part; returns them in order. On any failure (client gone, limits, broken
    framing) what was staged is discarded before the error goes on."""
    settings = request.app.state.settings
    blobs: BlobStore = blob_store(request)
    staged: list[IngestPart] = []
    try:
        async for part in parts:
            if form and part.field_name != "files":
                if part.field_name in ("orderId", "modalityMachineId"):
                    raise BadRequest(f"{part.field_name} comes with imaging orders and machines (not yet)",
                                     code="not_supported", field=part.field_name)
                raise BadRequest(f"unknown form field {part.field_name!r}; upload files as `files`",
                                 field=part.field_name or "files")
            if len(staged) >= settings.imaging_max_parts:
                raise PayloadTooLarge(f"at most {settings.imaging_max_parts} files per request",
                                      code="too_many_parts", field="files")
            name = (part.filename or "")[:255]
            if not form and part.content_type not in (None, "application/dicom"):
                async for _ in part.chunks():
                    pass
                staged.append(IngestPart(staging_key="-", sha256="0" * 64, size=0, file_name=name,
                                         failure="not_dicom"))
                continue
            try:
                blob = await blobs.stage(part.chunks(), max_bytes=settings.imaging_max_instance_bytes)
            except BlobTooLarge:
                staged.append(IngestPart(staging_key="-", sha256="0" * 64, size=0, file_name=name,
                                         failure="too_large"))
                continue
            staged.append(IngestPart(staging_key=blob.key, sha256=blob.sha256, size=blob.size, file_name=name))
    except MultipartError as exc:
        await _discard(blobs, staged)
        raise BadRequest(f"broken multipart body: {exc.reason}", code="bad_multipart", field="body") from exc
    except BaseException:
        await _discard(blobs, staged)
        raise
    return staged


async def _discard(blobs: BlobStore, staged: list[IngestPart]) -> None:
    keys = [p.staging_key for p in staged if p.failure is None]
    await asyncio.shield(asyncio.gather(*(blobs.discard(k) for k in keys), return_exceptions=True))


async def ingest(request: Request, staged: list[IngestPart], source: IngestSource,
                 study_uid: str | None) -> IngestResult:
    if not staged:
        raise BadRequest("the request holds no file", code="no_files", field="files")
    cmd = IngestInstances(parts=staged, source=source, study_instance_uid=study_uid)
    settings = request.app.state.settings
    reply = await request.app.state.bus.call_raw(
        IngestInstances.OPERATION, cmd, actor_of(request.scope), timeout=settings.ingest_timeout,
        correlation_id=request.scope.get("correlation_id"), message_id=request.scope.get("command_id"),
    )
    if reply.error is not None:
        with contextlib.suppress(Exception):  # the worker never saw the parts: nothing else will remove them
            if reply.error.status in (400, 422, 503):
                await _discard(blob_store(request), staged)
        raise DomainError.from_body(reply.error)
    return _result.decode(reply.ok)


# ---------------------------------------------------------------- STOW-RS


def _stow_body(result: IngestResult, base: str, study_uid: str | None) -> tuple[int, bytes]:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies = set()
    for r in result.results:
        item: dict[str, Any] = {}
        if r.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [r.sop_class_uid]}
        else:
            item["00081150"] = {"vr": "UI"}
        if r.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [r.sop_instance_uid]}
        else:
            item["00081155"] = {"vr": "UI"}
        if r.status == InstanceOutcome.FAILED:
            item["00081197"] = {"vr": "US", "Value": [FAILURE_REASONS.get(r.code or "", 0x0110)]}
            failed.append(dict(sorted(item.items())))
        else:
            studies.add(r.study_instance_uid)
            url = f"{base}/dicom-web/studies/{r.study_instance_uid}/series/{r.series_instance_uid}" \
                  f"/instances/{r.sop_instance_uid}"
            item["00081190"] = {"vr": "UR", "Value": [url]}
            if r.status == InstanceOutcome.ALREADY_STORED:
                item["00081196"] = {"vr": "US", "Value": [0xB007]}  # warning: already stored, not changed
            referenced.append(dict(sorted(item.items())))
    doc: dict[str, Any] = {}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        doc["00081190"] = {"vr": "UR", "Value": [f"{base}/dicom-web/studies/{target}"]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        doc["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    return status, _enc.encode(doc)


async def _stow(request: Request, study_uid: str | None) -> Response[bytes]:
    boundary, params = _boundary(request, "multipart/related")
    part_type = (params.get("type") or "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f'STOW-RS takes type="application/dicom" parts, not {part_type}',
                                   code="unsupported_media_type", field="Content-Type")
    settings = request.app.state.settings
    source = _Budget(request.stream(), settings.imaging_max_request_bytes)
    staged = await stage_parts(request, iter_parts(source.__aiter__(), boundary), form=False)
    result = await ingest(request, staged, IngestSource.STOW, study_uid)
    status, body = _stow_body(result, settings.public_base_url, study_uid)
    return Response(body, status_code=status, media_type=DICOM_JSON)


_STOW_OPT = dicomweb_roles(TECH, RAD, ADM)
_MAX_BODY = 1 << 62  # the routes count bytes themselves (IMAGING_MAX_REQUEST_BYTES → 413)


@post("/dicom-web/studies", operation_id="StowRsStudies", opt=_STOW_OPT, tags=TAGS, status_code=200,
      request_max_body_size=_MAX_BODY, summary="STOW-RS: store instances (multipart/related; type=application/dicom)")
async def stow_studies(request: Request) -> Response[bytes]:
    return await _stow(request, None)


@post("/dicom-web/studies/{study:str}", operation_id="StowRsStudy", opt=_STOW_OPT, tags=TAGS, status_code=200,
      request_max_body_size=_MAX_BODY, summary="STOW-RS into one study: other studies' instances fail (0110)")
async def stow_study(request: Request, study: str) -> Response[bytes]:
    from edge.dicomweb.wado import check_uid

    return await _stow(request, check_uid(study, "study"))


# ---------------------------------------------------------------- REST upload (web UI)


@post("/studies/upload", operation_id="UploadStudyFiles", opt=_STOW_OPT, tags=["studies"], status_code=200,
      request_max_body_size=_MAX_BODY,
      summary="Upload DICOM files (multipart/form-data, field `files`, 1–500); per-file results")
async def upload(request: Request) -> Response[bytes]:
    boundary, _ = _boundary(request, "multipart/form-data")
    settings = request.app.state.settings
    source = _Budget(request.stream(), settings.imaging_max_request_bytes)
    staged = await stage_parts(request, iter_parts(source.__aiter__(), boundary), form=True)
    result = await ingest(request, staged, IngestSource.UPLOAD, None)
    if result.failed == len(result.results):
        raise Invalid("no file could be stored", code="upload_rejected",
                      results=msgspec.to_builtins(result.results), stored=0, alreadyStored=0,
                      failed=result.failed)
    return Response(_enc.encode(result), status_code=200, media_type="application/json")


ROUTES = [stow_studies, stow_study, upload]
