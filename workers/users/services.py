"""What the users handlers need besides the transaction: Redis sessions, limits, the hasher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from contracts.settings import Settings
from workers.users.mail import Mailer
from workers.users.otp import OtpStore
from workers.users.passwords import Hasher
from workers.users.sessions import LoginLimits, Sessions


@dataclass
class UsersServices:
    settings: Settings
    redis: Redis
    sessions: Sessions
    limits: LoginLimits
    hasher: Hasher
    otp: OtpStore
    mailer: Mailer

    async def close(self) -> None:
        self.hasher.close()
        await self.redis.aclose()


def build_services(settings: Settings) -> UsersServices:
    redis = Redis.from_url(settings.redis_url)
    return UsersServices(settings, redis, Sessions(redis, settings), LoginLimits(redis), Hasher(settings),
                         OtpStore(redis, settings.jwt_secret), Mailer(settings))


async def make_services(worker: Any) -> UsersServices:
    return build_services(worker.settings)
