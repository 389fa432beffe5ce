"""The relay's engine (realtime.md): ingest events into one shared Redis stream, deliver from it.

Every relay process binds its own exclusive queue to the `events` exchange and appends what it
receives to the stream `relay:events`, deduplicated by message id in one Lua step, so an event
gets exactly one stream id whichever process saw it first. Every process then reads the stream
and hands each entry to its local connections whose user may see it. The stream id is the SSE
`id`, so a client resumes on any process. A connection's queue is bounded: a slow client is told
to resync and dropped, never buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiormq
import msgspec
from redis.asyncio import Redis

from contracts.common import Role
from contracts.envelope import decode_envelope
from contracts.observability import log_fields
from contracts.settings import Settings
from contracts.topology import EVENTS

log = logging.getLogger("relay")
STREAM = "relay:events"

_INGEST = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[2], 'data', ARGV[3],
                    'rcpt', ARGV[4], 'rooms', ARGV[6])
end
return false
"""

# realtime.md §3 -----------------------------------------------------------------------------
ROLE_TOPICS: dict[Role, tuple[str, ...]] = {
    Role.SYSTEM_ADMIN: ("*.*.*",),
    Role.RECEPTION_STAFF: ("patients.patient.*", "patients.encounter.*", "imaging.order.*",
                           "users.room_schedule.*", "users.assignment.*"),
    Role.PHYSICIAN: ("patients.encounter.*", "patients.vital_signs.*", "patients.report.*",
                     "imaging.order_form.*", "imaging.order.*", "imaging.study.*"),
    Role.RADIOLOGIST: ("patients.report.*", "imaging.order.*", "imaging.study.*", "imaging.annotation.*",
                       "imaging.segmentation_layer.*"),
    Role.IMAGING_TECHNICIAN: ("imaging.order.*", "imaging.study.*", "imaging.instances.stored",
                              "imaging.instance.rejected", "users.assignment.*"),
}
NEVER_RELAYED = ("*.audit.recorded", "users.session.*", "users.login.*", "users.otp.*", "users.signing_key.*",
                 "users.signature.*", "users.user.password_changed", "system.export.generated")
ADMIN_ONLY = ("system.setting.changed",)
OWN_ONLY = ("system.ai_analysis.*",)  # to the requester, whatever the role
NOTIFICATION_EVENTS = {
    "system.notification.created": "new_notification",
    "system.notification.read": "notification_read",
    "system.notification.deleted": "notification_deleted",
}


def matches(pattern: str, name: str) -> bool:
    """`*` stands for exactly one dot-separated segment."""
    p, n = pattern.split("."), name.split(".")
    return len(p) == len(n) and all(a in ("*", b) for a, b in zip(p, n, strict=True))


def overlaps(a: str, b: str) -> bool:
    """Whether two patterns can match a common name."""
    pa, pb = a.split("."), b.split(".")
    return len(pa) == len(pb) and all(x == y or "*" in (x, y) for x, y in zip(pa, pb, strict=True))


def any_match(patterns: Iterable[str], name: str) -> bool:
    return any(matches(p, name) for p in patterns)


def stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class Entry:
    id: str
    type: str
    data: bytes
    recipient: str  # notification recipient or ai-analysis requester; "" for none
    rooms: tuple[str, ...]


class _Fields(msgspec.Struct):
    recipient_id: str | None = msgspec.field(name="recipientId", default=None)
    requested_by: str | None = msgspec.field(name="requestedBy", default=None)
    room_id: str | None = msgspec.field(name="roomId", default=None)
    from_room_id: str | None = msgspec.field(name="fromRoomId", default=None)
    to_room_id: str | None = msgspec.field(name="toRoomId", default=None)


class _RelayedActor(msgspec.Struct, omit_defaults=True):
    userId: UUID | None = None
    role: str | None = None


class _Relayed(msgspec.Struct):
    messageId: UUID
    type: str
    occurredAt: Any
    actor: _RelayedActor
    payload: msgspec.Raw


_fields_decoder = msgspec.json.Decoder(_Fields)
_enc = msgspec.json.Encoder()


