"""Who is calling: strict JWT verification, the revoked-session mirror, and the middleware that
enforces every route's role rule (users.md §3, spec README §1).

No request waits on Redis or a worker: tokens are verified locally (cached per token until its
`exp`), and revoked session ids are mirrored in memory, loaded from Redis at start-up and after
every broker reconnect and kept current by `users.session.revoked` events. If the mirror cannot
be trusted (Redis unreachable at start-up) authenticated routes fail closed with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiormq
import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send
from redis.asyncio import Redis

from contracts.common import Role
from contracts.envelope import Actor, decode_envelope
from contracts.errors import DomainError, Forbidden, Unauthenticated, Unavailable
from contracts.observability import log_fields
from contracts.settings import Settings
from contracts.tokens import Claims, TokenVerifier
from contracts.topology import EVENTS
from contracts.users import SessionRevoked, UserEventBase
from edge.access import Access

log = logging.getLogger("edge.auth")
REVOKED_KEY = "auth:revoked"
REVOCATION_EVENTS = ("users.session.revoked", "users.user.disabled", "users.user.deleted")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: UUID
    role: Role
    session_id: str
    claims: Claims


class RevocationMirror:
    """In-memory copy of the revoked session ids, with listeners (the relay closes streams)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._revoked: dict[str, float] = {}
        self.trusted = False
        self.listeners: list[Callable[[str, Any], None]] = []
        self._refresher: asyncio.Task[None] | None = None

    def is_revoked(self, sid: str) -> bool:
        until = self._revoked.get(sid)
        if until is None:
            return False
        if until < time.time():
            self._revoked.pop(sid, None)
            return False
        return True

    def add(self, sids: list[str], until: float) -> None:
        for sid in sids:
            self._revoked[sid] = max(until, self._revoked.get(sid, 0.0))

    async def load(self) -> None:
        now = time.time()
        entries = await self.redis.zrangebyscore(REVOKED_KEY, now, "+inf", withscores=True)
        for sid, until in entries:
            self.add([sid.decode()], until)
        for sid in [s for s, u in self._revoked.items() if u < now]:
            del self._revoked[sid]
        self.trusted = True

    async def start(self) -> None:
        try:
            await self.load()
        except Exception as exc:
            log.error("revocation list unavailable; failing closed until it loads",
                      extra=log_fields(error=repr(exc)))
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """Reload until trusted; afterwards prune and resync every minute as a safety net."""
        while True:
            await asyncio.sleep(2.0 if not self.trusted else 60.0)
            try:
                await self.load()
            except Exception as exc:
                log.warning("revocation reload failed", extra=log_fields(error=repr(exc)))

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def bind(self, channel: aiormq.abc.AbstractChannel) -> None:
        """On every broker (re)connect: a private queue for revocations, then a reload."""
        await channel.exchange_declare(EVENTS, exchange_type="topic", durable=True)
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
        for key in REVOCATION_EVENTS:
            await channel.queue_bind(declared.queue, EVENTS, routing_key=key)
        await channel.basic_consume(declared.queue, self._on_event, no_ack=True)
        try:
            await self.load()
        except Exception as exc:
            log.warning("revocation reload after reconnect failed", extra=log_fields(error=repr(exc)))

    async def _on_event(self, message: aiormq.abc.DeliveredMessage) -> None:
        try:
            envelope = decode_envelope(message.body)
            if envelope.type == "users.session.revoked":
                event = msgspec.json.decode(envelope.payload, type=SessionRevoked)
                self.add(event.session_ids, event.expires_at.timestamp())
                for listener in self.listeners:
                    listener("sessions", event.session_ids)
            else:
                user = msgspec.json.decode(envelope.payload, type=UserEventBase)
                for listener in self.listeners:
                    listener("user", user.user_id)
        except Exception:
            log.exception("could not apply a revocation event")


