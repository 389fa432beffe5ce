"""The worker runtime: consume, run the handler in one transaction, reply, ack. Written once.

Commands come from the domain's quorum queue, queries from its classic queue, events (from any
domain) from its events queue. For each command or query: decode the envelope, run it in a
transaction (`transactions.py`), reply over direct reply-to, ack. An unexpected exception is
retried after the configured backoffs, then answered with 500 and dead-lettered. Events are
applied in batches of whatever has arrived. The broker link is supervised: after a drop the
worker reconnects and consumes again; work in flight finishes, and its unacked messages come back
as redeliveries that the inbox answers. SIGTERM: stop consuming, finish what is in flight, publish
what committed, exit.

AMQP is spoken with aiormq directly: it is the part of a message's cost the runtime controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import msgspec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from prometheus_client import Counter, Histogram
from sqlalchemy import MetaData, text

from contracts.envelope import Actor, Envelope, Reply, decode_envelope, encode, now_utc
from contracts.errors import DomainError, InternalError, Unavailable
from contracts.ids import uuid7
from contracts.observability import correlation_id, log_fields
from contracts.rpc import RpcClient
from contracts.settings import Settings
from contracts.topology import (
    COMMANDS,
    EVENTS,
    commands_queue,
    declare_exchanges,
    declare_query_queue,
    declare_quorum_queue,
    declare_transient_queue,
    events_queue,
    queries_queue,
    transient_queue,
)
from workers.runtime.db import make_engine
from workers.runtime.outbox import OutboxPublisher
from workers.runtime.registry import HandlerRegistry, Job, topic_matches
from workers.runtime.retry import with_retries
from workers.runtime.tables import inbox_table, outbox_table
from workers.runtime.transactions import NO_REPLY, EventItem, Transactions
from workers.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("runtime")

HANDLED = Counter("worker_messages_total", "Messages handled", ["domain", "type", "outcome"])
_handled_children: dict[tuple[str, str, str], Any] = {}


def _count(domain: str, kind: str, outcome: str) -> None:
    key = (domain, kind, outcome)
    child = _handled_children.get(key)
    if child is None:
        child = _handled_children[key] = HANDLED.labels(domain, kind, outcome)
    child.inc()
DURATION = Histogram("worker_handler_seconds", "Handler time including the transaction", ["domain", "kind"],
                     buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

ServicesFactory = Callable[["Worker"], Awaitable[Any]]
EVENT_BATCH = 200


class Worker:
    """One process of one worker kind. Competing replicas share its queues."""

    def __init__(self, registry: HandlerRegistry, settings: Settings, *,
                 services: ServicesFactory | None = None, version: str = "0.1.0") -> None:
        self.registry = registry
        self.domain = registry.domain
        self.settings = settings
        self.version = version
        self._services_factory = services
        self.services: Any = None
        metadata = MetaData()
        self.inbox = inbox_table(metadata, self.domain)
        self.outbox = outbox_table(metadata, self.domain)
        self.tx: Transactions | None = None
        self.bus: RpcClient | None = None
        self.publisher: OutboxPublisher | None = None
        self.connection: AbstractConnection | None = None
        self._consumers: list[tuple[AbstractChannel, str]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._linked = asyncio.Event()
        self._jobs: list[asyncio.Task[None]] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._events: list[DeliveredMessage] = []
        self._events_waiting = asyncio.Event()
        self._event_loop: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._durations = {kind: DURATION.labels(self.domain, kind) for kind in ("command", "query")}
        self._register_ping()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, link_timeout: float = 30.0) -> None:
        s = self.settings
        engine = make_engine(s)
        self.publisher = OutboxPublisher(engine, self.outbox, self.domain, s)
        await self.publisher.start()
        # The bus client for questions to other domains' workers (replies over direct reply-to).
        self.bus = RpcClient(s.amqp_url, name=f"worker-{self.domain}-bus", timeout=s.command_timeout)
        await self.bus.start()
        if self._services_factory is not None:
            self.services = await self._services_factory(self)
        self.tx = Transactions(self.domain, engine, self.inbox, self.outbox, self.publisher, s, self.services,
                               self.bus)
        self._event_loop = asyncio.create_task(self._apply_events(), name="events")
        self._supervisor = asyncio.create_task(self._supervise(), name="broker-link")
        try:
            await asyncio.wait_for(self._linked.wait(), link_timeout)
        except TimeoutError as exc:
            await self.stop()
            raise RuntimeError("could not reach the message broker") from exc
        self._jobs = [asyncio.create_task(self._job_loop(job), name=f"job-{job.name}") for job in self.registry.jobs]
        log.info("worker started", extra=log_fields(domain=self.domain, prefetch=s.worker_prefetch))

    async def _supervise(self) -> None:
        delay = 0.2
        while not self._stopping:
            try:
                await self._connect()
                delay = 0.2
                self._linked.set()
                assert self.connection is not None
                with contextlib.suppress(Exception):
                    await self.connection.closing
                if not self._stopping:
                    log.warning("broker link lost; reconnecting", extra=log_fields(domain=self.domain))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker link failed; retrying", extra=log_fields(error=repr(exc), delay=delay))
            self._linked.clear()
            if self.publisher is not None:
                self.publisher.attach(None)
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        s = self.settings
        connection = await aiormq.connect(s.amqp_url, client_properties={"connection_name": f"worker-{self.domain}"})
        try:
            # Declare everything and attach the publisher first; only then start taking messages.
            assert self.publisher is not None
            self.publisher.attach(await connection.channel(publisher_confirms=True))
            channel = await connection.channel(publisher_confirms=False)
            await channel.basic_qos(prefetch_count=s.worker_prefetch)
            await declare_exchanges(channel)
            ops = self.registry.operations.values()
            commands = [(COMMANDS, op.name) for op, _ in ops if op.kind == "command" and not op.transient]
            queries = [op.name for op, _ in ops if op.kind == "query"]
            transient = [op.name for op, _ in ops if op.transient]
            sources: list[tuple[AbstractChannel, str, Any]] = []
            if commands:
                name = await declare_quorum_queue(channel, commands_queue(self.domain), s.delivery_limit, commands)
                sources.append((channel, name, self._on_command))
            if queries:
                sources.append((channel, await declare_query_queue(channel, queries_queue(self.domain), queries),
                                self._on_command))
            if transient:
                name = await declare_transient_queue(channel, transient_queue(self.domain), transient)
                sources.append((channel, name, self._on_command))
            if self.registry.subscriptions:
                events = await connection.channel(publisher_confirms=False)
                await events.basic_qos(prefetch_count=EVENT_BATCH)
                bindings = sorted({(EVENTS, sub.pattern) for sub in self.registry.subscriptions})
                name = await declare_quorum_queue(events, events_queue(self.domain), s.delivery_limit, bindings)
                sources.append((events, name, self._on_event))
            if self.registry.watchers:
                declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
                watched = str(declared.queue)
                for pattern in sorted({w.pattern for w in self.registry.watchers}):
                    await channel.queue_bind(watched, EVENTS, routing_key=pattern)
                self._notify_watchers(None)  # whatever changed while we were not listening
                sources.append((channel, watched, self._on_watched))
            consumers: list[tuple[AbstractChannel, str]] = []
            for source_channel, queue, callback in sources:
                if self._stopping:
                    break
                no_ack = callback == self._on_watched
                consumed = await source_channel.basic_consume(queue, callback, no_ack=no_ack)
                consumers.append((source_channel, consumed.consumer_tag))
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self.connection, self._consumers = connection, consumers

    async def stop(self) -> None:
        """Graceful: stop taking messages, finish those in flight, publish what committed."""
        if self._stopping:
            return
        self._stopping = True
        for channel, tag in self._consumers:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)
        self._events_waiting.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace)
        for task in [*self._jobs, self._event_loop]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.publisher is not None:
            await self.publisher.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        if self.bus is not None:
            await self.bus.close()
        if self.services is not None and hasattr(self.services, "close"):
            await self.services.close()
        if self.tx is not None:
            await self.tx.engine.dispose()
        log.info("worker stopped", extra=log_fields(domain=self.domain))

    async def run_forever(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    # ------------------------------------------------------------------ commands and queries

    async def _on_command(self, message: DeliveredMessage) -> None:
        self._enter()
        try:
            await self._deliver(message)
        finally:
            self._leave()

    async def _deliver(self, message: DeliveredMessage) -> None:
        assert self.tx is not None
        try:
            envelope = decode_envelope(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable message dead-lettered", extra=log_fields(error=str(exc)))
            _count(self.domain, "?", "undecodable")
            await _settle(message, ack=False)
            return
        token = correlation_id.set(str(envelope.correlation_id))
        started = time.perf_counter()
        try:
            entry = self.registry.operations.get(envelope.type)
            if entry is None:
                log.error("unknown operation dead-lettered", extra=log_fields(type=envelope.type))
                error = DomainError(f"{envelope.type} is not an operation of {self.domain}", code="unknown_operation")
                await self._reply(message, envelope, encode(Reply(error=error.to_body())))
                await _settle(message, ack=False)
                return
            op, handler = entry
            run = self.tx.run_command if op.kind == "command" else self.tx.run_query
            try:
                reply = await with_retries(self.settings.retry_backoff, run, envelope, op, handler,
                                           what=envelope.type, stopping=lambda: self._stopping)
            except Exception:
                log.exception("handler failed after retries; dead-lettered",
                              extra=log_fields(type=envelope.type, messageId=str(envelope.message_id)))
                _count(self.domain, envelope.type, "error")
                if op.kind == "command":
                    await self.tx.audit_error(envelope, op)
                body = InternalError("internal error", correlationId=str(envelope.correlation_id)).to_body()
                await self._reply(message, envelope, encode(Reply(error=body)))
                await _settle(message, ack=False)
                return
            await self._reply(message, envelope, reply)
            await _settle(message, ack=True)
            _count(self.domain, envelope.type, "ok")
            self._durations[op.kind].observe(time.perf_counter() - started)
        finally:
            correlation_id.reset(token)

    async def _reply(self, message: DeliveredMessage, envelope: Envelope, reply: bytes) -> None:
        reply_to = message.header.properties.reply_to
        if not reply_to or reply is NO_REPLY:
            return
        env = Envelope(
            message_id=uuid7(),
            type=f"{envelope.type}.reply",
            correlation_id=envelope.correlation_id,
            causation_id=envelope.message_id,
            occurred_at=now_utc(),
            actor=_WORKER_ACTORS.setdefault(self.domain, Actor(system=f"{self.domain}-worker")),
            payload=msgspec.Raw(reply),
        )
        try:
            await message.channel.basic_publish(
                encode(env), exchange="", routing_key=reply_to,
                properties=aiormq.spec.Basic.Properties(
                    correlation_id=message.header.properties.correlation_id,
                    content_type="application/json",
                    message_type=env.type,
                ),
                wait=False,
            )
        except Exception:
            # The requester may be gone; it sees a timeout. The result is committed either way.
            log.warning("reply could not be sent", extra=log_fields(type=envelope.type))

    # ------------------------------------------------------------------ events

    async def _on_watched(self, message: DeliveredMessage) -> None:
        try:
            envelope = decode_envelope(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            envelope = None
        self._notify_watchers(envelope)

    def _notify_watchers(self, envelope: Envelope | None) -> None:
        for watcher in self.registry.watchers:
            if envelope is None or topic_matches(watcher.pattern, envelope.type):
                try:
                    watcher.notify(envelope)
                except Exception:
                    log.exception("a cache watcher failed")

    async def _on_event(self, message: DeliveredMessage) -> None:
        self._events.append(message)
        self._events_waiting.set()

    async def _apply_events(self) -> None:
        """Apply consumed events in batches, one at a time, in delivery order."""
        while True:
            await self._events_waiting.wait()
            self._events_waiting.clear()
            while self._events:
                batch, self._events = self._events[:EVENT_BATCH], self._events[EVENT_BATCH:]
                self._enter()
                try:
                    await self._apply_batch(batch)
                except Exception:
                    log.exception("event batch failed")
                finally:
                    self._leave()

    async def _apply_batch(self, batch: list[DeliveredMessage]) -> None:
        assert self.tx is not None
        items: list[tuple[DeliveredMessage, EventItem]] = []
        for message in batch:
            try:
                envelope = decode_envelope(message.body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("undecodable event dead-lettered", extra=log_fields(error=str(exc)))
                await _settle(message, ack=False)
                continue
            subs = self.registry.subscriptions_for(envelope.type)
            if subs:
                items.append((message, EventItem(envelope, subs)))
            else:
                await _settle(message, ack=True)
        if not items:
            return
        try:
            await self.tx.run_events([item for _, item in items])
        except Exception as exc:
            log.warning("event batch failed; applying its events one by one",
                        extra=log_fields(size=len(items), error=repr(exc)))
            for message, item in items:
                await self._apply_one(message, item)
            return
        for message, item in items:
            _count(self.domain, item.envelope.type, "ok")
            await _settle(message, ack=True)

    async def _apply_one(self, message: DeliveredMessage, item: EventItem) -> None:
        assert self.tx is not None
        token = correlation_id.set(str(item.envelope.correlation_id))
        try:
            await with_retries(self.settings.retry_backoff, self.tx.run_event, item, what=item.envelope.type,
                               stopping=lambda: self._stopping)
        except Exception:
            log.exception("event handler failed after retries; dead-lettered",
                          extra=log_fields(type=item.envelope.type))
            _count(self.domain, item.envelope.type, "error")
            await _settle(message, ack=False)
            return
        finally:
            correlation_id.reset(token)
        _count(self.domain, item.envelope.type, "ok")
        await _settle(message, ack=True)

    # ------------------------------------------------------------------ timed jobs

    async def _job_loop(self, job: Job) -> None:
        while not self._stopping:
            try:
                await self.run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timed job failed", extra=log_fields(job=job.name))
            await asyncio.sleep(job.every)

    async def run_job(self, job: Job) -> bool:
        assert self.tx is not None
        return await self.tx.run_job(job)

    # ------------------------------------------------------------------ ping

    def _register_ping(self) -> None:
        from contracts.common import PingResult
        from contracts.registry import OPERATIONS

        name = f"{self.domain}.ping"
        if name not in OPERATIONS or name in self.registry.operations:
            return

        async def ping(_: Any, uow: UnitOfWork) -> PingResult:
            try:
                await uow.conn.execute(text("SELECT 1"))
            except Exception as exc:
                raise Unavailable("the database is not reachable") from exc
            return PingResult(worker=self.domain, version=self.version,
                              uptime_seconds=round(time.monotonic() - self._started_at, 3))

        self.registry.operations[name] = (OPERATIONS[name], ping)


_WORKER_ACTORS: dict[str, Actor] = {}


async def _settle(message: DeliveredMessage, *, ack: bool) -> None:
    """Ack, or reject to the dead-letter queue. A closed channel means the broker redelivers."""
    tag = message.delivery_tag
    if tag is None:
        return
    try:
        if ack:
            await message.channel.basic_ack(tag, wait=False)  # queued for the writer, not awaited
        else:
            await message.channel.basic_reject(tag, requeue=False, wait=False)
    except Exception as exc:
        log.warning("could not settle a message; it will be redelivered", extra=log_fields(error=repr(exc)))
