"""The worker runtime: consume, run the handler in one transaction, reply, ack. Written once.

For a command: one transaction holds the handler's changes, its audit entry, the inbox row (the
message id with the reply) and the outbox rows (its events). Then the events are published, the
reply goes back over direct reply-to, and the message is acked. A redelivered message finds its
inbox row and replays the stored reply; nothing happens twice. A domain error is an answer: the
change rolls back and the failure is audited and remembered in a transaction of its own. An
unexpected exception is retried after the configured backoffs, then answered with 500 and
dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from prometheus_client import Counter, Histogram
from sqlalchemy import MetaData, Table, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import Actor, Envelope, Reply, decode_envelope, encode, make_envelope, now_utc
from contracts.errors import Conflict, DomainError, InternalError, Unavailable, invalid_field
from contracts.ids import uuid7
from contracts.observability import correlation_id, log_fields
from contracts.registry import Operation
from contracts.settings import Settings
from contracts.system import AuditOutcome
from contracts.topology import (
    COMMANDS,
    EVENTS,
    commands_queue,
    declare_exchanges,
    declare_quorum_queue,
    events_queue,
)
from workers.runtime.db import make_engine
from workers.runtime.outbox import OutboxPublisher
from workers.runtime.registry import EventSubscription, Handler, HandlerRegistry, Job
from workers.runtime.retry import with_retries
from workers.runtime.tables import inbox_table, outbox_table
from workers.runtime.unit_of_work import AuditTarget, PendingEvent, UnitOfWork

log = logging.getLogger("runtime")

HANDLED = Counter("worker_messages_total", "Messages handled", ["domain", "type", "outcome"])
DURATION = Histogram("worker_handler_seconds", "Handler time including the transaction", ["domain", "kind"],
                     buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

ServicesFactory = Callable[["Worker"], Awaitable[Any]]
_NO_REPLY = b""


def _validation_error(exc: msgspec.ValidationError) -> DomainError:
    from contracts.validation import describe_validation_error

    field, code, detail = describe_validation_error(str(exc))
    return invalid_field(field, code, detail)


class Worker:
    """One process of one worker kind. Competing replicas share its queues."""

    def __init__(self, registry: HandlerRegistry, settings: Settings, *,
                 services: ServicesFactory | None = None, version: str = "0.1.0",
                 queue_suffix: str = "") -> None:
        self.registry = registry
        self.domain = registry.domain
        self.settings = settings
        self.version = version
        self.queue_suffix = queue_suffix  # tests run private copies of a queue
        self._services_factory = services
        self.services: Any = None
        metadata = MetaData()
        self.inbox: Table = inbox_table(metadata, self.domain)
        self.outbox: Table = outbox_table(metadata, self.domain)
        self.engine: AsyncEngine | None = None
        self.read_engine: AsyncEngine | None = None
        self.connection: AbstractRobustConnection | None = None
        self.publisher: OutboxPublisher | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._jobs: list[asyncio.Task[None]] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._started_at = time.monotonic()
        self._register_ping()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        self.engine = make_engine(s)
        self.read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.connection = await aio_pika.connect_robust(
            s.amqp_url, client_properties={"connection_name": f"worker-{self.domain}"}
        )
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=s.worker_prefetch)
        await declare_exchanges(channel)
        self.publisher = OutboxPublisher(self.engine, self.outbox, self.domain, self.connection, s)
        await self.publisher.start()
        if self._services_factory is not None:
            self.services = await self._services_factory(self)

        name = commands_queue(self.domain) + self.queue_suffix
        queue = await declare_quorum_queue(channel, name, s.delivery_limit, [(COMMANDS, f"{self.domain}.*")])
        self._consumers.append((queue, await queue.consume(self._on_command)))
        if self.registry.subscriptions:
            name = events_queue(self.domain) + self.queue_suffix
            bindings = sorted({(EVENTS, sub.pattern) for sub in self.registry.subscriptions})
            queue = await declare_quorum_queue(channel, name, s.delivery_limit, bindings)
            self._consumers.append((queue, await queue.consume(self._on_event)))
        self._jobs = [asyncio.create_task(self._job_loop(job), name=f"job-{job.name}")
                      for job in self.registry.jobs]
        log.info("worker started", extra=log_fields(domain=self.domain, prefetch=s.worker_prefetch))

    async def stop(self) -> None:
        """Graceful: stop taking messages, finish those in flight, publish what committed."""
        if self._stopping:
            return
        self._stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace)
        for task in self._jobs:
            task.cancel()
        for task in self._jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.publisher is not None:
            await self.publisher.close()
        if self.services is not None and hasattr(self.services, "close"):
            await self.services.close()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        if self.engine is not None:
            await self.engine.dispose()
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

    # ------------------------------------------------------------------ delivery

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        try:
            await self._deliver_command(message)
        finally:
            self._leave()

    async def _deliver_command(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = decode_envelope(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable command dead-lettered", extra=log_fields(error=str(exc)))
            HANDLED.labels(self.domain, "?", "undecodable").inc()
            await message.reject(requeue=False)
            return
        token = correlation_id.set(str(envelope.correlation_id))
        started = time.perf_counter()
        try:
            entry = self.registry.operations.get(envelope.type)
            if entry is None:
                log.error("unknown operation dead-lettered", extra=log_fields(type=envelope.type))
                error = DomainError(f"{envelope.type} is not an operation of {self.domain}",
                                    code="unknown_operation")
                await self._reply(message, envelope, encode(Reply(error=error.to_body())))
                HANDLED.labels(self.domain, envelope.type, "unknown").inc()
                await message.reject(requeue=False)
                return
            op, handler = entry
            run = self._run_command if op.kind == "command" else self._run_query
            try:
                reply = await with_retries(self.settings.retry_backoff, run, envelope, op, handler,
                                           what=envelope.type, stopping=lambda: self._stopping)
            except Exception:
                log.exception("handler failed after retries; dead-lettered",
                              extra=log_fields(type=envelope.type, messageId=str(envelope.message_id)))
                HANDLED.labels(self.domain, envelope.type, "error").inc()
                if op.kind == "command":
                    await self._audit_error(envelope, op)
                body = InternalError("internal error", correlationId=str(envelope.correlation_id)).to_body()
                await self._reply(message, envelope, encode(Reply(error=body)))
                await message.reject(requeue=False)
                return
            await self._reply(message, envelope, reply)
            await message.ack()
            HANDLED.labels(self.domain, envelope.type, "ok").inc()
            DURATION.labels(self.domain, op.kind).observe(time.perf_counter() - started)
        finally:
            correlation_id.reset(token)

    async def _reply(self, message: AbstractIncomingMessage, envelope: Envelope, reply: bytes) -> None:
        if not message.reply_to or reply is _NO_REPLY:
            return
        env = Envelope(
            message_id=uuid7(),
            type=f"{envelope.type}.reply",
            correlation_id=envelope.correlation_id,
            causation_id=envelope.message_id,
            occurred_at=now_utc(),
            actor=Actor(system=f"{self.domain}-worker"),
            payload=msgspec.Raw(reply),
        )
        try:
            await message.channel.basic_publish(
                encode(env),
                exchange="",
                routing_key=message.reply_to,
                properties=aiormq.spec.Basic.Properties(
                    correlation_id=message.correlation_id,
                    content_type="application/json",
                    message_type=env.type,
                ),
                mandatory=False,
            )
        except Exception:
            # The requester may be gone; it will see a timeout. The result is committed.
            log.warning("reply could not be sent", extra=log_fields(type=envelope.type))

    # ------------------------------------------------------------------ commands and queries

    def _decode(self, envelope: Envelope, op: Operation) -> Any:
        try:
            return msgspec.json.decode(envelope.payload, type=op.payload)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc) from exc
        except msgspec.DecodeError as exc:
            raise DomainError("payload is not valid JSON", code="bad_request") from exc

    def _uow(self, conn: AsyncConnection, envelope: Envelope) -> UnitOfWork:
        return UnitOfWork(conn, envelope, self.domain, self.services, self.settings)

    async def _run_command(self, envelope: Envelope, op: Operation, handler: Handler) -> bytes:
        assert self.engine is not None and self.publisher is not None
        async with self.engine.connect() as conn:
            await conn.begin()
            uow = self._uow(conn, envelope)
            try:
                payload = self._decode(envelope, op)
                result = await handler(payload, uow)
            except DomainError as err:
                await conn.rollback()
                return await self._commit_failure(conn, uow, envelope, op, err)
            reply = encode(Reply(ok=msgspec.Raw(encode(result))))
            if op.audited:
                uow.emit(uow.audit_record(op.name, AuditOutcome.SUCCESS, _target(uow, op, payload, result)))
            events = uow.take_events()
            if not await self._claim(conn, envelope, op, reply):
                await conn.rollback()
                return await self._stored_reply(envelope)
            await self._insert_outbox(conn, events, uow)
            await conn.commit()
        self.publisher.submit(events)
        return reply

    async def _commit_failure(self, conn: AsyncConnection, uow: UnitOfWork, envelope: Envelope,
                              op: Operation, err: DomainError) -> bytes:
        """Remember and audit a refused command in its own transaction, after the rollback."""
        assert self.publisher is not None
        reply = encode(Reply(error=err.to_body()))
        await conn.begin()
        events = uow.take_failure_events()
        if op.audited:
            target = _target(uow, op, None, None)
            target.details = {**target.details, "code": err.code}
            uow.emit(uow.audit_record(op.name, AuditOutcome.of_status(err.status), target))
            events += uow.take_events()
        if not await self._claim(conn, envelope, op, reply):
            await conn.rollback()
            return await self._stored_reply(envelope)
        await self._insert_outbox(conn, events, uow)
        await conn.commit()
        self.publisher.submit(events)
        return reply

    async def _run_query(self, envelope: Envelope, op: Operation, handler: Handler) -> bytes:
        assert self.read_engine is not None and self.publisher is not None
        async with self.read_engine.connect() as conn:
            uow = self._uow(conn, envelope)
            try:
                payload = self._decode(envelope, op)
                result = await handler(payload, uow)
            except DomainError as err:
                return encode(Reply(error=err.to_body()))
            events = uow.take_events()
            if events:
                await self._insert_outbox(conn, events, uow)
        self.publisher.submit(events)
        return encode(Reply(ok=msgspec.Raw(encode(result))))

    async def _claim(self, conn: AsyncConnection, envelope: Envelope, op: Operation, reply: bytes | None) -> bool:
        """Insert the inbox row; False if this message id was already processed (a redelivery)."""
        stored = reply if (reply is None or not op.sensitive_reply) else _SENSITIVE_REPLAY
        result = await conn.execute(
            pg_insert(self.inbox)
            .values(message_id=envelope.message_id, type=envelope.type, reply=stored)
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(self.inbox.c.message_id)
        )
        return result.first() is not None

    async def _stored_reply(self, envelope: Envelope) -> bytes:
        assert self.engine is not None
        async with self.read_engine.connect() as conn:  # type: ignore[union-attr]
            reply = (
                await conn.execute(select(self.inbox.c.reply).where(self.inbox.c.message_id == envelope.message_id))
            ).scalar_one()
        log.info("redelivered message answered from the inbox",
                 extra=log_fields(type=envelope.type, messageId=str(envelope.message_id)))
        return reply if reply is not None else _NO_REPLY

    async def _insert_outbox(self, conn: AsyncConnection, events: list[PendingEvent], uow: UnitOfWork) -> None:
        if not events:
            return
        from datetime import timedelta

        available = uow.now + timedelta(seconds=self.settings.outbox_lease)
        await conn.execute(
            self.outbox.insert(),
            [{"message_id": e.message_id, "routing_key": e.routing_key, "body": e.body,
              "available_at": available} for e in events],
        )

    async def _audit_error(self, envelope: Envelope, op: Operation) -> None:
        """After the last retry: record the failure (outcome `error`) in a transaction of its own."""
        assert self.engine is not None and self.publisher is not None
        try:
            async with self.engine.begin() as conn:
                uow = self._uow(conn, envelope)
                target = _target(uow, op, None, None)
                target.details = {**target.details, "code": "internal_error"}
                uow.emit(uow.audit_record(op.name, AuditOutcome.ERROR, target))
                events = uow.take_events()
                await self._insert_outbox(conn, events, uow)
            self.publisher.submit(events)
        except Exception:
            log.exception("could not audit a failed command")

    # ------------------------------------------------------------------ events

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        try:
            await self._deliver_event(message)
        finally:
            self._leave()

    async def _deliver_event(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = decode_envelope(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable event dead-lettered", extra=log_fields(error=str(exc)))
            await message.reject(requeue=False)
            return
        token = correlation_id.set(str(envelope.correlation_id))
        try:
            subs = self.registry.subscriptions_for(envelope.type)
            if subs:
                try:
                    await with_retries(self.settings.retry_backoff, self._run_event, envelope, subs,
                                       what=envelope.type, stopping=lambda: self._stopping)
                except Exception:
                    log.exception("event handler failed after retries; dead-lettered",
                                  extra=log_fields(type=envelope.type))
                    HANDLED.labels(self.domain, envelope.type, "error").inc()
                    await message.reject(requeue=False)
                    return
            HANDLED.labels(self.domain, envelope.type, "ok").inc()
            await message.ack()
        finally:
            correlation_id.reset(token)

    async def _run_event(self, envelope: Envelope, subs: list[EventSubscription]) -> None:
        assert self.engine is not None and self.publisher is not None
        async with self.engine.connect() as conn:
            await conn.begin()
            result = await conn.execute(
                pg_insert(self.inbox)
                .values(message_id=envelope.message_id, type=envelope.type, reply=None)
                .on_conflict_do_nothing(index_elements=["message_id"])
                .returning(self.inbox.c.message_id)
            )
            if result.first() is None:
                await conn.rollback()
                return  # already applied
            uow = self._uow(conn, envelope)
            try:
                for sub in subs:
                    payload = msgspec.json.decode(envelope.payload, type=sub.event_type)
                    await sub.handler(payload, uow)
            except (DomainError, msgspec.ValidationError) as err:
                # An event a handler refuses will be refused every time: remember it, move on.
                log.warning("event refused by its handler", extra=log_fields(type=envelope.type, error=str(err)))
                await conn.rollback()
                uow.take_events()
                async with self.engine.begin() as again:
                    await again.execute(
                        pg_insert(self.inbox)
                        .values(message_id=envelope.message_id, type=envelope.type, reply=None)
                        .on_conflict_do_nothing(index_elements=["message_id"])
                    )
                return
            events = uow.take_events()
            await self._insert_outbox(conn, events, uow)
            await conn.commit()
        self.publisher.submit(events)

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
        """One run under a transaction-scoped advisory lock; False when another replica has it."""
        assert self.engine is not None and self.publisher is not None
        envelope = make_envelope(f"{self.domain}.{job.name}", {}, Actor.system_actor(job.name))
        async with self.engine.connect() as conn:
            await conn.begin()
            got = (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": job.lock_key})).scalar()
            if not got:
                await conn.rollback()
                return False
            uow = self._uow(conn, envelope)
            await job.handler(uow)
            events = uow.take_events()
            await self._insert_outbox(conn, events, uow)
            await conn.commit()
        self.publisher.submit(events)
        return True

    # ------------------------------------------------------------------ ping

    def _register_ping(self) -> None:
        from contracts.registry import OPERATIONS

        name = f"{self.domain}.ping"
        if name not in OPERATIONS or name in self.registry.operations:
            return
        from contracts.common import PingResult

        async def ping(_: Any, uow: UnitOfWork) -> PingResult:
            try:
                await uow.conn.execute(text("SELECT 1"))
            except Exception as exc:
                raise Unavailable("the database is not reachable") from exc
            return PingResult(worker=self.domain, version=self.version,
                              uptime_seconds=round(time.monotonic() - self._started_at, 3))

        self.registry.operations[name] = (OPERATIONS[name], ping)


# What a redelivered login or refresh replays: its real reply held credentials, which are never stored.
_SENSITIVE_REPLAY = encode(Reply(error=Conflict(
    "this request was already processed; its result holds credentials and is not kept",
    code="duplicate_delivery").to_body()))


def _target(uow: UnitOfWork, op: Operation, payload: Any, result: Any) -> AuditTarget:
    """The audit target: what the handler named, else the id in the result or the payload."""
    target = AuditTarget(uow.audit.target_type, uow.audit.target_id, list(uow.audit.patient_ids),
                         dict(uow.audit.details))
    if target.target_id is None:
        ident = getattr(result, "id", None) or getattr(payload, "id", None) or _raw_id(uow)
        if ident is not None:
            target.target_id = str(ident)
    if target.target_type is None:
        verb_noun = op.name.split(".", 1)[1]
        target.target_type = verb_noun.split("_", 1)[1] if "_" in verb_noun else verb_noun
    return target


def _raw_id(uow: UnitOfWork) -> Any:
    """The `id` member of a payload that did not decode into its struct, if any."""
    try:
        raw = msgspec.json.decode(uow.envelope.payload)
    except msgspec.DecodeError:
        return None
    return raw.get("id") if isinstance(raw, dict) else None
