"""Blob stores (contracts.blobstore): one behavioural suite run against the filesystem store and against the
Cloudinary store (the real `cloudinary` SDK talking to tests/cloudinary_standin.py), plus what only one of them has:
the filesystem store's crash safety, the stand-in's signature checks, chunked uploads.

No system stack is booted: these tests need neither Postgres nor RabbitMQ.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudinary.api
import httpx
import pytest

from contracts.blobstore import BlobNotFound, BlobStore, BlobStoreError, BlobTooLarge, make_blob_store
from contracts.blobstore.cloudinary import CloudinaryBlobStore
from contracts.blobstore.filesystem import FilesystemBlobStore
from contracts.settings import Settings
from tests.cloudinary_standin import CloudinaryStandIn

ROOT = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.8.498.10"
MB = 1_000_000


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudinaryStandIn]:
    with CloudinaryStandIn(tmp_path_factory.mktemp("cloudinary")) as server:
        yield server


def cloudinary_settings(standin: CloudinaryStandIn, tmp_path: Path, **overrides: str) -> Settings:
    """What a test stack sets to put BLOB_STORE=cloudinary on the stand-in (a folder of its own per test)."""
    values = {
        "blob_store": "cloudinary",
        "blob_dir": str(tmp_path / "blobs"),
        "cloudinary_url": standin.cloudinary_url,
        "cloudinary_upload_prefix": standin.url,
        "cloudinary_delivery_prefix": standin.url,
        "cloudinary_folder": f"imaging-test/{uuid.uuid4().hex[:12]}",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Subject:
    """A store under test and a look behind its back (what the backend really holds)."""

    store: BlobStore
    standin: CloudinaryStandIn | None = None

    def staged(self) -> list[str]:
        """Staged blobs present in the backend, as keys."""
        if isinstance(self.store, FilesystemBlobStore):
            return sorted(f"staging/{path.name}" for path in self.store.staging_dir.iterdir())
        assert isinstance(self.store, CloudinaryBlobStore) and self.standin is not None
        root = self.standin.directory / "raw" / "authenticated"
        staging = root / self.store.folder / "staging"
        return sorted(path.relative_to(root).as_posix() for path in staging.glob("*")) if staging.is_dir() else []

    def partial_files(self) -> list[Path]:
        """Local files of blobs in the making (filesystem tmp/, Cloudinary spool)."""
        directory = self.store.tmp_dir if isinstance(self.store, FilesystemBlobStore) else self.store.spool_dir  # type: ignore[attr-defined]
        return sorted(directory.iterdir())

    async def assert_nothing_left(self) -> None:
        assert self.staged() == []
        for _ in range(100):  # the Cloudinary store drops its spool file without waiting for it
            if not self.partial_files():
                break
            await asyncio.sleep(0.02)
        assert self.partial_files() == []

    def age(self, key: str, seconds: float) -> None:
        """Make a blob look `seconds` old."""
        if isinstance(self.store, FilesystemBlobStore):
            path = self.store.path(key)
        else:
            assert self.standin is not None
            path = self.standin.asset_path(key)
        then = time.time() - seconds
        os.utime(path, (then, then))

    def missing_staging_key(self, like: str) -> str:
        """A well-formed staging key that was never staged."""
        return f"{like.rpartition('/')[0]}/{uuid.uuid4().hex}"


@pytest.fixture(params=["filesystem", "cloudinary"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "filesystem":
        store = make_blob_store(Settings(blob_store="filesystem", blob_dir=str(tmp_path / "blobs")))
        case = Subject(store)
    else:
        standin: CloudinaryStandIn = request.getfixturevalue("standin")
        case = Subject(make_blob_store(cloudinary_settings(standin, tmp_path)), standin)
    try:
        yield case
    finally:
        await case.store.close()


async def chunked(data: bytes, sizes: tuple[int, ...] = (65536,)) -> AsyncIterator[bytes]:
    """`data` in chunks, cycling through `sizes`, with an event-loop turn between chunks like a socket."""
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        yield data[position : position + size]
        position += size
        turn += 1
        await asyncio.sleep(0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def staged_final(store: BlobStore, data: bytes) -> str:
    blob = await store.stage(chunked(data), max_bytes=len(data))
    final = store.final_key(STUDY, blob.sha256)
    await store.promote(blob.key, final)
    await store.discard(blob.key)  # as every caller does after its commit
    return final


# ---------------------------------------------------------------------------------------------------- both stores


async def test_make_blob_store_picks_the_backend(standin: CloudinaryStandIn, tmp_path: Path) -> None:
    store = make_blob_store(Settings(blob_store="filesystem", blob_dir=str(tmp_path / "fs")))
    assert isinstance(store, FilesystemBlobStore) and store.name == "filesystem"
    await store.close()
    store = make_blob_store(cloudinary_settings(standin, tmp_path))
    assert isinstance(store, CloudinaryBlobStore) and store.name == "cloudinary"
    assert store.spool_dir == tmp_path / "blobs" / "spool"
    await store.close()


async def test_stage_computes_sha256_and_size(subject: Subject) -> None:
    store = subject.store
    data = os.urandom(2 * MB + 12345)  # several 1 MiB batches and a tail, in odd-sized chunks
    blob = await store.stage(chunked(data, (1, 65536, 1000, 300_000, 7)), max_bytes=10 * MB)
    assert (blob.sha256, blob.size) == (sha256(data), len(data))
    assert subject.staged() == [blob.key]
    assert await store.exists(blob.key)
    assert await store.size(blob.key) == len(data)
    assert await store.read_range(blob.key, 0, len(data)) == data
    for _ in range(100):
        if not subject.partial_files():
            break
        await asyncio.sleep(0.02)
    assert subject.partial_files() == []


async def test_stage_at_exactly_max_bytes_is_accepted(subject: Subject) -> None:
    data = os.urandom(300_000)
    blob = await subject.store.stage(chunked(data), max_bytes=len(data))
    assert blob.size == len(data)


async def test_stage_file(subject: Subject, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    source = tmp_path / "instance.dcm"
    source.write_bytes(data)
    blob = await subject.store.stage_file(source)
    assert (blob.sha256, blob.size) == (sha256(data), len(data))
    assert await subject.store.read_range(blob.key, 0, len(data)) == data


async def test_empty_blob(subject: Subject) -> None:
    if isinstance(subject.store, FilesystemBlobStore):
        blob = await subject.store.stage(chunked(b""), max_bytes=10)
        assert (blob.sha256, blob.size) == (sha256(b""), 0)
        assert await subject.store.read_range(blob.key, 0, 10) == b""
    else:  # Cloudinary does not store empty files
        with pytest.raises(BlobStoreError):
            await subject.store.stage(chunked(b""), max_bytes=10)
        await subject.assert_nothing_left()


async def test_final_key_layout(subject: Subject) -> None:
    store = subject.store
    digest = sha256(b"x")
    if isinstance(store, FilesystemBlobStore):
        assert store.final_key(STUDY, digest) == f"objects/{digest[:2]}/{digest[2:4]}/{digest}"
    else:
        assert isinstance(store, CloudinaryBlobStore)
        assert store.final_key(STUDY, digest) == f"{store.folder}/studies/{STUDY}/{digest}"
    for uid, sha in [(STUDY, "ABC"), (STUDY, digest.upper()), ("1.2/../3", digest), ("", digest), ("a b", digest)]:
        with pytest.raises(ValueError):
            store.final_key(uid, sha)


async def test_promote_is_idempotent(subject: Subject) -> None:
    store = subject.store
    data = os.urandom(700_000)
    blob = await store.stage(chunked(data), max_bytes=MB)
    final = store.final_key(STUDY, blob.sha256)
    assert not await store.exists(final)

    assert await store.promote(blob.key, final) is True  # created it
    assert await store.exists(final)
    assert await store.promote(blob.key, final) is False  # again after success (a redelivered command)
    await store.discard(blob.key)  # what callers do after their commit
    assert subject.staged() == []
    assert await store.promote(blob.key, final) is False  # promoted and discarded before: still fine

    again = await store.stage(chunked(data), max_bytes=MB)  # the same content arriving twice
    assert await store.promote(again.key, final) is False  # final already holds it: fine, not ours to delete
    await store.discard(again.key)
    assert subject.staged() == []
    assert await store.read_range(final, 0, len(data)) == data


async def test_read_range_and_stream(subject: Subject) -> None:
    store = subject.store
    data = os.urandom(MB + 3)
    final = await staged_final(store, data)
    size = len(data)
    for start, length in [(0, 10), (100, 1000), (size - 5, 100), (size, 10), (size + 10, 5), (7, 0), (0, size)]:
        assert await store.read_range(final, start, length) == data[start : start + length], (start, length)

    assert b"".join([chunk async for chunk in store.stream(final)]) == data
    for start, end in [(0, 1), (10, 20), (12345, 654321), (size - 1, None), (size - 10, size), (500, 500)]:
        got = b"".join([chunk async for chunk in store.stream(final, start, end, chunk_size=100_000)])
        assert got == data[start:end], (start, end)
    assert [len(chunk) async for chunk in store.stream(final, 0, 250_000, chunk_size=100_000)] == [
        100_000,
        100_000,
        50_000,
    ]
    assert b"".join([chunk async for chunk in store.stream(final, size + 5)]) == b""

    staged = await store.stage(chunked(data[:1000]), max_bytes=MB)  # staging keys read the same way
    assert b"".join([chunk async for chunk in store.stream(staged.key, 10, 20)]) == data[10:20]
    with pytest.raises(ValueError):
        await store.read_range(final, -1, 10)
    with pytest.raises(ValueError):
        await anext(store.stream(final, 10, 5))


async def test_missing_blob(subject: Subject) -> None:
    store = subject.store
    final = store.final_key(STUDY, sha256(b"never stored"))
    assert not await store.exists(final)
    with pytest.raises(BlobNotFound):
        await store.size(final)
    with pytest.raises(BlobNotFound):
        await store.read_range(final, 0, 10)
    with pytest.raises(BlobNotFound):
        await store.read_range(final, 0, 0)
    stream = store.stream(final)  # nothing happens before the first iteration
    with pytest.raises(BlobNotFound):
        await anext(stream)
    with pytest.raises(BlobNotFound):
        async with store.local_file(final):
            pass


async def test_local_file(subject: Subject) -> None:
    store = subject.store
    data = os.urandom(1_200_000)
    staged = await store.stage(chunked(data), max_bytes=10 * MB)
    async with store.local_file(staged.key) as path:
        assert path.read_bytes() == data
    final = store.final_key(STUDY, staged.sha256)
    await store.promote(staged.key, final)
    async with store.local_file(final) as path:
        assert path.read_bytes() == data
        if isinstance(store, FilesystemBlobStore):
            assert path == store.path(final)  # the real file, no copy
    if isinstance(store, FilesystemBlobStore):
        assert path.exists()
    else:
        assert not path.exists()  # the temporary download is gone
        await subject.assert_nothing_left()


async def test_delete_and_discard_are_idempotent(subject: Subject) -> None:
    store = subject.store
    final = await staged_final(store, os.urandom(50_000))
    await store.delete(final)
    assert not await store.exists(final)
    await store.delete(final)

    staged = await store.stage(chunked(os.urandom(50_000)), max_bytes=MB)
    await store.discard(staged.key)
    assert not await store.exists(staged.key)
    await store.discard(staged.key)
    await subject.assert_nothing_left()


async def test_too_large_leaves_nothing(subject: Subject) -> None:
    with pytest.raises(BlobTooLarge) as raised:  # past three 1 MiB batches: some are on disk by then
        await subject.store.stage(chunked(os.urandom(5 * MB)), max_bytes=3_500_000)
    assert raised.value.limit == 3_500_000
    await subject.assert_nothing_left()


async def test_failing_source_leaves_nothing(subject: Subject) -> None:
    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(os.urandom(2_500_000)):  # past two batches: writes have happened
            yield chunk
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await subject.store.stage(source(), max_bytes=10 * MB)
    await subject.assert_nothing_left()


async def test_cancelled_source_leaves_nothing(subject: Subject) -> None:
    reached = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(os.urandom(2_500_000)):
            yield chunk
        reached.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    task = asyncio.create_task(subject.store.stage(source(), max_bytes=10 * MB))
    await asyncio.wait_for(reached.wait(), 10)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await subject.assert_nothing_left()


async def test_sweep_staging(subject: Subject) -> None:
    store = subject.store
    old = await store.stage(chunked(os.urandom(10_000)), max_bytes=MB)
    new = await store.stage(chunked(os.urandom(10_000)), max_bytes=MB)
    final = await staged_final(store, os.urandom(10_000))
    assert await store.sweep_staging(3600) == 0

    subject.age(old.key, 7200)
    assert await store.sweep_staging(3600) == 1
    assert subject.staged() == [new.key]
    assert await store.sweep_staging(0) == 1
    assert subject.staged() == []
    assert await store.exists(final)  # final blobs are never swept


async def test_keys_outside_the_store_are_refused(subject: Subject) -> None:
    store = subject.store
    staged = await store.stage(chunked(b"abc"), max_bytes=10)
    prefix = staged.key.rpartition("/")[0]
    bad_keys = [
        "",
        "../escape",
        "/etc/passwd",
        f"{prefix}/../../../etc/passwd",
        f"{prefix}/./x",
        f"{prefix}//{uuid.uuid4().hex}",
        f"{prefix}\\..\\x",
        "other-folder/staging/" + uuid.uuid4().hex,
        staged.key + "/child",
    ]
    if isinstance(store, FilesystemBlobStore):
        bad_keys += ["tmp/" + uuid.uuid4().hex + ".part", "objects/aa/bb/" + sha256(b"x"), "staging"]
    for key in bad_keys:
        for call in (store.exists, store.size, store.delete, store.discard):
            with pytest.raises(ValueError):
                await call(key)
        with pytest.raises(ValueError):
            await store.read_range(key, 0, 1)
        with pytest.raises(ValueError):
            await anext(store.stream(key))
        with pytest.raises(ValueError):
            async with store.local_file(key):
                pass
        with pytest.raises(ValueError):
            await store.promote(key, store.final_key(STUDY, staged.sha256))
    with pytest.raises(ValueError):  # promote goes from staging to final, never the other way
        await store.promote(store.final_key(STUDY, staged.sha256), staged.key)


async def test_stage_throughput(subject: Subject, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: 0.5 MB blobs (the typical DICOM instance) staged by 16 concurrent requests."""
    store = subject.store
    count = 400 if isinstance(store, FilesystemBlobStore) else 150
    payload = os.urandom(500_000)
    gate = asyncio.Semaphore(16)

    async def one() -> str:
        async with gate:
            return (await store.stage(chunked(payload), max_bytes=MB)).key

    started = time.perf_counter()
    keys = await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    promoted = time.perf_counter()

    async def promote(key: str) -> None:
        async with gate:
            await store.promote(key, store.final_key(STUDY, sha256(payload)))

    await asyncio.gather(*(promote(key) for key in keys))
    promote_elapsed = time.perf_counter() - promoted
    with capsys.disabled():
        print(
            f"\n[blobstore throughput] {store.name}: stage() {count / elapsed:.0f} blobs/s "
            f"({count * len(payload) / elapsed / MB:.0f} MB/s) for {count} × 0.5 MB, 16 concurrent, "
            f"{os.cpu_count()} cores; promote() {count / promote_elapsed:.0f}/s"
        )


