"""The filesystem blob store: one directory tree shared by the edge and the imaging worker.

    <root>/tmp/<uuid hex>.part         being written (never a key; sweep_staging removes crash leftovers)
    <root>/staging/<uuid hex>          staged blobs (complete and fsync'd)
    <root>/objects/<aa>/<bb>/<sha256>  final blobs, content-addressed (aa, bb: the first hex digits)

A blob is written to tmp/, fsync'd, then renamed into staging/ and the directory fsync'd, so a crash never leaves a
torn file under a visible key. `promote` is an `os.replace` into objects/ followed by an fsync of the directory.

Blocking file I/O runs on the store's own thread pool. Incoming chunks are gathered into batches of ≥ 1 MiB before
each hop to a thread, where the batch is hashed (hashlib releases the GIL) and written; the next batch is gathered
on the event loop while the previous one is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from contracts.blobstore import (
    DEFAULT_STREAM_CHUNK,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobTooLarge,
    StagedBlob,
    check_final_key_args,
    check_key_syntax,
    check_range,
)

__all__ = ["BATCH_BYTES", "FilesystemBlobStore", "Spool", "fsync_dir"]

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_BYTES = 1 << 20  # gather this much before a hop to a worker thread
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_STAGING_NAME = re.compile(r"^[0-9a-f]{32}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Aborted(Exception):
    pass


class Spool:
    """One blob being written to a local file, hashed on the way.

    The `*_sync` methods run in worker threads and are serialised by a lock, so `abort_sync` waits for a write in
    flight and every later write is refused: however a task is cancelled, `abort()` leaves nothing behind (neither the
    spool file nor the file it was published to).
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor, *, durable: bool, batch_bytes: int = BATCH_BYTES):
        self.path = path
        self.size = 0
        self.sha256 = ""
        self.published: Path | None = None
        self._executor = executor
        self._durable = durable
        self._batch = batch_bytes
        self._lock = threading.Lock()
        self._hash = hashlib.sha256()
        self._fd = -1
        self._aborted = False
        self._used = False  # something was handed to a thread: abort() has work to do
        self._inflight: asyncio.Future[None] | None = None

    # ---- event loop side
    async def consume(self, chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
        """Write everything but the last partial batch, which is returned (for `finish`)."""
        parts: list[bytes] = []
        pending = 0
        async for chunk in chunks:
            n = len(chunk)
            if not n:
                continue
            self.size += n
            if self.size > max_bytes:
                raise BlobTooLarge(max_bytes)
            parts.append(chunk)
            pending += n
            if pending >= self._batch:
                data = b"".join(parts)
                parts, pending = [], 0
                if self._inflight is not None:
                    await self._wait(self._inflight)
                self._inflight = self._submit(self.write_sync, data)
        if self._inflight is not None:
            await self._wait(self._inflight)
            self._inflight = None
        return b"".join(parts)

    async def finish(self, tail: bytes, publish_to: Path | None) -> str:
        """Write `tail`, fsync (durable spools), close; then rename the file to `publish_to` when given.
        Returns the sha256 hex digest."""
        await self._wait(self._submit(self.finish_sync, tail, publish_to))
        return self.sha256

    async def abort(self) -> None:
        if not self._used:
            return
        await asyncio.shield(asyncio.wrap_future(self._executor.submit(self.abort_sync)))
        inflight, self._inflight = self._inflight, None
        if inflight is not None and inflight.done() and not inflight.cancelled():
            inflight.exception()  # retrieved: its failure is superseded by the one being raised

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._used = True
        return asyncio.wrap_future(self._executor.submit(fn, *args))

    async def _wait(self, future: asyncio.Future[Any]) -> None:
        """Our own I/O errors become BlobStoreError (an OSError from the source, e.g. a connection reset, is the
        caller's and passes through `consume` untouched)."""
        try:
            await future
        except OSError as exc:
            raise BlobStoreError(f"writing {self.path}: {exc}") from exc

    # ---- worker thread side
    def write_sync(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._write_locked(data)

    def finish_sync(self, tail: bytes | bytearray | memoryview, publish_to: Path | None) -> None:
        with self._lock:
            self._write_locked(tail)
            if self._durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self.sha256 = self._hash.hexdigest()
            if publish_to is not None:
                # The staging directory's entry is not fsync'd: nothing is acknowledged on a staged blob.
                # Durability comes with promotion, whose hard link in objects/ is fsync'd (the data and
                # inode were fsync'd just above) before the worker commits and the client hears "stored";
                # a crash before that loses only bytes nobody was told about (the client retries).
                os.replace(self.path, publish_to)
                self.published = publish_to

    def abort_sync(self) -> None:
        with self._lock:
            self._aborted = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            for path in (self.path, self.published):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            self.published = None

    def _write_locked(self, data: bytes | bytearray | memoryview) -> None:
        if self._aborted:
            raise _Aborted(str(self.path))
        self._used = True
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o640)
        if data:
            self._hash.update(data)
            _write_all(self._fd, data)


class FilesystemBlobStore(BlobStore):
    name = "filesystem"

    def __init__(
        self, root: str | Path, *, io_threads: int = 16, batch_bytes: int = BATCH_BYTES, durable: bool = True
    ) -> None:
        """`durable=False` skips the fsyncs (throwaway test data only)."""
        self.root = Path(os.path.abspath(root))
        self.staging_dir = self.root / "staging"
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        for directory in (self.staging_dir, self.objects_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._batch = batch_bytes
        self._durable = durable
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blobstore-fs")

    # ---- keys
    def final_key(self, study_instance_uid: str, sha256: str) -> str:
        check_final_key_args(study_instance_uid, sha256)
        return f"objects/{sha256[0:2]}/{sha256[2:4]}/{sha256}"

    def path(self, key: str) -> Path:
        """The file behind a staging or final key; ValueError for anything else (`..`, absolute, tmp/, ...)."""
        segments = check_key_syntax(key)
        if segments[0] == "staging" and len(segments) == 2 and _STAGING_NAME.match(segments[1]):
            return self.staging_dir / segments[1]
        if segments[0] == "objects" and len(segments) == 4:
            sha = segments[3]
            if _SHA256_HEX.match(sha) and segments[1] == sha[0:2] and segments[2] == sha[2:4]:
                return self.objects_dir.joinpath(*segments[1:])
        raise ValueError(f"not a key of this store: {key!r}")

    def _staging_path(self, key: str) -> Path:
        path = self.path(key)
        if path.parent != self.staging_dir:
            raise ValueError(f"not a staging key: {key!r}")
        return path

    # ---- staging
    async def stage(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StagedBlob:
        name = uuid.uuid4().hex
        spool = Spool(self.tmp_dir / f"{name}.part", self._executor, durable=self._durable, batch_bytes=self._batch)
        try:
            tail = await spool.consume(chunks, max_bytes)
            sha = await spool.finish(tail, self.staging_dir / name)
        except BaseException:
            await spool.abort()
            raise
        return StagedBlob(key=f"staging/{name}", sha256=sha, size=spool.size)

    async def stage_file(self, path: str | Path) -> StagedBlob:
        name = uuid.uuid4().hex
        spool = Spool(self.tmp_dir / f"{name}.part", self._executor, durable=self._durable, batch_bytes=self._batch)
        job = self._executor.submit(self._stage_file_sync, Path(path), spool, self.staging_dir / name)
        try:
            await asyncio.wrap_future(job)
        except BaseException as exc:
            await asyncio.shield(asyncio.wrap_future(self._executor.submit(spool.abort_sync)))
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise BlobStoreError(f"staging {path} failed: {exc}") from exc
            raise
        return StagedBlob(key=f"staging/{name}", sha256=spool.sha256, size=spool.size)

    def _stage_file_sync(self, source: Path, spool: Spool, publish_to: Path) -> None:
        buffer = bytearray(self._batch)
        view = memoryview(buffer)
        with open(source, "rb", buffering=0) as file:
            while n := file.readinto(buffer):
                spool.write_sync(view[:n])
                spool.size += n
        spool.finish_sync(b"", publish_to)

    # ---- promote / delete
    async def promote(self, staging_key: str, final_key: str) -> bool:
        source = self._staging_path(staging_key)
        target = self.path(final_key)
        if target.parent == self.staging_dir:
            raise ValueError(f"not a final key: {final_key!r}")
        return await self._run(self._promote_sync, staging_key, source, target)

    def _promote_sync(self, staging_key: str, source: Path, target: Path) -> bool:
        """A hard link, not a move: the staged copy stays until `discard` (after the commit), so a
        command redelivered after a crash between promotion and commit still finds its bytes.
        Content-addressed: a target that exists already holds the same bytes."""
        try:
            os.link(source, target)
        except FileExistsError:
            return False
        except FileNotFoundError:
            if not os.path.exists(source):
                if os.path.exists(target):
                    return False  # promoted and discarded before
                raise BlobNotFound(staging_key) from None
            self._makedirs_durable(target.parent)
            try:
                os.link(source, target)
            except FileExistsError:
                return False
        if self._durable:
            fsync_dir(target.parent)
        return True

    def _makedirs_durable(self, directory: Path) -> None:
        missing: list[Path] = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o750)
            if self._durable:
                fsync_dir(path.parent)

    async def discard(self, staging_key: str) -> None:
        await self._run(_unlink_missing_ok, self._staging_path(staging_key))

    async def delete(self, key: str) -> None:
        await self._run(_unlink_missing_ok, self.path(key))

    # ---- reading
    async def exists(self, key: str) -> bool:
        return await self._run(os.path.isfile, self.path(key))

    async def size(self, key: str) -> int:
        return await self._run(_size_sync, self.path(key), key)

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, start + length)
        return await self._run(_read_range_sync, self.path(key), key, start, length)

    async def stream(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_STREAM_CHUNK
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        fd = await self._run(_open_read, self.path(key), key)
        read: Future[bytes] | None = None
        try:
            position = start
            while end is None or position < end:
                want = chunk_size if end is None else min(chunk_size, end - position)
                read = self._executor.submit(os.pread, fd, want, position)
                data = await asyncio.wrap_future(read)
                read = None
                if not data:
                    break
                position += len(data)
                yield data
        finally:
            if read is not None and not read.done():
                read.add_done_callback(lambda _: os.close(fd))  # never close an fd under a pread in flight
            else:
                os.close(fd)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        path = self.path(key)
        if not await self._run(os.path.isfile, path):
            raise BlobNotFound(key)
        yield path

    # ---- housekeeping
    async def sweep_staging(self, older_than: float) -> int:
        return await self._run(self._sweep_sync, older_than)

    def _sweep_sync(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        deleted = _remove_older(self.staging_dir, cutoff)
        leftovers = _remove_older(self.tmp_dir, cutoff)  # writers that died mid-blob
        if leftovers:
            log.info("blobstore: removed %d partial files left by interrupted writers", leftovers)
        return deleted

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobStoreError(f"blob store layout broken under {self.root}: {exc}") from exc
        except OSError as exc:
            raise BlobStoreError(str(exc)) from exc


def _unlink_missing_ok(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _size_sync(path: Path, key: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise BlobNotFound(key) from None


def _open_read(path: Path, key: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        raise BlobNotFound(key) from None
    except IsADirectoryError:
        raise BlobNotFound(key) from None


def _read_range_sync(path: Path, key: str, start: int, length: int) -> bytes:
    fd = _open_read(path, key)
    try:
        data = os.pread(fd, length, start)
        if len(data) == length or not data:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, start + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)
    finally:
        os.close(fd)


def _remove_older(directory: Path, cutoff: float) -> int:
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
