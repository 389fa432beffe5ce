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
import re
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
from contracts.rpc import RpcClient
from contracts.settings import Settings, get_settings
from edge.access import public, staff
from edge.auth import Authenticator, Principal, RevocationMirror
from edge.problems import EXCEPTION_HANDLERS
from edge.realtime import Connection, Hub, overlaps

log = logging.getLogger("relay")
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
CLOSE_CODES = {"revoked": 4409, "overflow": 1013, "expired": 1000, "shutdown": 1001}


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


def _resync(reason: str) -> bytes:
    return b"event: resync\ndata: " + msgspec.json.encode({"reason": reason}) + b"\n\n"


SEND_TIMEOUT = 10.0  # a client that cannot take one more chunk in this time is dropped


async def _problem(send: Send, exc: DomainError, path: str) -> None:
    from edge.problems import PROBLEM, problem_body

    body = msgspec.json.encode(problem_body(exc.to_body(), path))
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if exc.status == 429:
        headers.append((b"retry-after", str((exc.extra or {}).get("retryAfter", 5)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@asgi("/events/stream", opt=staff(), is_mount=False)
async def event_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Server-Sent Events: own notifications and the domain events the role may see."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    state = request.app.state
    settings: Settings = state.settings
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
        await asyncio.wait_for(send({"type": "http.response.body", "body": chunk, "more_body": True}),
                               SEND_TIMEOUT)

    watcher = asyncio.create_task(watch_disconnect())
    deadline = time.monotonic() + settings.relay_max_connection_age
    try:
        gap = resume is not None and not _STREAM_ID.match(resume)
        in_buffer = await state.hub.attach(conn, None if gap else resume)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]})
        await emit(b"retry: 3000\n\n")
        if gap or not in_buffer:
            await emit(_resync("gap"))
        while True:
            timeout = min(settings.relay_heartbeat, max(0.0, deadline - time.monotonic()))
            try:
                item = await asyncio.wait_for(conn.queue.get(), timeout)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    break
                await state.slots.refresh(principal.user_id, conn_id)
                await emit(b": ping\n\n")
                continue
            if isinstance(item, str):
                if item == "overflow":
                    await emit(_resync("overflow"))
                break
            entry_id, name, data = item
            await emit(b"id: " + entry_id.encode() + b"\nevent: " + name.encode() + b"\ndata: " + data + b"\n\n")
        if conn.closed_reason != "disconnected":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                       SEND_TIMEOUT)
    except (TimeoutError, OSError):
        log.info("slow or gone SSE client dropped", extra=log_fields(userId=str(principal.user_id)))
    finally:
        watcher.cancel()
        state.hub.detach(conn)
        await state.slots.release(principal.user_id, conn_id)


@websocket("/events/ws", opt=staff())
async def event_socket(socket: WebSocket) -> None:
    state = socket.app.state
    settings: Settings = state.settings
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

    def new_connection(f: _Filter) -> Connection:
        return Connection(principal.user_id, principal.role, principal.session_id, f.topics, f.room_id,
                          f.notifications, settings.relay_queue_max)

    async def swap(f: _Filter, resume: str | None) -> bool:
        old = holder.get("conn")
        conn = new_connection(f)
        holder["conn"] = conn
        if old is not None:
            state.hub.detach(old)
            old.close("replaced")
        return await state.hub.attach(conn, resume)

    async def send(frame: dict[str, Any]) -> None:
        await socket.send_text(msgspec.json.encode(frame).decode())

    async def sender() -> None:
        deadline = time.monotonic() + settings.relay_max_connection_age
        while True:
            conn = holder["conn"]
            timeout = min(settings.relay_heartbeat, max(0.0, deadline - time.monotonic()))
            try:
                item = await asyncio.wait_for(conn.queue.get(), timeout)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    await socket.close(code=CLOSE_CODES["expired"], reason="maximum connection age")
                    return
                await state.slots.refresh(principal.user_id, conn_id)
                continue
            if isinstance(item, str):
                if item == "replaced":
                    continue
                if item == "overflow":
                    with contextlib.suppress(Exception):
                        await send({"type": "event", "event": "resync", "data": {"reason": "overflow"}})
                await socket.close(code=CLOSE_CODES.get(item, 1000), reason=item)
                return
            entry_id, name, data = item
            await socket.send_text(f'{{"type":"event","id":"{entry_id}","event":"{name}","data":{data.decode()}}}')

    async def receiver() -> None:
        while True:
            raw = await socket.receive_text()
            try:
                frame = msgspec.json.decode(raw)
                kind = frame.get("type") if isinstance(frame, dict) else None
            except msgspec.DecodeError:
                kind, frame = None, {}
            if kind == "ping":
                await send({"type": "pong"})
            elif kind == "subscribe":
                topics, bad = _allowed(principal, _split_topics(frame.get("topics")))
                for topic in bad:
                    await send({"type": "error", "code": "topic_not_allowed", "message": topic})
                current = holder["conn"]
                room = frame.get("roomId") if "roomId" in frame else current.room_id
                await swap(_Filter(topics or (("-.-.-",) if frame.get("topics") else ()), room,
                                   current.notifications), None)
            elif kind == "resume":
                last = str(frame.get("lastEventId") or "")
                current = holder["conn"]
                f = _Filter(current.topics, current.room_id, current.notifications)
                if not _STREAM_ID.match(last):
                    await send({"type": "event", "event": "resync", "data": {"reason": "gap"}})
                    await swap(f, None)
                elif not await swap(f, last):
                    await send({"type": "event", "event": "resync", "data": {"reason": "gap"}})
            else:
                await send({"type": "error", "code": "bad_frame", "message": "unknown frame type"})

    try:
        await swap(flt, None)
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
            state.hub.detach(holder["conn"])
        await state.slots.release(principal.user_id, conn_id)


@get("/health", operation_id="RelayHealth", opt=public(), summary="The relay process is up")
async def relay_health(request: Request) -> dict[str, Any]:
    hub: Hub = request.app.state.hub
    return {"status": "ok", "connections": len(hub.connections), "ingested": hub.ingested}


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state = app.state
    state.redis = Redis.from_url(settings.redis_url)
    state.mirror = RevocationMirror(state.redis)
    state.authenticator = Authenticator(settings, state.mirror)
    state.hub = Hub(settings, state.redis)
    state.mirror.listeners.append(state.hub.on_revocation)
    state.slots = Slots(state.redis, settings.relay_max_connections_per_user, settings.relay_heartbeat)
    state.bus = RpcClient(settings.amqp_url, name="relay", timeout=settings.command_timeout)
    state.bus.on_connect(state.mirror.bind)
    state.bus.on_connect(state.hub.bind)
    await state.mirror.start()
    await state.hub.start()
    await state.bus.start()
    log.info("relay ready", extra=log_fields(port=settings.relay_port))
    try:
        yield
    finally:
        await state.hub.stop()
        await state.bus.close()
        await state.mirror.stop()
        await state.redis.aclose()


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


def main() -> None:
    import uvicorn

    settings = get_settings()
    setup_logging("relay", settings.log_level, settings.log_format)
    uvicorn.run(create_relay(settings), host=settings.relay_host, port=settings.relay_port, loop="uvloop",
                http="httptools", ws="websockets", access_log=False, log_config=None, server_header=False,
                ws_ping_interval=settings.relay_ws_ping,
                ws_ping_timeout=max(1.0, settings.relay_ws_idle - settings.relay_ws_ping),
                timeout_graceful_shutdown=5)