@dataclass(eq=False)
class Connection:
    """One SSE or WebSocket client, with its filter and bounded queue."""

    user_id: UUID
    role: Role
    session_id: str
    topics: tuple[str, ...]
    room_id: str | None
    notifications: bool
    max_queue: int
    queue: asyncio.Queue[tuple[str, str, bytes] | str] = field(init=False)
    closed_reason: str | None = None
    holding: list[Entry] | None = None  # live entries held back while a resume replays
    opened_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue()

    def allowed_topics(self) -> tuple[str, ...]:
        return ROLE_TOPICS[self.role]

    def wants(self, entry: Entry) -> tuple[str, bytes] | None:
        """(event name, data) when this connection's user may and wants to see `entry`."""
        kind = entry.type
        uid = str(self.user_id)
        if kind in NOTIFICATION_EVENTS:
            if self.notifications and entry.recipient == uid:
                return NOTIFICATION_EVENTS[kind], entry.data
            return None
        if any_match(NEVER_RELAYED, kind):
            return None
        if any_match(ADMIN_ONLY, kind) and self.role != Role.SYSTEM_ADMIN:
            return None
        if any_match(OWN_ONLY, kind):
            if entry.recipient != uid and self.role != Role.SYSTEM_ADMIN:
                return None
        elif not any_match(self.allowed_topics(), kind):
            return None
        if self.topics and not any_match(self.topics, kind):
            return None
        if self.room_id is not None and self.room_id not in entry.rooms:
            return None
        return kind, entry.data

    def offer(self, entry: Entry) -> None:
        if self.closed_reason is not None:
            return
        if self.holding is not None:
            if len(self.holding) >= self.max_queue:
                self.overflow()
            else:
                self.holding.append(entry)
            return
        self.push(entry)

    def push(self, entry: Entry) -> bool:
        """Queue `entry` if wanted; False when the queue overflowed (the connection is closing)."""
        wanted = self.wants(entry)
        if wanted is None:
            return True
        if self.queue.qsize() >= self.max_queue:
            self.overflow()
            return False
        self.queue.put_nowait((entry.id, wanted[0], wanted[1]))
        return True

    def overflow(self) -> None:
        self.close("overflow")

    def close(self, reason: str) -> None:
        """Ask the connection's writer to finish: `overflow`, `revoked`, `expired`, `shutdown`."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.queue.put_nowait(reason)


class Hub:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.connections: set[Connection] = set()
        self._ingest = redis.register_script(_INGEST)
        self._reader: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self.last_id = "0-0"
        self.ingested = 0
        self.delivered = 0

    # ------------------------------------------------------------------ ingest

    async def bind(self, channel: aiormq.abc.AbstractChannel) -> None:
        """On every broker (re)connect: an exclusive queue for all events."""
        await channel.exchange_declare(EVENTS, exchange_type="topic", durable=True)
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True,
                                               arguments={"x-max-length": 100_000})
        await channel.queue_bind(declared.queue, EVENTS, routing_key="#")
        await channel.basic_qos(prefetch_count=256)
        await channel.basic_consume(declared.queue, self._on_event, no_ack=False)

    async def _on_event(self, message: aiormq.abc.DeliveredMessage) -> None:
        try:
            await self.ingest(message.body)
        except Exception:
            log.exception("could not ingest an event")
        with contextlib.suppress(Exception):
            await message.channel.basic_ack(message.delivery_tag)

    async def ingest(self, body: bytes) -> str | None:
        envelope = decode_envelope(body)
        kind = envelope.type
        if any_match(NEVER_RELAYED, kind) and kind not in NOTIFICATION_EVENTS:
            return None
        fields = _fields_decoder.decode(envelope.payload)
        if kind in NOTIFICATION_EVENTS:
            data = bytes(envelope.payload)
            recipient = fields.recipient_id or ""
        else:
            data = _enc.encode(_Relayed(
                messageId=envelope.message_id, type=kind, occurredAt=envelope.occurred_at,
                actor=_RelayedActor(userId=envelope.actor.user_id, role=envelope.actor.role),
                payload=envelope.payload,
            ))
            recipient = fields.requested_by or ""
        rooms = ",".join(r for r in (fields.room_id, fields.from_room_id, fields.to_room_id) if r)
        entry_id = await self._ingest(
            keys=[STREAM, f"relay:seen:{envelope.message_id}"],
            args=[self.settings.relay_buffer_maxlen, kind, data, recipient,
                  int(self.settings.relay_buffer_max_age), rooms],
        )
        if entry_id:
            self.ingested += 1
            return entry_id.decode()
        return None

    # ------------------------------------------------------------------ delivery

    async def start(self) -> None:
        last = await self.redis.xrevrange(STREAM, count=1)
        self.last_id = last[0][0].decode() if last else "0-0"
        self._reader = asyncio.create_task(self._read_loop(), name="relay-reader")
        self._trimmer = asyncio.create_task(self._trim_loop(), name="relay-trimmer")

    async def stop(self) -> None:
        for conn in list(self.connections):
            conn.close("shutdown")
        for task in (self._reader, self._trimmer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _read_loop(self) -> None:
        while True:
            try:
                result = await self.redis.xread({STREAM: self.last_id}, block=5000, count=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stream read failed; retrying", extra=log_fields(error=repr(exc)))
                await asyncio.sleep(0.5)
                continue
            for _, entries in result or []:
                for raw_id, values in entries:
                    entry = _entry(raw_id, values)
                    self.last_id = entry.id
                    for conn in list(self.connections):
                        conn.offer(entry)

    async def _trim_loop(self) -> None:
        """Keep no entry older than the buffer's age limit (the length cap is kept by XADD)."""
        while True:
            await asyncio.sleep(60)
            with contextlib.suppress(Exception):
                oldest_ms = int((time.time() - self.settings.relay_buffer_max_age) * 1000)
                await self.redis.xtrim(STREAM, minid=f"{oldest_ms}-0", approximate=True)

    async def attach(self, conn: Connection, resume_from: str | None) -> bool:
        """Register `conn`; with a resume id, replay what it missed first (no gap, no duplicate).
        Returns False when the id is older than the buffer (the caller sends `resync` first)."""
        in_buffer = True
        if resume_from is None:
            self.connections.add(conn)
            return True
        conn.holding = []
        self.connections.add(conn)
        try:
            first = await self.redis.xrange(STREAM, count=1)
            floor = resume_from
            if first and stream_id_key(first[0][0].decode()) > stream_id_key(resume_from):
                in_buffer = False
                floor = "-"
            last_seen = resume_from
            start = f"({resume_from}" if floor != "-" else "-"
            while conn.closed_reason is None:
                chunk = await self.redis.xrange(STREAM, min=start, max="+", count=500)
                if not chunk:
                    break
                for raw_id, values in chunk:
                    entry = _entry(raw_id, values)
                    last_seen = entry.id
                    if not conn.push(entry):
                        break
                start = f"({last_seen}"
            held, conn.holding = conn.holding or [], None
            floor_key = stream_id_key(last_seen) if last_seen != "-" else (0, 0)
            for entry in held:
                if stream_id_key(entry.id) > floor_key:
                    conn.offer(entry)
        except Exception:
            conn.holding = None
            raise
        return in_buffer

    def detach(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def on_revocation(self, kind: str, value: Any) -> None:
        """From the revocation mirror: close the streams of revoked sessions or a disabled user."""
        for conn in list(self.connections):
            if (kind == "sessions" and conn.session_id in value) or (kind == "user" and conn.user_id == value):
                conn.close("revoked")


def _entry(raw_id: bytes, values: dict[bytes, bytes]) -> Entry:
    rooms = values.get(b"rooms", b"").decode()
    return Entry(
        id=raw_id.decode(),
        type=values[b"type"].decode(),
        data=values[b"data"],
        recipient=values.get(b"rcpt", b"").decode(),
        rooms=tuple(rooms.split(",")) if rooms else (),
    )
