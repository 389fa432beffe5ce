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
import re
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
_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_U64 = 2**64 - 1

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


def relay_bindings() -> list[str]:
    """The relay queue's binding keys: every role's topics and every registered entity with an event
    some client may see — so the audit trail and the other never-relayed kinds (most of the
    traffic) never reach the relay, which would only drop them."""
    from contracts.registry import EVENTS as REGISTERED
    from contracts.registry import load_all

    load_all()
    keys = {p for topics in ROLE_TOPICS.values() for p in topics if p != "*.*.*"}
    keys |= set(NOTIFICATION_EVENTS) | set(ADMIN_ONLY) | set(OWN_ONLY)
    for kind, cls in REGISTERED.items():
        if cls.RELAY and not any_match(NEVER_RELAYED, kind):
            domain, entity, _ = kind.split(".")
            keys.add(f"{domain}.{entity}.*")
    return sorted(keys)


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


def valid_stream_id(value: str) -> bool:
    """Whether `value` is a well-formed Redis stream id (`<ms>-<seq>`, each a 64-bit number)."""
    m = _STREAM_ID.match(value)
    return m is not None and int(m[1]) <= _U64 and int(m[2]) <= _U64


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


class _NotificationChange(msgspec.Struct):
    """`notification_read` / `notification_deleted` data (realtime.md §2): no more than this."""

    notificationIds: msgspec.Raw = msgspec.Raw(b"[]")
    unreadCount: msgspec.Raw = msgspec.Raw(b"null")


_fields_decoder = msgspec.json.Decoder(_Fields)
_change_decoder = msgspec.json.Decoder(_NotificationChange)
_enc = msgspec.json.Encoder()


Item = tuple[str, str, bytes] | str  # (stream id or "" for none, event name, data) or a close reason
GAP: tuple[str, str, bytes] = ("", "resync", b'{"reason":"gap"}')


