"""What the imaging handlers need besides the transaction: the blob store and Redis (the
metadata cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from contracts.blobstore import BlobStore, make_blob_store
from contracts.settings import Settings


@dataclass
class ImagingServices:
    settings: Settings
    redis: Redis
    blobs: BlobStore

    async def close(self) -> None:
        await self.blobs.close()
        await self.redis.aclose()


async def make_services(worker: Any) -> ImagingServices:
    settings: Settings = worker.settings
    return ImagingServices(settings, Redis.from_url(settings.redis_url), make_blob_store(settings))