# ---------------------------------------------------------------------------------------------------- filesystem


async def test_filesystem_crash_safety(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    data = os.urandom(2_500_000)
    paused, resume = asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(data[:2_200_000]):
            yield chunk
        paused.set()
        await resume.wait()
        yield data[2_200_000:]

    task = asyncio.create_task(store.stage(source(), max_bytes=10 * MB))
    await asyncio.wait_for(paused.wait(), 10)
    await asyncio.sleep(0.05)
    # Mid-blob: bytes are on disk, but only under tmp/, which no key can name.
    assert list(store.staging_dir.iterdir()) == []
    (partial,) = store.tmp_dir.iterdir()
    assert partial.stat().st_size >= 1 << 20
    with pytest.raises(ValueError):
        store.path(f"tmp/{partial.name}")
    assert not await store.exists(f"staging/{partial.name.removesuffix('.part')}")

    resume.set()
    blob = await task
    assert list(store.tmp_dir.iterdir()) == []
    assert store.path(blob.key).read_bytes() == data
    assert len(synced) >= 1  # the file (its staging entry needs none: promotion fsyncs objects/)

    final = store.final_key(STUDY, blob.sha256)
    assert not store.path(final).exists()  # nothing at the final key until promote
    synced.clear()
    await store.promote(blob.key, final)
    assert store.path(final).read_bytes() == data
    assert len(synced) >= 1  # the objects directory

    # A writer that died mid-blob leaves a partial file in tmp/: invisible, and swept once old.
    leftover = store.tmp_dir / f"{uuid.uuid4().hex}.part"
    leftover.write_bytes(b"torn")
    assert await store.sweep_staging(3600) == 0
    assert leftover.exists()
    then = time.time() - 7200
    os.utime(leftover, (then, then))
    assert await store.sweep_staging(3600) == 0  # not a staged blob, so not counted…
    assert not leftover.exists()  # …but gone
    await store.close()


# ---------------------------------------------------------------------------------------------------- cloudinary


async def test_standin_refuses_a_wrong_signature(standin: CloudinaryStandIn, tmp_path: Path) -> None:
    """If the store (or the SDK as configured) signed wrongly, the stand-in would refuse, as Cloudinary does."""
    wrong = standin.cloudinary_url.replace(standin.api_secret, "not-the-secret")
    store = make_blob_store(cloudinary_settings(standin, tmp_path, cloudinary_url=wrong))
    refused = standin.calls["refused"]
    with pytest.raises(BlobStoreError, match="Invalid Signature"):
        await store.stage(chunked(b"dicom bytes"), max_bytes=MB)
    assert standin.calls["refused"] > refused
    await Subject(store, standin).assert_nothing_left()
    with pytest.raises(BlobStoreError):
        await store.sweep_staging(0)  # the Admin API checks the basic-auth secret
    await store.close()


async def test_standin_checks_signatures_as_cloudinary_documents_them(standin: CloudinaryStandIn) -> None:
    """Signed by hand from Cloudinary's documented rule, independently of the SDK."""
    url = f"{standin.url}/v1_1/{standin.cloud}/raw/upload"
    public_id = f"imaging-test/manual/{uuid.uuid4().hex}"
    params = {"public_id": public_id, "timestamp": str(int(time.time())), "type": "authenticated"}
    to_sign = "&".join(f"{key}={params[key]}" for key in sorted(params))
    signature = hashlib.sha1((to_sign + standin.api_secret).encode()).hexdigest()
    files = {"file": ("blob", b"some bytes")}
    async with httpx.AsyncClient() as client:
        good = {**params, "api_key": standin.api_key, "signature": signature}
        response = await client.post(url, data=good, files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["public_id"], body["bytes"], body["type"], body["resource_type"]) == (
            public_id,
            10,
            "authenticated",
            "raw",
        )

        tampered = {**good, "public_id": public_id + "-other"}
        response = await client.post(url, data=tampered, files=files)
        assert response.status_code == 401
        assert response.json()["error"]["message"].startswith(f"Invalid Signature {signature}. String to sign - ")

        stale = {**params, "timestamp": str(int(time.time()) - 7200)}
        stale_signature = hashlib.sha1(
            ("&".join(f"{key}={stale[key]}" for key in sorted(stale)) + standin.api_secret).encode()
        ).hexdigest()
        response = await client.post(
            url, data={**stale, "api_key": standin.api_key, "signature": stale_signature}, files=files
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("Stale request")

        response = await client.post(url, data={**good, "api_key": "000"}, files=files)
        assert response.status_code == 401

        # Delivery of an authenticated asset needs the URL signature.
        path = f"/{standin.cloud}/raw/authenticated"
        right = standin.url_signature(public_id)
        response = await client.get(f"{standin.url}{path}/s--{right}--/v1/{public_id}")
        assert (response.status_code, response.content) == (200, b"some bytes")
        response = await client.get(f"{standin.url}{path}/s--{right}--/v1/{public_id}", headers={"Range": "bytes=5-"})
        assert (response.status_code, response.content) == (206, b"bytes")
        assert response.headers["content-range"] == "bytes 5-9/10"
        for bad in (f"{path}/s--AAAAAAAA--/v1/{public_id}", f"{path}/v1/{public_id}"):
            response = await client.get(standin.url + bad)
            assert response.status_code == 401 and response.headers["x-cld-error"]

        response = await client.get(
            f"{standin.url}/v1_1/{standin.cloud}/resources/raw/authenticated", auth=(standin.api_key, "wrong")
        )
        assert response.status_code == 401


async def test_cloudinary_delivery_urls_are_signed_and_on_the_delivery_prefix(
    standin: CloudinaryStandIn, tmp_path: Path
) -> None:
    store = make_blob_store(cloudinary_settings(standin, tmp_path))
    assert isinstance(store, CloudinaryBlobStore)
    blob = await store.stage(chunked(b"0123456789"), max_bytes=MB)
    url = store.delivery_url(blob.key)
    assert re.fullmatch(
        rf"{re.escape(standin.url)}/{standin.cloud}/raw/authenticated/s--[A-Za-z0-9_-]{{8}}--/v1/{re.escape(blob.key)}",
        url,
    )
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"0123456789"
        unsigned = re.sub(r"/s--[^/]+--", "", url)
        assert (await client.get(unsigned)).status_code == 401  # never publicly reachable
    await store.close()


async def test_cloudinary_large_blobs_go_up_in_chunks(standin: CloudinaryStandIn, tmp_path: Path) -> None:
    settings = cloudinary_settings(standin, tmp_path)
    store = CloudinaryBlobStore(
        cloudinary_url=settings.cloudinary_url,
        folder=settings.cloudinary_folder,
        upload_prefix=settings.cloudinary_upload_prefix,
        delivery_prefix=settings.cloudinary_delivery_prefix,
        spool_dir=tmp_path / "spool",
        upload_chunk_size=256 * 1024,
    )
    data = os.urandom(MB)
    chunks_before = standin.calls["upload-chunk"]
    blob = await store.stage(chunked(data), max_bytes=2 * MB)
    assert standin.calls["upload-chunk"] - chunks_before == 4  # Content-Range + X-Unique-Upload-Id parts
    assert (blob.sha256, blob.size) == (sha256(data), len(data))
    assert await store.read_range(blob.key, 0, len(data)) == data

    source = tmp_path / "big.dcm"
    source.write_bytes(data)
    from_file = await store.stage_file(source)
    assert standin.calls["upload-chunk"] - chunks_before == 8
    assert await store.read_range(from_file.key, 0, len(data)) == data
    await store.close()


async def test_cloudinary_cancel_during_upload_leaves_nothing(standin: CloudinaryStandIn, tmp_path: Path) -> None:
    subject = Subject(make_blob_store(cloudinary_settings(standin, tmp_path)), standin)
    uploads, stored = standin.calls["upload"], standin.calls["stored"]
    standin.upload_delay = 0.5
    try:
        task = asyncio.create_task(subject.store.stage(chunked(os.urandom(200_000)), max_bytes=MB))
        for _ in range(500):  # until the upload sits in the stand-in
            if standin.calls["upload"] > uploads:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        standin.upload_delay = 0.0
    assert standin.calls["upload"] == uploads + 1  # it did reach Cloudinary…
    assert task.cancelled()
    for _ in range(300):
        if standin.calls["stored"] > stored:
            break
        await asyncio.sleep(0.01)
    assert standin.calls["stored"] == stored + 1  # …landed there after the cancellation…
    await subject.assert_nothing_left()  # …and was destroyed
    await subject.store.close()


async def test_cloudinary_sha256_account(tmp_path: Path) -> None:
    """An account set to SHA-256 signatures: the store follows `?signature_algorithm=sha256` in CLOUDINARY_URL."""
    with CloudinaryStandIn(tmp_path / "cld", signature_algorithm="sha256") as standin:
        url = standin.cloudinary_url + "?signature_algorithm=sha256"
        store = make_blob_store(cloudinary_settings(standin, tmp_path, cloudinary_url=url))
        final = await staged_final(store, b"signed with sha256")
        assert await store.read_range(final, 0, 100) == b"signed with sha256"
        await store.close()
        sha1_store = make_blob_store(cloudinary_settings(standin, tmp_path))
        with pytest.raises(BlobStoreError, match="Invalid Signature"):
            await sha1_store.stage(chunked(b"x"), max_bytes=10)
        await sha1_store.close()


async def test_standin_admin_api_pages_with_next_cursor(standin: CloudinaryStandIn, tmp_path: Path) -> None:
    """The SDK's Admin API listing, page by page, as sweep_staging walks it."""
    settings = cloudinary_settings(standin, tmp_path)
    store = make_blob_store(settings)
    staged = {(await store.stage(chunked(os.urandom(100)), max_bytes=MB)).key for _ in range(7)}
    seen: list[str] = []
    cursor = None
    options = {"api_key": standin.api_key, "api_secret": standin.api_secret, "cloud_name": standin.cloud}
    while True:
        page = await asyncio.to_thread(
            cloudinary.api.resources,
            resource_type="raw",
            type="authenticated",
            prefix=f"{settings.cloudinary_folder}/staging/",
            max_results=3,
            next_cursor=cursor,
            upload_prefix=standin.url,
            **options,
        )
        assert len(page["resources"]) <= 3
        seen += [resource["public_id"] for resource in page["resources"]]
        assert all(resource["bytes"] == 100 and resource["created_at"].endswith("Z") for resource in page["resources"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert sorted(seen) == sorted(staged)
    await store.close()


async def test_standin_runs_as_a_process(tmp_path: Path) -> None:
    from tests.support import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cloudinary_standin", "--port", str(port), "--dir", str(tmp_path / "cld")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert line.strip() == f"CLOUDINARY_STANDIN_URL=http://127.0.0.1:{port}"
        cloudinary_url = (await asyncio.to_thread(process.stdout.readline)).strip().partition("=")[2]
        base = f"http://127.0.0.1:{port}"
        settings = Settings(
            blob_store="cloudinary",
            blob_dir=str(tmp_path / "blobs"),
            cloudinary_url=cloudinary_url,
            cloudinary_upload_prefix=base,
            cloudinary_delivery_prefix=base,
        )
        store = make_blob_store(settings)
        for _ in range(200):  # the line is printed just before uvicorn starts accepting
            try:
                async with httpx.AsyncClient() as client:
                    await client.get(base + "/")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        final = await staged_final(store, b"from a subprocess")
        assert await store.read_range(final, 5, 3) == b"a s"
        assert (tmp_path / "cld" / "raw" / "authenticated" / final).read_bytes() == b"from a subprocess"
        await store.close()
    finally:
        process.terminate()
        process.wait(15)
