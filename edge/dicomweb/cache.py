"""The edge's DICOMweb read caches and the audit of what they answer.

A viewer asks the same things many times: where instance I's bytes are (every frame, rendered
image, thumbnail), the study list, a series' metadata. The broker round trip to the imaging worker
costs more than the answer, so the edge keeps:

- **locations** of single instances (immutable while the instance exists: a deleted or replaced
  instance's blob is gone, the read fails, the entry is dropped and asked again), for `LOCATION_TTL`;
- **index answers** (QIDO-RS bodies, metadata references) keyed by the index generation, a Redis
  counter the imaging worker increments after every commit that changes the index: an answer
  cached under an older generation is never served.

Nothing is cached that depends on who asks: DICOMweb reads have one role rule (Imaging+). Every
answer served from a cache is still audited, by `ReadAuditor`: the first read of a user, action and
patient set within 5 minutes is recorded at once, later ones are counted and sent as one repeat
count (`system.record_audit_event`, coalesced like the workers' read audits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar
from uuid import UUID

from contracts.envelope import Actor
from contracts.observability import log_fields
from contracts.system import AuditOutcome, RecordAuditEvent

log = logging.getLogger("edge.dicomweb.cache")
V = TypeVar("V")
GENERATION_KEY = "imaging:index:generation"
LOCATION_TTL = 600.0
AUDIT_WINDOW = 300.0
AUDIT_FLUSH = 30.0


class Lru(Generic[V]):
    """A bounded map with a time to live; the least recently used entry goes first."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._items.pop(key, None)


class ReadAuditor:
    """Audits reads the edge answered itself, coalesced per user, action and patients."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self._first: dict[tuple[Any, ...], float] = {}
        self._pending: dict[tuple[Any, ...], tuple[Actor, int, str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="read-audit-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def read(self, actor: Actor, action: str, target_type: str, target_id: str | None,
             patient_ids: tuple[UUID, ...]) -> None:
        key = (actor.user_id, action, target_type, target_id, patient_ids)
        now = time.monotonic()
        if now - self._first.get(key, -AUDIT_WINDOW) >= AUDIT_WINDOW:
            if len(self._first) > 50_000:
                self._first = {k: t for k, t in self._first.items() if now - t < AUDIT_WINDOW}
            self._first[key] = now
            self._send(actor, key, 1, target_id)
            return
        _, count, _ = self._pending.get(key, (actor, 0, target_id))
        self._pending[key] = (actor, count + 1, target_id)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for key, (actor, count, target_id) in pending.items():
            self._send(actor, key, count, target_id)
        if self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_FLUSH)
            await self.flush()

    def _send(self, actor: Actor, key: tuple[Any, ...], repeats: int, target_id: str | None) -> None:
        payload = RecordAuditEvent(action=key[1], outcome=AuditOutcome.SUCCESS, target_type=key[2],
                                   target_id=target_id, patient_ids=list(key[4]), coalesce=True, repeats=repeats,
                                   details={"cached": True})
        task = asyncio.create_task(self._deliver(payload, actor))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _deliver(self, payload: RecordAuditEvent, actor: Actor) -> None:
        try:
            await self.bus.send("system.record_audit_event", payload, actor)
        except Exception as exc:
            log.warning("could not audit a cached read", extra=log_fields(error=repr(exc)))


class DicomWebCache:
    def __init__(self, redis: Any, bus: Any) -> None:
        self.redis = redis
        self.locations: Lru[Any] = Lru(100_000, LOCATION_TTL)
        self.answers: Lru[Any] = Lru(2_000, 300.0)
        self.auditor = ReadAuditor(bus)

    async def generation(self) -> bytes:
        return await self.redis.get(GENERATION_KEY) or b"0"
