"""Blob stores: where the bytes of DICOM instances live (imaging.md §4).

One small interface, two backends:

* `filesystem` (contracts.blobstore.filesystem): a directory shared by the edge and the imaging worker.
* `cloudinary` (contracts.blobstore.cloudinary): Cloudinary raw assets of delivery type `authenticated`,
  reached through the real `cloudinary` SDK.

The life of a blob: the edge `stage()`s the request body (hashing it on the way) under a staging key; the imaging
worker reads it (`local_file`, `read_range`), decides where it belongs and `promote()`s it to its final key (or
`discard()`s it); readers then `stream()` / `read_range()` the final key. `sweep_staging()` removes staged blobs that
nobody promoted or discarded (a crash between the two steps).

Keys are opaque strings produced by the store (`StagedBlob.key`, `final_key()`); a key that a store did not produce
is refused with ValueError (which also stops keys escaping the store's root).
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from contracts.settings import Settings

__all__ = [
    "DEFAULT_STREAM_CHUNK",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "BlobTooLarge",
    "StagedBlob",
    "check_final_key_args",
    "check_key_syntax",
    "check_range",
    "make_blob_store",
]

DEFAULT_STREAM_CHUNK = 256 * 1024

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# DICOM UIDs are digits and dots (≤ 64 chars); a little slack for non-conforming senders, never a path separator.
_STUDY_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_KEY_SEGMENT = re.compile(r"^[0-9A-Za-z_.-]+$")


@dataclass(frozen=True, slots=True)
class StagedBlob:
    key: str  # staging key
    sha256: str  # hex
    size: int


class BlobTooLarge(Exception):
    """The source went past `max_bytes`; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"blob larger than {limit} bytes")
        self.limit = limit


class BlobNotFound(Exception):
    """No blob under that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob under {key!r}")
        self.key = key


class BlobStoreError(Exception):
    """The backend failed (I/O error, Cloudinary refused or could not be reached, ...)."""


class BlobStore(abc.ABC):
    """Async interface to one blob store. Safe to share between tasks of one event loop."""

    name: str  # "filesystem" | "cloudinary"

    @abc.abstractmethod
    async def stage(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StagedBlob:
        """Consume `chunks` into a new staged blob, computing sha256 and size on the way, never holding the whole
        blob in memory. The bytes are durable (fsync'd / uploaded) when this returns. If the source raises, the task is
        cancelled, or the source goes past `max_bytes` (BlobTooLarge), nothing is left behind."""

    @abc.abstractmethod
    async def stage_file(self, path: str | Path) -> StagedBlob:
        """`stage()` from a local file (CLI, tests)."""

    @abc.abstractmethod
    def final_key(self, study_instance_uid: str, sha256: str) -> str:
        """Where the blob with this content belongs. ValueError for a malformed UID or digest."""

    @abc.abstractmethod
    async def promote(self, staging_key: str, final_key: str) -> bool:
        """Atomically make the staged bytes available under `final_key`. The filesystem keeps the staged copy (a
        hard link) until `discard`, so a command redelivered after a crash before its commit finds it again;
        Cloudinary renames it. Callers `discard` the staging key after their commit either way. Idempotent: again
        after success, or when `final_key` already holds the content, it succeeds. True when this call created the
        final blob, False when it was there already (a caller that rolls back deletes only what it created).
        BlobNotFound when neither the staged blob nor the final one exists."""

    @abc.abstractmethod
    async def discard(self, staging_key: str) -> None:
        """Delete a staged blob; a missing one is fine."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete a final blob; a missing one is fine."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size in bytes; BlobNotFound if missing."""

    @abc.abstractmethod
    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Exactly `length` bytes from `start` (fewer only at the end of the blob, b"" past it); BlobNotFound."""

    @abc.abstractmethod
    def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_STREAM_CHUNK
    ) -> AsyncIterator[bytes]:
        """Async generator of the bytes [start, end) (end None: to the end), in chunks of at most `chunk_size`.
        BlobNotFound is raised on the first iteration if the blob is missing."""

    @abc.abstractmethod
    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local path holding the blob's bytes for the duration of the `async with` block (read-only use).
        Staging and final keys alike. BlobNotFound on entry if missing."""

    @abc.abstractmethod
    async def sweep_staging(self, older_than: float) -> int:
        """Delete staged blobs at least `older_than` seconds old; returns how many were deleted."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def check_key_syntax(key: str) -> list[str]:
    """The segments of a relative, '/'-separated key; ValueError for anything that could escape a root
    (absolute, '..', '.', empty segments, backslashes, NUL, odd characters)."""
    if not isinstance(key, str) or not key or len(key) > 512:
        raise ValueError(f"bad blob key {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _KEY_SEGMENT.match(segment):
            raise ValueError(f"bad blob key {key!r}")
    return segments


def check_final_key_args(study_instance_uid: str, sha256: str) -> None:
    if not _SHA256_HEX.match(sha256):
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    if not _STUDY_UID.match(study_instance_uid) or ".." in study_instance_uid:
        raise ValueError(f"bad study instance UID {study_instance_uid!r}")


def check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range [{start}, {end})")


def make_blob_store(settings: Settings) -> BlobStore:
    """The store selected by BLOB_STORE."""
    if settings.blob_store == "filesystem":
        from contracts.blobstore.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(settings.blob_dir)
    if settings.blob_store == "cloudinary":
        from contracts.blobstore.cloudinary import CloudinaryBlobStore

        return CloudinaryBlobStore(
            cloudinary_url=settings.cloudinary_url,
            folder=settings.cloudinary_folder,
            upload_prefix=settings.cloudinary_upload_prefix,
            delivery_prefix=settings.cloudinary_delivery_prefix,
            spool_dir=Path(settings.blob_dir) / "spool",
        )
    raise ValueError(f"unknown blob store {settings.blob_store!r}")
