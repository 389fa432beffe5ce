"""Sessions and refresh tokens in Redis (users.md §3), and the sign-in rate limits.

A refresh token is `<sid>.<secret>`; only sha256(secret) is stored. Each use rotates it; the
token just rotated away is honoured for 10 s with the same new pair (sealed under a key derived
from that old secret, so Redis never holds a usable token), and after that its reuse revokes the
whole session. Revoked session ids sit in a sorted set for one access-token lifetime: the edge and
the relay mirror it, learning of new entries from `users.session.revoked` events.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from contracts.errors import RateLimited
from contracts.ids import uuid7
from contracts.settings import Settings

REVOKED_KEY = "auth:revoked"  # zset: sid -> unix time until which the revocation matters
GRACE_SECONDS = 10
HISTORY = 20  # rotated-away hashes kept to recognise a replayed token

_ROTATE = """
local s = redis.call('HMGET', KEYS[1], 'cur', 'prev', 'prevAt', 'grace', 'hist', 'expiresAt')
if not s[1] then return {'missing'} end
local now = tonumber(ARGV[3])
if tonumber(s[6]) <= now then return {'missing'} end
if s[1] == ARGV[1] then
  local hist = ARGV[1]
  local n = 1
  for h in string.gmatch(s[5] or '', '[^,]+') do
    if n >= tonumber(ARGV[7]) then break end
    hist = hist .. ',' .. h
    n = n + 1
  end
  redis.call('HSET', KEYS[1], 'cur', ARGV[2], 'prev', ARGV[1], 'prevAt', ARGV[3], 'grace', ARGV[5],
             'hist', hist, 'lastUsedAt', ARGV[3])
  local ttl = math.min(tonumber(ARGV[6]), tonumber(s[6]) - now)
  redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(ttl)))
  return {'rotated'}