class Authenticator:
    def __init__(self, settings: Settings, mirror: RevocationMirror) -> None:
        self.verifier = TokenVerifier(settings)
        self.mirror = mirror

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("sign in first: no bearer token")
        claims = self.verifier.verify(token)
        if not self.mirror.trusted:
            raise Unavailable("session revocations cannot be checked right now")
        if self.mirror.is_revoked(claims.sid):
            raise Unauthenticated("this session has ended", code="unauthenticated")
        try:
            role = Role(claims.role)
        except ValueError as exc:
            raise Unauthenticated("invalid access token") from exc
        return Principal(UUID(claims.sub), role, claims.sid, claims)


def bearer_of(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def client_facts(scope: Scope) -> tuple[str | None, str | None]:
    ip = scope["client"][0] if scope.get("client") else None
    ua = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            ua = value.decode("latin-1")[:300]
            break
    return ip, ua


def actor_of(scope: Scope) -> Actor:
    """The envelope actor of this request: the principal (if any) and the client's facts."""
    ip, ua = client_facts(scope)
    principal: Principal | None = scope.get("user")
    if principal is None:
        return Actor(ip=ip, user_agent=ua)
    return Actor(user_id=principal.user_id, role=principal.role.value, session_id=principal.session_id,
                 ip=ip, user_agent=ua)


class RateWindow:
    """The general per-user limit (requests per minute), counted in this process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = 0
        self._counts: dict[UUID, int] = {}

    def hit(self, user_id: UUID) -> None:
        window = int(time.time() // 60)
        if window != self._window:
            self._window, self._counts = window, {}
        count = self._counts.get(user_id, 0) + 1
        self._counts[user_id] = count
        if count > self.per_minute:
            from contracts.errors import RateLimited

            raise RateLimited("request rate limit reached", retry_after=60 - int(time.time() % 60))


class AuthMiddleware:
    """Enforces the route's `Access` rule before the handler runs. Refusals are audited."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        handler = scope.get("route_handler")
        rule: Access | None = handler.opt.get("access") if handler is not None else None
        state = scope["app"].state
        if rule is None:
            if scope.get("method") == "OPTIONS":  # Litestar's own preflight handlers
                await self.app(scope, receive, send)
                return
            raise DomainError("this route has no access rule", code="internal_error")
        token = bearer_of(scope)
        if rule.public:
            if token:
                with contextlib.suppress(DomainError):
                    scope["user"] = state.authenticator.authenticate(token)
            await self.app(scope, receive, send)
            return
        try:
            principal = state.authenticator.authenticate(token)
        except Unauthenticated as exc:
            state.auditor.refused(scope, "http.unauthenticated", exc.code)
            raise
        scope["user"] = principal
        if principal.claims.mcp and not rule.allow_password_change_pending:
            raise Forbidden("change your password first", code="password_change_required")
        if rule.roles is not None and principal.role not in rule.roles:
            state.auditor.refused(scope, "http.forbidden", "forbidden")
            raise Forbidden(f"this needs one of: {rule.describe()}", code="forbidden")
        (state.dicomweb_rate_window if rule.rate == "dicomweb" else state.rate_window).hit(principal.user_id)
        await self.app(scope, receive, send)


async def open_auth(state: Any, settings: Settings, name: str) -> None:
    """What the edge and the relay both hold: Redis, the revocation mirror, the authenticator and a
    bus link that re-binds the mirror after every reconnect. The caller starts the bus."""
    from contracts.rpc import RpcClient

    state.redis = Redis.from_url(settings.redis_url)
    state.mirror = RevocationMirror(state.redis)
    state.authenticator = Authenticator(settings, state.mirror)
    state.bus = RpcClient(settings.amqp_url, name=name, timeout=settings.command_timeout)
    state.bus.on_connect(state.mirror.bind)
    await state.mirror.start()


async def close_auth(state: Any) -> None:
    await state.bus.close()
    await state.mirror.stop()
    await state.redis.aclose()
