"""The outbox publisher: committed events leave with publisher confirms, then their rows go.

Fast path: the process that committed the rows publishes them right after the commit and
deletes them in batches. Fallback: a sweeper takes rows whose lease (`available_at`) has passed,
with `FOR UPDATE SKIP LOCKED` so replicas never publish the same row at the same time. The
sweeper wakes on `LISTEN/NOTIFY` (rows written by the CLI or another process) and on a timer.
Delivery is at least once: a crash between publish and delete re-publishes the row later, and
consumers deduplicate by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from uuid import UUID

import aiormq
import asyncpg
from aiormq.abc import AbstractChannel
from sqlalchemy import Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.observability import log_fields
from contracts.settings import Settings
from contracts.topology import EVENTS
from workers.runtime.unit_of_work import PendingEvent

log = logging.getLogger("runtime.outbox")
SWEEP_BATCH = 500
DELETE_LINGER = 0.05


def notify_channel(schema: str) -> str:
    return f"outbox_{schema}"


class OutboxPublisher:
    def __init__(self, engine: AsyncEngine, outbox: Table, schema: str, settings: Settings) -> None:
        self.engine = engine
        self.outbox = outbox
        self.schema = schema
        self.settings = settings
        self._channel: AbstractChannel | None = None
        self._window = asyncio.Semaphore(settings.confirm_window)
        self._published: list[UUID] = []
        self._wake_deleter = asyncio.Event()
        self._wake_sweeper = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._stopping = False
        self.published_total = 0

    def attach(self, channel: AbstractChannel | None) -> None:
        """The confirm channel to publish on (a new one after every broker reconnect)."""
        self._channel = channel
        if channel is not None:
            self._wake_sweeper.set()  # rows that failed while the link was down

    async def start(self) -> None:
        self._background = [
            asyncio.create_task(self._deleter(), name="outbox-deleter"),
            asyncio.create_task(self._sweeper(), name="outbox-sweeper"),
        ]
        await self._listen()

    def submit(self, events: list[PendingEvent]) -> None:
        """Publish events of a transaction that has just committed."""
        if not events:
            return
        task = asyncio.create_task(self._publish_committed(events))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _publish_one(self, event: PendingEvent) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            raise ConnectionError("no broker channel")
        async with self._window:
            await channel.basic_publish(
                event.body,
                exchange=EVENTS,
                routing_key=event.routing_key,
                properties=aiormq.spec.Basic.Properties(
                    message_id=str(event.message_id),
                    message_type=event.routing_key,
                    content_type="application/json",
                    delivery_mode=2,
                ),
            )

    async def _publish_all(self, events: Iterable[PendingEvent]) -> list[UUID]:
        events = list(events)
        results = await asyncio.gather(*(self._publish_one(e) for e in events), return_exceptions=True)
        done = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("event publish failed; the sweeper will retry",
                            extra=log_fields(messageId=str(event.message_id), error=repr(result)))
            else:
                done.append(event.message_id)
        self.published_total += len(done)
        return done

    async def _publish_committed(self, events: list[PendingEvent]) -> None:
        done = await self._publish_all(events)
        if done:
            self._published.extend(done)
            self._wake_deleter.set()

    async def _deleter(self) -> None:
        """Delete published rows in batches: at most one DELETE per `DELETE_LINGER`, so under load
        one statement removes the rows of many commands instead of one transaction each."""
        while True:
            await self._wake_deleter.wait()
            await asyncio.sleep(DELETE_LINGER)
            self._wake_deleter.clear()
            await self._flush_deletes()

    async def _flush_deletes(self) -> None:
        ids, self._published = self._published, []
        if not ids:
            return
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(self.outbox).where(self.outbox.c.message_id.in_(ids)))
        except Exception:
            log.exception("could not delete published outbox rows; they will be re-published")

    async def _sweeper(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sweeper.wait(), self.settings.outbox_sweep_interval)
            self._wake_sweeper.clear()
            try:
                while await self.sweep_once() == SWEEP_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sweep failed")

    async def sweep_once(self) -> int:
        """Publish and delete rows whose lease has expired. Returns how many rows it took."""
        if self._channel is None or self._channel.is_closed:
            return 0
        o = self.outbox
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(o.c.message_id, o.c.routing_key, o.c.body)
                    .where(o.c.available_at <= func.now())
                    .order_by(o.c.message_id)
                    .limit(SWEEP_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            done = await self._publish_all(PendingEvent(r.message_id, r.routing_key, r.body) for r in rows)
            if done:
                await conn.execute(delete(o).where(o.c.message_id.in_(done)))
            log.info("outbox sweep published events", extra=log_fields(count=len(done), schema=self.schema))
        return len(rows)

    async def _listen(self) -> None:
        try:
            self._listener = await asyncpg.connect(self.settings.database_url)
            await self._listener.add_listener(notify_channel(self.schema), self._on_notify)
        except Exception:
            log.exception("LISTEN for outbox notifications failed; polling only")

    def _on_notify(self, *_: object) -> None:
        self._wake_sweeper.set()

    async def drain(self) -> None:
        """Finish publishing what has committed, then delete its rows (graceful shutdown)."""
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=self.settings.shutdown_grace)
        await self._flush_deletes()

    async def close(self) -> None:
        await self.drain()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

