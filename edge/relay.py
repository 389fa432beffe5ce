"""The relay (its own process, :5006): SSE at `/events/stream`, WebSocket at `/events/ws`.

Both carry the same messages with the same filters (realtime.md). A token comes in the
`Authorization` header or, for browsers' EventSource, the `access_token` query parameter, and is
verified exactly as at the edge. A connection closes when its session is revoked, after 12 h, or
when its client is too slow (after a `resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, WebSocket, asgi, get, websocket
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect
from litestar.types import Receive, Scope, Send
from redis.asyncio import Redis

from contracts.errors import DomainError, RateLimited
from contracts.observability import log_fields, setup_logging
from contracts.settings import Settings, get_settings
from edge.access import public, staff
from edge.auth import Principal, close_auth, open_auth
from edge.problems import EXCEPTION_HANDLERS
from edge.realtime import Connection, Hub, overlaps

log = logging.getLogger("relay")
_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
CLOSE_CODES = {"revoked": 4409, "overflow": 1013, "expired": 1000, "shutdown": 1001, "error": 1011}


class Slots:
    """At most N live connections per user, across every relay process (a Redis sorted set of
    connection ids, each kept alive by its heartbeat)."""

    def __init__(self, redis: Redis, limit: int, heartbeat: float) -> None:
        self.redis = redis
        self.limit = limit
        self.ttl = max(30.0, heartbeat * 3)
        self._script = redis.register_script(_SLOT)

    async def acquire(self, user_id: uuid.UUID, conn_id: str) -> bool:
        now = time.time()
        got = await self._script(keys=[f"relay:conns:{user_id}"],
                                 args=[now, self.limit, now + self.ttl, conn_id, int(self.ttl) + 60])
        return bool(got)

    async def refresh(self, user_id: uuid.UUID, conn_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.redis.zadd(f"relay:conns:{user_id}", {conn_id: time.time() + self.ttl})

    async def release(self, user_id: uuid.UUID, conn_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.redis.zrem(f"relay:conns:{user_id}", conn_id)


class _Filter(msgspec.Struct):
    topics: tuple[str, ...]
    room_id: str | None
    notifications: bool


def _token(headers: Any, query: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return query.get("access_token")


def _split_topics(raw: str | list[str] | None) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else raw.split(",")
    return [t.strip() for t in items if isinstance(t, str) and t.strip()][:50]


def _allowed(principal: Principal, requested: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(kept topics, refused topics): a topic outside the role is ignored."""
    from edge.realtime import ADMIN_ONLY, NOTIFICATION_EVENTS, OWN_ONLY, ROLE_TOPICS

    mine = ROLE_TOPICS[principal.role] + OWN_ONLY + tuple(NOTIFICATION_EVENTS)
    if principal.role.value == "system_admin":
        mine += ADMIN_ONLY
    kept, refused = [], []
    for topic in requested:
        (kept if any(overlaps(topic, own) for own in mine) else refused).append(topic)
    return tuple(kept), refused


def _filter(principal: Principal, query: Any) -> tuple[_Filter, list[str]]:
    topics, refused = _allowed(principal, _split_topics(query.get("topics")))
    if _split_topics(query.get("topics")) and not topics:
        topics = ("-.-.-",)  # every requested topic was refused: nothing but notifications
    room = query.get("roomId") or None
    notifications = str(query.get("notifications", "true")).lower() != "false"
    return _Filter(topics, room, notifications), refused


def _sse(entry_id: str, name: str, data: bytes) -> bytes:
    head = b"id: " + entry_id.encode() + b"\n" if entry_id else b""
    return head + b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _ws_frame(entry_id: str, name: str, data: bytes) -> str:
    head = f'{{"type":"event","id":"{entry_id}",' if entry_id else '{"type":"event",'
    return f'{head}"event":"{name}","data":{data.decode()}}}'


OVERFLOW = ("", "resync", b'{"reason":"overflow"}')
SEND_TIMEOUT = 10.0  # a client that cannot take one more chunk in this time is dropped