@dataclass(eq=False)
class Connection:
    """One SSE or WebSocket client, with its filter and bounded queue.

    Only entries this connection wants are queued (at most `max_queue`; one more and it is closed
    with `overflow`). While a resume replays from the stream, live entries are held back (as
    many, under the same rule) and released after the replay, so nothing is missed or repeated.
    """

    user_id: UUID
    role: Role
    session_id: str
    topics: tuple[str, ...]
    room_id: str | None
    notifications: bool
    max_queue: int
    queue: asyncio.Queue[Item] = field(init=False)
    closed_reason: str | None = None
    holding: list[tuple[str, str, bytes]] | None = None  # live items held back while a resume replays
    replayed_to: tuple[int, int] | None = None  # live entries up to this id were replayed already
    opened_at: float = field(default_factory=time.monotonic)
    _space: asyncio.Event = field(init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue()
        self._space = asyncio.Event()

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
        """A live entry from the stream (never blocks)."""
        if self.closed_reason is not None:
            return
        if self.replayed_to is not None:
            # the replay may have read further than the live reader had got: skip what it sent
            if stream_id_key(entry.id) <= self.replayed_to:
                return
            self.replayed_to = None
        wanted = self.wants(entry)
        if wanted is None:
            return
        item = (entry.id, wanted[0], wanted[1])
        if self.holding is not None:
            if len(self.holding) >= self.max_queue:
                self.overflow()
            else:
                self.holding.append(item)
            return
        self.put(item)

    def put(self, item: tuple[str, str, bytes]) -> bool:
        """Queue `item`; False when the queue overflowed (the connection is closing)."""
        if self.closed_reason is not None:
            return False
        if self.queue.qsize() >= self.max_queue:
            self.overflow()
            return False
        self.queue.put_nowait(item)
        return True

    async def put_paced(self, item: tuple[str, str, bytes]) -> bool:
        """Queue a replayed `item`, waiting for the writer to make room; False once closed."""
        while self.closed_reason is None and self.queue.qsize() >= self.max_queue:
            self._space.clear()
            await self._space.wait()
        if self.closed_reason is not None:
            return False
        self.queue.put_nowait(item)
        return True

    async def next(self, timeout: float, limit: int = 64) -> list[Item]:
        """What is queued for the writer: at least one item, at most `limit`, a close reason only
        last; TimeoutError after `timeout` seconds without any. Taking all that is there at once
        lets a writer keep up with a burst instead of falling behind one item per loop turn."""
        async with asyncio.timeout(timeout):
            items = [await self.queue.get()]
        while len(items) < limit and not isinstance(items[-1], str) and not self.queue.empty():
            items.append(self.queue.get_nowait())
        self._space.set()
        return items

    def overflow(self) -> None:
        self.close("overflow")

    def close(self, reason: str) -> None:
        """Ask the connection's writer to finish: `overflow`, `revoked`, `expired`, `shutdown`, …"""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.queue.put_nowait(reason)
            self._space.set()


class Hub:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.connections: set[Connection] = set()
        self._ingest = redis.register_script(_INGEST)
        self._ingest_lock = asyncio.Lock()  # one at a time: the stream keeps the broker's order
        self._reader: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self.last_id = "0-0"
        self.ingested = 0
        self.dropped = 0  # connections closed for overflow

    # ------------------------------------------------------------------ ingest

    async def bind(self, channel: aiormq.abc.AbstractChannel) -> None:
        """On every broker (re)connect: an exclusive queue bound to each event type a client may
        ever see (never the audit trail and the other never-relayed kinds: they would cost the
        broker and this process for nothing)."""
        await channel.exchange_declare(EVENTS, exchange_type="topic", durable=True)
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True,
                                               arguments={"x-max-length": 100_000})
        for key in relay_bindings():
            await channel.queue_bind(declared.queue, EVENTS, routing_key=key)
        await channel.basic_qos(prefetch_count=256)
        await channel.basic_consume(declared.queue, self._on_event, no_ack=False)

    async def _on_event(self, message: aiormq.abc.DeliveredMessage) -> None:
        # aiormq runs each delivery in its own task, in delivery order; the FIFO lock keeps that
        # order into the stream (concurrent Redis calls on pooled connections could swap it)
        async with self._ingest_lock:
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
        if kind == "system.notification.created":
            data = bytes(envelope.payload)
            recipient = fields.recipient_id or ""
        elif kind in NOTIFICATION_EVENTS:
            data = _enc.encode(_change_decoder.decode(envelope.payload))
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

    def register(self, conn: Connection, *, resuming: bool = False) -> None:
        """Start offering live entries to `conn` (held back until `catch_up` when resuming)."""
        if resuming:
            conn.holding = []
        self.connections.add(conn)

    async def catch_up(self, conn: Connection, resume_from: str) -> None:
        """For a connection registered with `resuming`: replay the entries after `resume_from`
        through its filter, paced by its writer, then release the live entries held meanwhile, so
        live delivery continues with no gap and no duplicate. An id that is malformed, older than
        the buffer or newer than its last entry gets a `resync` (gap) first, then live entries only."""
        try:
            floor = await self._replay(conn, resume_from)
            conn.replayed_to = floor
            while conn.closed_reason is None:
                held = conn.holding
                if not held:
                    conn.holding = None  # from now on, live entries go straight to the queue
                    return
                item = held.pop(0)
                if floor is not None and stream_id_key(item[0]) <= floor:
                    continue
                if not await conn.put_paced(item):
                    return
        except Exception as exc:
            log.warning("resume failed; closing the connection", extra=log_fields(error=repr(exc)))
            conn.close("error")
        finally:
            if conn.closed_reason is not None:
                conn.holding = None

    async def _replay(self, conn: Connection, resume_from: str) -> tuple[int, int] | None:
        """Queue the wanted entries after `resume_from`; the last id read (None: gap, none replayed)."""
        known = False
        if valid_stream_id(resume_from):
            first = await self.redis.xrange(STREAM, count=1)
            last = await self.redis.xrevrange(STREAM, count=1)
            known = bool(first and last) and (
                stream_id_key(first[0][0].decode()) <= stream_id_key(resume_from) <= stream_id_key(last[0][0].decode()))
        if not known:
            # malformed, older than the buffer or not one of its ids at all: what was missed is unknown
            conn.put(GAP)
            return None
        floor = stream_id_key(resume_from)
        start = f"({resume_from}"
        while conn.closed_reason is None:
            chunk = await self.redis.xrange(STREAM, min=start, max="+", count=200)
            if not chunk:
                break
            for raw_id, values in chunk:
                entry = _entry(raw_id, values)
                floor = stream_id_key(entry.id)
                start = f"({entry.id}"
                wanted = conn.wants(entry)
                if wanted is not None and not await conn.put_paced((entry.id, wanted[0], wanted[1])):
                    return floor
        return floor

    def detach(self, conn: Connection) -> None:
        if conn in self.connections and conn.closed_reason == "overflow":
            self.dropped += 1
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
