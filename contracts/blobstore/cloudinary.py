"""The Cloudinary blob store, through the real `cloudinary` SDK.

Every blob is a Cloudinary asset with `resource_type="raw"` and delivery type `authenticated`, its public_id being
the blob key:

    <folder>/staging/<uuid hex>          staged blobs
    <folder>/studies/<study uid>/<sha>   final blobs (one Cloudinary folder per study)

Why `authenticated` rather than `private`: an authenticated asset is reachable only through a delivery URL carrying
a signature made with the API secret (the SDK builds it offline, `sign_url=True`), for the original and for any
derived version alike, so nothing is ever publicly reachable; and it is delivered by the CDN, which honours Range
requests, so WADO range reads and streams need no Admin/Upload API call. A `private` asset would need a
`private_download_url` (an API call per download, through the API host) for the original, while its derived
versions would be public. The signed URLs are built and used here only; clients never see them.

Settings → SDK (per-call options, so the SDK's global configuration is left alone and several stores can coexist):

* CLOUDINARY_URL `cloudinary://<api_key>:<api_secret>@<cloud_name>[?signature_algorithm=sha256]`
* CLOUDINARY_UPLOAD_PREFIX → the SDK's `upload_prefix` (Upload and Admin API base, default https://api.cloudinary.com)
* CLOUDINARY_DELIVERY_PREFIX → the delivery host of the signed URLs: for `https://host[:port]` the SDK's
  `secure_distribution`, for `http://host[:port]` its `cname` (with `secure=False`); the cloud name follows as the
  first path segment, as on res.cloudinary.com. Default: https://res.cloudinary.com.

SDK calls block, so they run on the store's thread pool. Downloads use httpx on the event loop (streaming, Range).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import cloudinary
import cloudinary.api
import cloudinary.exceptions
import cloudinary.uploader
import cloudinary.utils
import httpx
import urllib3.exceptions

from contracts.blobstore import (
    DEFAULT_STREAM_CHUNK,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    StagedBlob,
    check_final_key_args,
    check_key_syntax,
    check_range,
)
from contracts.blobstore.filesystem import BATCH_BYTES, Spool

__all__ = ["DELIVERY_TYPE", "RESOURCE_TYPE", "CloudinaryBlobStore", "parse_cloudinary_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RESOURCE_TYPE = "raw"
DELIVERY_TYPE = "authenticated"
UPLOAD_CHUNK_SIZE = 8 * 1024 * 1024  # larger files go through upload_large in chunks of this size (Cloudinary: ≥ 5 MB)
_STAGING_NAME = re.compile(r"^[0-9a-f]{32}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Server-side refusals: the request reached Cloudinary and nothing was stored.
_REFUSALS = (
    cloudinary.exceptions.BadRequest,
    cloudinary.exceptions.AuthorizationRequired,
    cloudinary.exceptions.NotAllowed,
    cloudinary.exceptions.NotFound,
    cloudinary.exceptions.AlreadyExists,
    cloudinary.exceptions.RateLimited,
)
_BACKEND_ERRORS = (cloudinary.exceptions.Error, urllib3.exceptions.HTTPError, OSError, ValueError)


def parse_cloudinary_url(url: str) -> dict[str, Any]:
    """`cloudinary://key:secret@cloud[/secure_distribution][?option=value&…]` → SDK options."""
    parts = urlsplit(url)
    credentials, _, cloud_name = parts.netloc.rpartition("@")
    api_key, _, api_secret = credentials.partition(":")
    if parts.scheme != "cloudinary" or not cloud_name or not api_key or not api_secret:
        raise ValueError("CLOUDINARY_URL must look like cloudinary://<api_key>:<api_secret>@<cloud_name>")
    options: dict[str, Any] = {"cloud_name": cloud_name, "api_key": unquote(api_key), "api_secret": unquote(api_secret)}
    if parts.path.strip("/"):
        options.update(private_cdn=True, secure_distribution=parts.path.strip("/"))
    options.update(parse_qsl(parts.query))
    return options


def _delivery_options(prefix: str) -> dict[str, Any]:
    """SDK URL options that put the signed delivery URLs on `prefix` (scheme://host[:port][/path])."""
    if not prefix:
        return {"secure": True}
    parts = urlsplit(prefix)
    host = parts.netloc + parts.path.rstrip("/")
    if not parts.netloc or parts.scheme not in ("http", "https"):
        raise ValueError(f"CLOUDINARY_DELIVERY_PREFIX must be an http(s) URL, got {prefix!r}")
    if parts.scheme == "https":
        return {"secure": True, "secure_distribution": host, "private_cdn": False, "secure_cdn_subdomain": False}
    return {"secure": False, "cname": host, "private_cdn": False, "cdn_subdomain": False}


_pools_widened = False


def _widen_sdk_pools(maxsize: int) -> None:
    """The SDK keeps one urllib3 PoolManager per module with one connection per host; with a thread pool in front
    it would open (and drop) a connection per concurrent call. Give them `maxsize` connections per host, built
    by the SDK's own factory (so `api_proxy` and keep-alive settings still apply)."""
    global _pools_widened
    if _pools_widened:
        return
    from cloudinary.api_client import call_api as admin_call_api

    for module in (cloudinary.uploader, admin_call_api):
        if hasattr(module, "_http"):
            module._http = cloudinary.utils.get_http_connector(
                cloudinary.config(), dict(cloudinary.CERT_KWARGS, maxsize=maxsize)
            )
    _pools_widened = True


class CloudinaryBlobStore(BlobStore):
    name = "cloudinary"

    def __init__(
        self,
        *,
        cloudinary_url: str,
        folder: str,
        upload_prefix: str = "",
        delivery_prefix: str = "",
        spool_dir: str | Path | None = None,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        io_threads: int = 16,
        timeout: float = 120.0,
    ) -> None:
        """`spool_dir`: local directory for the incoming bytes before their upload and for `local_file` downloads
        (make_blob_store: <BLOB_DIR>/spool); default: the system temp directory."""
        options = parse_cloudinary_url(cloudinary_url)
        check_key_syntax(folder)
        self.folder = folder
        self._api: dict[str, Any] = {
            key: options[key] for key in ("cloud_name", "api_key", "api_secret") if key in options
        }
        if "signature_algorithm" in options:
            self._api["signature_algorithm"] = options["signature_algorithm"]
        if upload_prefix:
            self._api["upload_prefix"] = upload_prefix.rstrip("/")
        self._url_options: dict[str, Any] = {
            "cloud_name": options["cloud_name"],
            "api_secret": options["api_secret"],
            "signature_algorithm": options.get("signature_algorithm", cloudinary.utils.SIGNATURE_SHA1),
            "sign_url": True,
            "auth_token": False,
            "long_url_signature": False,
            "use_root_path": False,
            "shorten": False,
        }
        if "secure_distribution" in options and not delivery_prefix:
            self._url_options.update(secure=True, private_cdn=True, secure_distribution=options["secure_distribution"])
        else:
            self._url_options.update(_delivery_options(delivery_prefix))
        self._timeout = timeout
        self._chunk_size = upload_chunk_size
        self.spool_dir = Path(spool_dir if spool_dir is not None else tempfile.gettempdir())
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        _widen_sdk_pools(io_threads)
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blobstore-cld")
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"User-Agent": f"imaging-backend blobstore ({cloudinary.get_user_agent()})"},
        )

    # ---- keys
    def final_key(self, study_instance_uid: str, sha256: str) -> str:
        check_final_key_args(study_instance_uid, sha256)
        return f"{self.folder}/studies/{study_instance_uid}/{sha256}"

    def _public_id(self, key: str) -> str:
        """The key itself, once checked to be a staging or final key below our folder."""
        check_key_syntax(key)
        rest = key[len(self.folder) + 1 :].split("/") if key.startswith(self.folder + "/") else []
        if len(rest) == 2 and rest[0] == "staging" and _STAGING_NAME.match(rest[1]):
            return key
        if len(rest) == 3 and rest[0] == "studies" and _SHA256_HEX.match(rest[2]):
            check_final_key_args(rest[1], rest[2])
            return key
        raise ValueError(f"not a key of this store: {key!r}")

    def _is_staging(self, key: str) -> bool:
        return key.startswith(f"{self.folder}/staging/")

    def delivery_url(self, key: str) -> str:
        """The signed delivery URL of a blob (for this process only: it grants access to the bytes)."""
        url, _ = cloudinary.utils.cloudinary_url(
            self._public_id(key), resource_type=RESOURCE_TYPE, type=DELIVERY_TYPE, **self._url_options
        )
        return str(url)

    # ---- staging
    async def stage(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StagedBlob:
        name = uuid.uuid4().hex
        spool = Spool(self.spool_dir / f"up-{name}", self._executor, durable=False, batch_bytes=BATCH_BYTES)
        try:
            tail = await spool.consume(chunks, max_bytes)
            sha = await spool.finish(tail, None)
            await self._upload(spool.path, f"{self.folder}/staging/{name}", spool.size)
        except BaseException:
            await spool.abort()
            raise
        self._executor.submit(_unlink_missing_ok, spool.path)  # no await: a cancellation now must not lose the blob
        return StagedBlob(key=f"{self.folder}/staging/{name}", sha256=sha, size=spool.size)

    async def stage_file(self, path: str | Path) -> StagedBlob:
        source = Path(path)
        sha, size = await self._run(_hash_file, source)
        key = f"{self.folder}/staging/{uuid.uuid4().hex}"
        await self._upload(source, key, size)
        return StagedBlob(key=key, sha256=sha, size=size)

    async def _upload(self, path: Path, public_id: str, size: int) -> None:
        if size == 0:
            raise BlobStoreError("Cloudinary does not store empty files")
        job = self._executor.submit(self._upload_sync, path, public_id, size)
        try:
            await asyncio.wrap_future(job)
        except BaseException as exc:
            # Cancelled while the upload runs in its thread, or failed after Cloudinary may have stored it: remove it
            # once the thread is done (shielded: a second cancellation must not stop the undo).
            undo = self._executor.submit(self._undo_upload_sync, job, public_id)
            await asyncio.shield(asyncio.wrap_future(undo))
            if isinstance(exc, _BACKEND_ERRORS):
                raise BlobStoreError(f"upload of {public_id} failed: {exc}") from exc
            raise

    def _upload_sync(self, path: Path, public_id: str, size: int) -> None:
        options = dict(
            self._api,
            public_id=public_id,
            resource_type=RESOURCE_TYPE,
            type=DELIVERY_TYPE,
            overwrite=False,
            filename=public_id.rpartition("/")[2],
            timeout=self._timeout,
        )
        if size > self._chunk_size:
            result = cloudinary.uploader.upload_large(str(path), chunk_size=self._chunk_size, **options)
        else:
            result = cloudinary.uploader.upload(str(path), **options)
        if not result or result.get("public_id") != public_id or int(result.get("bytes", -1)) != size:
            got = (result or {}).get("bytes")
            raise BlobStoreError(f"Cloudinary answered {got} bytes under {(result or {}).get('public_id')!r}")

    def _undo_upload_sync(self, job: Future[None], public_id: str) -> None:
        if job.cancelled():
            return  # never started
        exc = job.exception()  # waits for the upload thread
        if isinstance(exc, _REFUSALS):
            return  # Cloudinary refused it: nothing stored
        try:
            self._destroy_sync(public_id, invalidate=False)
        except Exception as undo_exc:
            log.warning("blobstore: could not remove %s after an interrupted upload (%s)", public_id, undo_exc)

    # ---- promote / delete
    async def promote(self, staging_key: str, final_key: str) -> bool:
        source = self._public_id(staging_key)
        target = self._public_id(final_key)
        if not self._is_staging(source) or self._is_staging(target):
            raise ValueError(f"promote needs a staging key and a final key, got {staging_key!r} → {final_key!r}")
        return await self._run(self._promote_sync, source, target)

    def _promote_sync(self, source: str, target: str) -> bool:
        try:
            cloudinary.uploader.rename(
                source,
                target,
                resource_type=RESOURCE_TYPE,
                type=DELIVERY_TYPE,
                overwrite=False,  # content-addressed: an existing target already holds these bytes
                timeout=self._timeout,
                **self._api,
            )
        except cloudinary.exceptions.AlreadyExists:
            return False  # the staged copy stays until the caller discards it
        except cloudinary.exceptions.NotFound:
            if self._resource_sync(target) is None:
                raise BlobNotFound(source) from None
            return False  # promoted before: the staged copy is gone and the final one is there
        return True

    async def discard(self, staging_key: str) -> None:
        public_id = self._public_id(staging_key)
        if not self._is_staging(public_id):
            raise ValueError(f"not a staging key: {staging_key!r}")
        await self._run(self._destroy_sync, public_id, False)

    async def delete(self, key: str) -> None:
        await self._run(self._destroy_sync, self._public_id(key), True)

    def _destroy_sync(self, public_id: str, invalidate: bool) -> bool:
        result = cloudinary.uploader.destroy(
            public_id,
            resource_type=RESOURCE_TYPE,
            type=DELIVERY_TYPE,
            invalidate=invalidate,  # purge CDN copies of deleted final blobs
            timeout=self._timeout,
            **self._api,
        )
        outcome = result.get("result")
        if outcome not in ("ok", "not found"):
            raise BlobStoreError(f"destroy {public_id}: {result}")
        return outcome == "ok"

    # ---- reading
    async def exists(self, key: str) -> bool:
        """Asked of the Upload API (`explicit`), not of the CDN: authoritative, and no CDN caches a 404 for a key
        that is about to be promoted."""
        return await self._run(self._resource_sync, self._public_id(key)) is not None

    def _resource_sync(self, public_id: str) -> dict[str, Any] | None:
        try:
            result = cloudinary.uploader.explicit(
                public_id, resource_type=RESOURCE_TYPE, type=DELIVERY_TYPE, timeout=self._timeout, **self._api
            )
        except cloudinary.exceptions.NotFound:
            return None
        return dict(result)

    async def size(self, key: str) -> int:
        url = self.delivery_url(key)
        try:
            response = await self._http.head(url)
        except httpx.HTTPError as exc:
            raise BlobStoreError(f"HEAD {key}: {exc}") from exc
        _raise_for_delivery(response, key)
        try:
            return int(response.headers["content-length"])
        except (KeyError, ValueError) as exc:
            raise BlobStoreError(f"HEAD {key}: no usable Content-Length") from exc

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, start + length)
        if length == 0:
            await self.size(key)  # BlobNotFound
            return b""
        parts = [chunk async for chunk in self.stream(key, start, start + length, chunk_size=max(length, 1))]
        return b"".join(parts)

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_STREAM_CHUNK
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        url = self.delivery_url(key)
        if end == start:
            await self.size(key)  # BlobNotFound
            return
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:
                    return  # the range starts past the end
                _raise_for_delivery(response, key)
                skip = start if response.status_code == 200 else 0  # the server ignored the Range header
                remaining = None if end is None else end - start
                async for chunk in response.aiter_bytes(chunk_size):
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                    if remaining is not None:
                        chunk = chunk[:remaining]
                        remaining -= len(chunk)
                    if chunk:
                        yield chunk
                    if remaining == 0:
                        break
        except httpx.HTTPError as exc:
            raise BlobStoreError(f"GET {key}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        self._public_id(key)
        spool = Spool(self.spool_dir / f"dl-{uuid.uuid4().hex}", self._executor, durable=False)
        try:
            tail = await spool.consume(self.stream(key, chunk_size=BATCH_BYTES), max_bytes=1 << 62)
            sha = await spool.finish(tail, None)
        except BaseException:
            await spool.abort()
            raise
        try:
            expected = key.rpartition("/")[2]
            if not self._is_staging(key) and sha != expected:
                raise BlobStoreError(f"{key}: downloaded bytes hash to {sha}")
            yield spool.path
        finally:
            await asyncio.shield(asyncio.wrap_future(self._executor.submit(_unlink_missing_ok, spool.path)))

    # ---- housekeeping
    async def sweep_staging(self, older_than: float) -> int:
        return await self._run(self._sweep_sync, older_than)

    def _sweep_sync(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        doomed: list[str] = []
        cursor: str | None = None
        while True:
            page = cloudinary.api.resources(
                resource_type=RESOURCE_TYPE,
                type=DELIVERY_TYPE,
                prefix=f"{self.folder}/staging/",
                max_results=500,
                next_cursor=cursor,
                timeout=self._timeout,
                **self._api,
            )
            for resource in page.get("resources", []):
                created = datetime.fromisoformat(str(resource["created_at"]).replace("Z", "+00:00")).timestamp()
                if created <= cutoff:
                    doomed.append(str(resource["public_id"]))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        deleted = sum(1 for public_id in doomed if self._destroy_sync(public_id, False))
        with os.scandir(self.spool_dir) as entries:  # spool files of crashed processes
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
        return deleted

    async def close(self) -> None:
        await self._http.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (BlobNotFound, BlobStoreError):
            raise
        except _BACKEND_ERRORS as exc:
            raise BlobStoreError(f"Cloudinary: {exc}") from exc


def _raise_for_delivery(response: httpx.Response, key: str) -> None:
    if response.status_code == 404:
        raise BlobNotFound(key)
    if response.status_code not in (200, 206):
        reason = response.headers.get("x-cld-error", "")
        raise BlobStoreError(f"delivery of {key} answered HTTP {response.status_code} {reason}".rstrip())


def _unlink_missing_ok(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(BATCH_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size