async def _problem(send: Send, exc: DomainError, path: str) -> None:
    from edge.problems import PROBLEM, problem_body

    body = msgspec.json.encode(problem_body(exc.to_body(), path))
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if exc.status == 429:
        headers.append((b"retry-after", str((exc.extra or {}).get("retryAfter", 5)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Pulse:
    """Keeps a connection's slot alive: refreshed every heartbeat, whether the stream is idle or busy."""

    def __init__(self, slots: Slots, user_id: uuid.UUID, conn_id: str, every: float) -> None:
        self.slots, self.user_id, self.conn_id, self.every = slots, user_id, conn_id, every
        self.due = time.monotonic() + every

    async def beat(self) -> None:
        now = time.monotonic()
        if now >= self.due:
            self.due = now + self.every
            await self.slots.refresh(self.user_id, self.conn_id)


async def _stop(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@asgi("/events/stream", opt=staff(), is_mount=False)
async def event_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Server-Sent Events: own notifications and the domain events the role may see."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    state = request.app.state
    settings: Settings = state.settings
    hub: Hub = state.hub
    try:
        principal: Principal = state.authenticator.authenticate(_token(request.headers, request.query_params))
    except DomainError as exc:
        await _problem(send, exc, scope["path"])
        return
    flt, _ = _filter(principal, request.query_params)
    resume = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    conn_id = str(uuid.uuid4())
    if not await state.slots.acquire(principal.user_id, conn_id):
        await _problem(send, RateLimited("too many live connections for this user", retry_after=5), scope["path"])
        return
    conn = Connection(principal.user_id, principal.role, principal.session_id, flt.topics, flt.room_id,
                      flt.notifications, settings.relay_queue_max)

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        conn.close("disconnected")

    async def emit(chunk: bytes) -> None:
        async with asyncio.timeout(SEND_TIMEOUT):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    watcher = asyncio.create_task(watch_disconnect())
    catching_up: asyncio.Task[None] | None = None
    pulse = _Pulse(state.slots, principal.user_id, conn_id, settings.relay_heartbeat)
    deadline = time.monotonic() + settings.relay_max_connection_age
    hub.register(conn, resuming=resume is not None)  # from here on, nothing is missed
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]})
        await emit(b"retry: 3000\n\n")
        if resume is not None:  # replayed while the loop below writes (paced by this client)
            catching_up = asyncio.create_task(hub.catch_up(conn, resume))
        while True:
            await pulse.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                items = await conn.next(min(settings.relay_heartbeat, left))
            except TimeoutError:
                if time.monotonic() < deadline:
                    await emit(b": ping\n\n")
                continue
            reason = items.pop() if isinstance(items[-1], str) else None
            chunk = b"".join(_sse(*item) for item in items if not isinstance(item, str))
            if reason == "overflow":
                chunk += _sse(*OVERFLOW)
            if chunk:
                await emit(chunk)
            if reason is not None:
                break
        if conn.closed_reason != "disconnected":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                       SEND_TIMEOUT)
    except (TimeoutError, OSError):
        log.info("slow or gone SSE client dropped", extra=log_fields(userId=str(principal.user_id)))
    finally:
        conn.close("ended")
        await _stop(catching_up)
        watcher.cancel()
        hub.detach(conn)
        await state.slots.release(principal.user_id, conn_id)


