"""What the imaging handlers need besides the transaction: the blob store and Redis (the
metadata cache)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from contracts.blobstore import BlobStore, make_blob_store
from contracts.settings import Settings


@dataclass
class ImagingServices:
    settings: Settings
    redis: Redis
    blobs: BlobStore
    parsers: Executor | None = field(default=None)  # header parsing off this process's GIL (None: a thread)

    def restart_parsers(self) -> None:
        """A parser process died (the pool is broken): start a new pool; the message is retried."""
        if self.parsers is not None:
            self.parsers.shutdown(wait=False, cancel_futures=True)
        self.parsers = _pool(self.settings)

    async def close(self) -> None:
        if self.parsers is not None:
            self.parsers.shutdown(wait=False, cancel_futures=True)
        await self.blobs.close()
        await self.redis.aclose()


def _pool(settings: Settings) -> Executor | None:
    if settings.imaging_parse_processes <= 0:
        return None
    # forkserver: children start from a clean interpreter, not a fork of this one's threads and sockets.
    return ProcessPoolExecutor(max_workers=settings.imaging_parse_processes,
                               mp_context=multiprocessing.get_context("forkserver"))


async def make_services(worker: Any) -> ImagingServices:
    settings: Settings = worker.settings
    return ImagingServices(settings, Redis.from_url(settings.redis_url), make_blob_store(settings), _pool(settings))
