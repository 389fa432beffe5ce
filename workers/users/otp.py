"""E-mail sign-in codes (users.md §3 step 2): challenges in Redis, only a keyed hash of the code.

A challenge lives 5 minutes and dies after 5 wrong codes; an account may get 10 wrong codes an
hour and 5 sends an hour, at least 60 s apart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis

from contracts.errors import RateLimited, Unauthenticated
from contracts.ids import uuid7

TTL = 300
MAX_WRONG_PER_CHALLENGE = 5
MAX_WRONG_PER_HOUR = 10
MAX_SENDS_PER_HOUR = 5
MIN_SEND_GAP = 60


@dataclass(slots=True)
class Challenge:
    id: str
    user_id: UUID
    expires_at: float
    attempts: int


class OtpStore:
    def __init__(self, redis: Redis, secret: str) -> None:
        self.redis = redis
        self._key = hashlib.sha256(b"otp\x00" + secret.encode()).digest()

    def _hash(self, challenge_id: str, code: str) -> str:
        return hmac.new(self._key, f"{challenge_id}:{code}".encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_code() -> str:
        return f"{secrets.randbelow(1_000_000):06d}"

    async def check_send_allowed(self, user_id: UUID) -> None:
        """5 sends an hour, at least 60 s apart (429 with Retry-After otherwise)."""
        key = f"otp:sends:{user_id}"
        now = time.time()
        await self.redis.zremrangebyscore(key, "-inf", now - 3600)
        sends = [float(s) for _, s in await self.redis.zrange(key, 0, -1, withscores=True)]
        if sends and now - max(sends) < MIN_SEND_GAP:
            wait = int(MIN_SEND_GAP - (now - max(sends))) + 1
            raise RateLimited("wait before asking for another code", retry_after=wait)
        if len(sends) >= MAX_SENDS_PER_HOUR:
            raise RateLimited("too many codes sent this hour", retry_after=int(min(sends) + 3600 - now) + 1)

    async def record_send(self, user_id: UUID) -> None:
        key = f"otp:sends:{user_id}"
        now = time.time()
        await self.redis.zadd(key, {str(now): now})
        await self.redis.expire(key, 3600)

    async def create(self, user_id: UUID, code: str) -> Challenge:
        challenge = Challenge(str(uuid7()), user_id, time.time() + TTL, 0)
        await self.redis.hset(f"otp:ch:{challenge.id}", mapping={
            "userId": str(user_id), "hash": self._hash(challenge.id, code), "expiresAt": challenge.expires_at,
            "attempts": 0,
        })
        await self.redis.expire(f"otp:ch:{challenge.id}", TTL)
        return challenge

    async def replace_code(self, challenge: Challenge, code: str) -> None:
        await self.redis.hset(f"otp:ch:{challenge.id}", "hash", self._hash(challenge.id, code))

    async def get(self, challenge_id: str) -> Challenge:
        data = await self.redis.hgetall(f"otp:ch:{challenge_id}")
        if not data or float(data[b"expiresAt"]) <= time.time():
            raise Unauthenticated("this code has expired; sign in again", code="otp_expired")
        return Challenge(challenge_id, UUID(data[b"userId"].decode()), float(data[b"expiresAt"]),
                         int(data[b"attempts"]))

    async def verify(self, challenge: Challenge, code: str) -> bool:
        """True when right (the challenge is then gone). Wrong codes are counted per challenge
        and per account; the fifth wrong one kills the challenge."""
        key = f"otp:ch:{challenge.id}"
        stored = await self.redis.hget(key, "hash")
        if stored is not None and hmac.compare_digest(stored.decode(), self._hash(challenge.id, code)):
            await self.redis.delete(key)
            return True
        wrong_key = f"otp:wrong:{challenge.user_id}"
        wrong = await self.redis.incr(wrong_key)
        if wrong == 1:
            await self.redis.expire(wrong_key, 3600)
        attempts = await self.redis.hincrby(key, "attempts", 1)
        if attempts >= MAX_WRONG_PER_CHALLENGE:
            await self.redis.delete(key)
        challenge.attempts = attempts
        return False

    async def check_wrong_allowed(self, user_id: UUID) -> None:
        wrong = await self.redis.get(f"otp:wrong:{user_id}")
        if wrong is not None and int(wrong) >= MAX_WRONG_PER_HOUR:
            ttl = await self.redis.ttl(f"otp:wrong:{user_id}")
            raise RateLimited("too many wrong codes for this account", retry_after=max(int(ttl), 1))

    async def discard(self, challenge_id: str) -> None:
        await self.redis.delete(f"otp:ch:{challenge_id}")