@websocket("/events/ws", opt=staff())
async def event_socket(socket: WebSocket) -> None:
    state = socket.app.state
    settings: Settings = state.settings
    hub: Hub = state.hub
    origin = socket.headers.get("origin")
    if origin and origin not in settings.cors_origins:
        await socket.close(code=4403, reason="origin not allowed")  # before accept: HTTP 403
        return
    await socket.accept()
    try:
        principal: Principal = state.authenticator.authenticate(_token(socket.headers, socket.query_params))
    except DomainError as exc:
        await socket.close(code=4401 if exc.status == 401 else 1011, reason=exc.code)
        return
    conn_id = str(uuid.uuid4())
    if not await state.slots.acquire(principal.user_id, conn_id):
        await socket.close(code=4429, reason="too many connections")
        return
    flt, refused = _filter(principal, socket.query_params)
    holder: dict[str, Connection] = {}

    def replace(f: _Filter, *, resuming: bool) -> Connection:
        """A fresh connection (for a resume), registered before the old one is let go."""
        old = holder.get("conn")
        conn = Connection(principal.user_id, principal.role, principal.session_id, f.topics, f.room_id,
                          f.notifications, settings.relay_queue_max)
        hub.register(conn, resuming=resuming)
        holder["conn"] = conn
        if old is not None:
            hub.detach(old)
            old.close("replaced")
        return conn

    async def send(frame: dict[str, Any]) -> None:
        async with asyncio.timeout(SEND_TIMEOUT):
            await socket.send_text(msgspec.json.encode(frame).decode())

    async def sender() -> None:
        deadline = time.monotonic() + settings.relay_max_connection_age
        pulse = _Pulse(state.slots, principal.user_id, conn_id, settings.relay_heartbeat)
        while True:
            await pulse.beat()
            conn = holder["conn"]
            left = deadline - time.monotonic()
            if left <= 0:
                await socket.close(code=CLOSE_CODES["expired"], reason="maximum connection age")
                return
            try:
                items = await conn.next(min(settings.relay_heartbeat, left))
            except TimeoutError:
                continue
            for item in items:
                if isinstance(item, str):  # always the last one
                    if item == "replaced":
                        break
                    if item == "overflow":
                        async with asyncio.timeout(SEND_TIMEOUT):
                            await socket.send_text(_ws_frame(*OVERFLOW))
                    await socket.close(code=CLOSE_CODES.get(item, 1000), reason=item)
                    return
                async with asyncio.timeout(SEND_TIMEOUT):
                    await socket.send_text(_ws_frame(*item))

    async def receiver() -> None:
        while True:
            raw = await socket.receive_text()
            try:
                frame = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                frame = None
            kind = frame.get("type") if isinstance(frame, dict) else None
            if not isinstance(frame, dict):
                frame = {}
            if kind == "ping":
                await send({"type": "pong"})
            elif kind == "subscribe":
                # replaces the filter in place: nothing queued is lost, later entries use the new one
                requested = _split_topics(frame.get("topics"))
                topics, bad = _allowed(principal, requested)
                for topic in bad:
                    await send({"type": "error", "code": "topic_not_allowed", "message": topic})
                room = frame.get("roomId")
                conn = holder["conn"]
                conn.topics = topics or (("-.-.-",) if requested else ())
                conn.room_id = str(room) if room not in (None, "") else None
            elif kind == "resume":
                current = holder["conn"]
                f = _Filter(current.topics, current.room_id, current.notifications)
                await hub.catch_up(replace(f, resuming=True), str(frame.get("lastEventId") or ""))
            else:
                await send({"type": "error", "code": "bad_frame", "message": "unknown frame type"})

    try:
        replace(flt, resuming=False)
        for topic in refused:
            await send({"type": "error", "code": "topic_not_allowed", "message": topic})
        tasks = [asyncio.create_task(sender()), asyncio.create_task(receiver())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in (*done, *pending):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task
    finally:
        if "conn" in holder:
            holder["conn"].close("ended")
            hub.detach(holder["conn"])
        await state.slots.release(principal.user_id, conn_id)


@get("/health", operation_id="RelayHealth", opt=public(), summary="The relay process is up")
async def relay_health(request: Request) -> dict[str, Any]:
    hub: Hub = request.app.state.hub
    conns = list(hub.connections)
    return {"status": "ok", "connections": len(conns), "ingested": hub.ingested,
            "maxQueued": max((c.queue.qsize() for c in conns), default=0),
            "overflowing": sum(c.closed_reason == "overflow" for c in conns), "dropped": hub.dropped}


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state = app.state
    await open_auth(state, settings, "relay")
    state.hub = Hub(settings, state.redis)
    state.mirror.listeners.append(state.hub.on_revocation)
    state.slots = Slots(state.redis, settings.relay_max_connections_per_user, settings.relay_heartbeat)
    state.bus.on_connect(state.hub.bind)
    await state.hub.start()
    await state.bus.start()
    log.info("relay ready", extra=log_fields(port=settings.relay_port))
    try:
        yield
    finally:
        await state.hub.stop()
        await close_auth(state)


def create_relay(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    cors = CORSConfig(allow_origins=list(settings.cors_origins), allow_credentials=False,
                      allow_methods=["GET", "OPTIONS"], allow_headers=["Authorization", "Last-Event-ID"])
    return Litestar(
        route_handlers=[event_stream, event_socket, relay_health],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        cors_config=cors,
        lifespan=[lifespan],
        state=State({"settings": settings}),
        openapi_config=None,
        logging_config=None,
    )


class _NoQueryStrings(logging.Filter):
    """realtime.md §1: query strings are never logged (uvicorn logs WebSocket paths with theirs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) and a.startswith("/") else a
                                for a in record.args)
        return True


def main() -> None:
    import uvicorn

    settings = get_settings()
    setup_logging("relay", settings.log_level, settings.log_format)
    logging.getLogger("uvicorn.error").addFilter(_NoQueryStrings())
    uvicorn.run(create_relay(settings), host=settings.relay_host, port=settings.relay_port, loop="uvloop",
                http="httptools", ws="websockets", access_log=False, log_config=None, server_header=False,
                ws_ping_interval=settings.relay_ws_ping,
                ws_ping_timeout=max(1.0, settings.relay_ws_idle - settings.relay_ws_ping),
                timeout_graceful_shutdown=5)