end
if s[2] == ARGV[1] and (now - tonumber(s[3])) <= tonumber(ARGV[4]) then return {'grace', s[4]} end
if string.find(',' .. (s[5] or '') .. ',', ',' .. ARGV[1] .. ',', 1, true) then return {'reused'} end
return {'invalid'}
"""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _grace_key(secret: str) -> bytes:
    return hashlib.sha256(b"refresh-grace\x00" + secret.encode()).digest()


def seal_for(secret: str, plaintext: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(_grace_key(secret)).encrypt(nonce, plaintext, None)).decode()


def open_with(secret: str, sealed: str) -> bytes | None:
    try:
        raw = base64.b64decode(sealed)
        return AESGCM(_grace_key(secret)).decrypt(raw[:12], raw[12:], None)
    except (InvalidTag, ValueError):
        return None


def split_token(token: str) -> tuple[str, str] | None:
    sid, dot, secret = token.partition(".")
    if not dot or not sid or len(secret) < 20 or len(sid) > 64:
        return None
    return sid, secret


@dataclass(slots=True)
class SessionInfo:
    id: str
    user_id: UUID
    created_at: float
    last_used_at: float
    expires_at: float
    ip: str | None
    user_agent: str | None
    mfa: bool


@dataclass(slots=True)
class Rotation:
    outcome: str  # rotated | grace | reused | invalid | missing
    grace_pair: bytes | None = None


class Sessions:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._rotate = redis.register_script(_ROTATE)

    @staticmethod
    def _key(sid: str) -> str:
        return f"sess:{sid}"

    @staticmethod
    def _user_key(user_id: UUID) -> str:
        return f"usess:{user_id}"

    def new_secret(self) -> str:
        return secrets.token_urlsafe(32)

    async def create(self, user_id: UUID, *, ip: str | None, user_agent: str | None, mfa: bool
                     ) -> tuple[str, str, float]:
        """A new session; returns (sid, refresh token, refresh expiry as unix time)."""
        sid = str(uuid7())
        secret = self.new_secret()
        now = time.time()
        expires = now + self.settings.refresh_token_max_ttl
        key = self._key(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={
                "userId": str(user_id), "createdAt": now, "lastUsedAt": now, "expiresAt": expires,
                "ip": ip or "", "ua": (user_agent or "")[:300], "mfa": int(mfa), "cur": _hash(secret),
                "prev": "", "prevAt": 0, "grace": "", "hist": "",
            })
            pipe.expire(key, int(self.settings.refresh_token_idle_ttl))
            pipe.sadd(self._user_key(user_id), sid)
            await pipe.execute()
        return sid, f"{sid}.{secret}", min(expires, now + self.settings.refresh_token_idle_ttl)

    async def get(self, sid: str) -> SessionInfo | None:
        data = await self.redis.hgetall(self._key(sid))
        if not data:
            return None
        d = {k.decode(): v.decode() for k, v in data.items()}
        return SessionInfo(
            id=sid, user_id=UUID(d["userId"]), created_at=float(d["createdAt"]),
            last_used_at=float(d["lastUsedAt"]), expires_at=float(d["expiresAt"]), ip=d.get("ip") or None,
            user_agent=d.get("ua") or None, mfa=d.get("mfa") == "1",
        )

    async def matches(self, sid: str, secret: str) -> bool:
        """The presented secret is the current or the just-rotated one of this session."""
        cur, prev = await self.redis.hmget(self._key(sid), "cur", "prev")
        digest = _hash(secret).encode()
        return digest in (cur, prev)

    async def rotate(self, sid: str, presented: str, new_secret: str, sealed_pair: str) -> Rotation:
        now = time.time()
        result = await self._rotate(
            keys=[self._key(sid)],
            args=[_hash(presented), _hash(new_secret), now, GRACE_SECONDS, sealed_pair,
                  int(self.settings.refresh_token_idle_ttl), HISTORY],
        )
        outcome = result[0].decode()
        if outcome == "grace":
            return Rotation("grace", open_with(presented, result[1].decode()))
        return Rotation(outcome)

    async def refresh_expiry(self, sid: str) -> float:
        info = await self.get(sid)
        now = time.time()
        if info is None:
            return now
        return min(info.expires_at, now + self.settings.refresh_token_idle_ttl)

    async def list_for(self, user_id: UUID) -> list[SessionInfo]:
        sids = [s.decode() for s in await self.redis.smembers(self._user_key(user_id))]
        found: list[SessionInfo] = []
        stale: list[str] = []
        for sid in sids:
            info = await self.get(sid)
            (found if info is not None else stale).append(info or sid)  # type: ignore[arg-type]
        if stale:
            await self.redis.srem(self._user_key(user_id), *stale)
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    async def revoke(self, user_id: UUID, sids: list[str]) -> float:
        """End these sessions now; returns the unix time until which the revocation matters."""
        until = time.time() + self.settings.access_token_ttl
        if not sids:
            return until
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid in sids:
                pipe.delete(self._key(sid))
            pipe.srem(self._user_key(user_id), *sids)
            pipe.zadd(REVOKED_KEY, {sid: until for sid in sids})
            pipe.zremrangebyscore(REVOKED_KEY, "-inf", time.time())
            await pipe.execute()
        return until

    async def all_of(self, user_id: UUID) -> list[str]:
        return [s.decode() for s in await self.redis.smembers(self._user_key(user_id))]


class LoginLimits:
    """Failed sign-ins per account (delay doubling from 30 s to 15 min after 5) and attempts
    per IP (100 per 15 min); refreshes per session (30 per minute)."""

    IP_LIMIT = 100
    IP_WINDOW = 900
    FREE_FAILURES = 5
    FIRST_DELAY = 30
    MAX_DELAY = 900
    REFRESH_LIMIT = 30

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit_ip(self, ip: str | None) -> None:
        if not ip:
            return
        key = f"rl:login:ip:{ip}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.IP_WINDOW, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        if count > self.IP_LIMIT:
            raise RateLimited("too many sign-in attempts from this address", retry_after=max(ttl, 1))

    async def check_account(self, email: str) -> None:
        until = await self.redis.hget(f"rl:login:acct:{email}", "until")
        if until is not None:
            wait = float(until) - time.time()
            if wait > 0:
                raise RateLimited("too many failed sign-ins for this account", retry_after=int(wait) + 1)

    async def fail_account(self, email: str) -> None:
        key = f"rl:login:acct:{email}"
        fails = await self.redis.hincrby(key, "fails", 1)
        if fails >= self.FREE_FAILURES:
            delay = min(self.FIRST_DELAY * 2 ** (fails - self.FREE_FAILURES), self.MAX_DELAY)
            await self.redis.hset(key, "until", time.time() + delay)
        await self.redis.expire(key, 86400)

    async def reset_account(self, email: str) -> None:
        await self.redis.delete(f"rl:login:acct:{email}")

    async def hit_refresh(self, sid: str) -> None:
        key = f"rl:refresh:{sid}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 60, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        if count > self.REFRESH_LIMIT:
            raise RateLimited("too many refreshes for this session", retry_after=max(ttl, 1))

