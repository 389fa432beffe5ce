"""One transaction per message: the part of the runtime that knows Postgres, not AMQP.

A command's transaction holds the handler's changes, its audit entry, the inbox row (message id
and reply) and the outbox rows (its events). A redelivered message finds its inbox row and gets
the stored reply; nothing happens twice. A domain error is an answer: the change rolls back and
the refusal is audited and remembered in a transaction of its own. Events from other domains are
applied in batches: one transaction, one multi-row inbox claim, then each handler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import Actor, Envelope, Reply, encode, make_envelope
from contracts.errors import Conflict, DomainError, invalid_field
from contracts.observability import log_fields
from contracts.registry import Operation
from contracts.settings import Settings
from contracts.system import AuditOutcome
from workers.runtime.outbox import OutboxPublisher
from workers.runtime.registry import EventSubscription, Handler, Job
from workers.runtime.unit_of_work import AuditTarget, PendingEvent, UnitOfWork

log = logging.getLogger("runtime")
NO_REPLY = b""

# What a redelivered login or refresh replays: its real reply held credentials, never stored.
SENSITIVE_REPLAY = encode(Reply(error=Conflict(
    "this request was already processed; its result holds credentials and is not kept",
    code="duplicate_delivery").to_body()))


@dataclass(slots=True)
class EventItem:
    """One consumed event of a batch."""

    envelope: Envelope
    subscriptions: list[EventSubscription]


def validation_error(exc: msgspec.ValidationError) -> DomainError:
    from contracts.validation import describe_validation_error

    field, code, detail = describe_validation_error(str(exc))
    return invalid_field(field, code, detail)


class Transactions:
    def __init__(self, domain: str, engine: AsyncEngine, inbox: Table, outbox: Table,
                 publisher: OutboxPublisher, settings: Settings, services: Any = None, bus: Any = None) -> None:
        # One round trip claims the inbox row and writes the outbox rows, only if claimed.
        self._claim_sql = (
            f"WITH claimed AS (INSERT INTO {domain}.inbox (message_id, type, reply) VALUES ($1, $2, $3) "
            f"ON CONFLICT (message_id) DO NOTHING RETURNING message_id), "
            f"written AS (INSERT INTO {domain}.outbox (message_id, routing_key, body, available_at) "
            f"SELECT e.m, e.k, e.b, clock_timestamp() + make_interval(secs => $7) "
            f"FROM unnest($4::uuid[], $5::text[], $6::bytea[]) AS e(m, k, b) "
            f"WHERE EXISTS (SELECT 1 FROM claimed) RETURNING 1) "
            f"SELECT count(*) FROM claimed"
        )
        self.domain = domain
        self.engine = engine
        self.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.inbox = inbox
        self.outbox = outbox
        self.publisher = publisher
        self.settings = settings
        self.services = services
        self.bus = bus
        self._lease = timedelta(seconds=settings.outbox_lease)

    def uow(self, conn: AsyncConnection, envelope: Envelope, batch: dict[str, Any] | None = None) -> UnitOfWork:
        return UnitOfWork(conn, envelope, self.domain, self.services, self.settings, self.bus, batch)

    @staticmethod
    def decode(envelope: Envelope, op: Operation) -> Any:
        try:
            return msgspec.json.decode(envelope.payload, type=op.payload)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from exc
        except msgspec.DecodeError as exc:
            raise DomainError("payload is not valid JSON", code="bad_request") from exc

    # ------------------------------------------------------------------ commands and queries

    async def run_command(self, envelope: Envelope, op: Operation, handler: Handler) -> bytes:
        async with self.engine.connect() as conn:
            await conn.begin()
            uow = self.uow(conn, envelope)
            try:
                try:
                    payload = self.decode(envelope, op)
                    result = await handler(payload, uow)
                except DomainError as err:
                    await conn.rollback()
                    await run_hooks(uow.take_hooks(committed=False))
                    return await self._commit_failure(conn, uow, envelope, op, err)
                reply = encode(Reply(ok=msgspec.Raw(encode(result))))
                if op.audited:
                    uow.emit(uow.audit_record(op.name, AuditOutcome.SUCCESS, audit_target(uow, op, payload, result)))
                events = uow.take_events()
                if not await self._claim(conn, envelope, op, reply, events, uow):
                    await conn.rollback()
                    await run_hooks(uow.take_hooks(committed=False))
                    return await self._stored_reply(envelope)
                await conn.commit()
            except BaseException:
                await run_hooks(uow.take_hooks(committed=False))
                raise
        self.publisher.submit(events)
        await run_hooks(uow.take_hooks(committed=True))
        return reply

    async def _commit_failure(self, conn: AsyncConnection, uow: UnitOfWork, envelope: Envelope,
                              op: Operation, err: DomainError) -> bytes:
        """Remember and audit a refused command in its own transaction, after the rollback."""
        reply = encode(Reply(error=err.to_body()))
        await conn.begin()
        events = uow.take_failure_events()
        if op.audited:
            target = audit_target(uow, op, None, None)
            target.details = {**target.details, "code": err.code}
            uow.emit(uow.audit_record(op.name, AuditOutcome.of_status(err.status), target))
            events += uow.take_events()
        if not await self._claim(conn, envelope, op, reply, events, uow):
            await conn.rollback()
            return await self._stored_reply(envelope)
        await conn.commit()
        self.publisher.submit(events)
        return reply

    async def run_query(self, envelope: Envelope, op: Operation, handler: Handler) -> bytes:
        """A query runs in autocommit (no BEGIN/COMMIT round trips); it changes nothing but may
        record reads of patient data, which go to the outbox."""
        async with self.read_engine.connect() as conn:
            uow = self.uow(conn, envelope)
            try:
                payload = self.decode(envelope, op)
                result = await handler(payload, uow)
            except DomainError as err:
                return encode(Reply(error=err.to_body()))
            events = uow.take_events()
            if events:
                await self.insert_outbox(conn, events, uow)
        self.publisher.submit(events)
        return encode(Reply(ok=msgspec.Raw(encode(result))))

    async def _claim(self, conn: AsyncConnection, envelope: Envelope, op: Operation, reply: bytes,
                     events: list[PendingEvent], uow: UnitOfWork) -> bool:
        """Insert the inbox row and, if it was not there yet, the outbox rows; False if this
        message id was already processed (a redelivery)."""
        stored = reply if not op.sensitive_reply else SENSITIVE_REPLAY
        result = await conn.exec_driver_sql(self._claim_sql, (
            envelope.message_id, envelope.type, stored,
            [e.message_id for e in events], [e.routing_key for e in events], [e.body for e in events],
            self.settings.outbox_lease,  # the lease runs from the write, not from the transaction's start
        ))
        return bool(result.scalar())

    async def _stored_reply(self, envelope: Envelope) -> bytes:
        async with self.read_engine.connect() as conn:
            reply = (
                await conn.execute(select(self.inbox.c.reply).where(self.inbox.c.message_id == envelope.message_id))
            ).scalar_one()
        log.info("redelivered message answered from the inbox",
                 extra=log_fields(type=envelope.type, messageId=str(envelope.message_id)))
        return reply if reply is not None else NO_REPLY

    async def insert_outbox(self, conn: AsyncConnection, events: list[PendingEvent], uow: UnitOfWork) -> None:
        if not events:
            return
        # The lease runs from the write, not from the transaction's start: a long transaction keeps it.
        await conn.execute(
            self.outbox.insert().values(available_at=func.clock_timestamp() + self._lease),
            [{"message_id": e.message_id, "routing_key": e.routing_key, "body": e.body} for e in events],
        )

    async def audit_error(self, envelope: Envelope, op: Operation) -> None:
        """After the last retry: record the failure (outcome `error`) in a transaction of its own."""
        try:
            async with self.engine.begin() as conn:
                uow = self.uow(conn, envelope)
                target = audit_target(uow, op, None, None)
                target.details = {**target.details, "code": "internal_error"}
                uow.emit(uow.audit_record(op.name, AuditOutcome.ERROR, target))
                events = uow.take_events()
                await self.insert_outbox(conn, events, uow)
            self.publisher.submit(events)
        except Exception:
            log.exception("could not audit a failed command")

    # ------------------------------------------------------------------ events

    async def run_events(self, items: list[EventItem]) -> None:
        """Apply a batch of events in one transaction; raises if any handler does (the caller
        then applies them one by one to isolate the culprit)."""
        async with self.engine.connect() as conn:
            await conn.begin()
            claimed = set((await conn.execute(
                pg_insert(self.inbox)
                .values([{"message_id": i.envelope.message_id, "type": i.envelope.type, "reply": None}
                         for i in items])
                .on_conflict_do_nothing(index_elements=["message_id"])
                .returning(self.inbox.c.message_id)
            )).scalars())
            fresh: list[EventItem] = []
            for item in items:
                if item.envelope.message_id not in claimed:
                    continue  # already applied (a redelivery)
                claimed.discard(item.envelope.message_id)  # a duplicate inside the batch too
                fresh.append(item)
            events = await self._apply_all(conn, fresh)
            if fresh:
                await self.insert_outbox(conn, events, self.uow(conn, fresh[-1].envelope))
            await conn.commit()
        self.publisher.submit(events)

    async def run_event(self, item: EventItem) -> None:
        """One event on its own: a handler's refusal is final, so it is remembered and skipped."""
        async with self.engine.connect() as conn:
            await conn.begin()
            result = await conn.execute(
                pg_insert(self.inbox)
                .values(message_id=item.envelope.message_id, type=item.envelope.type, reply=None)
                .on_conflict_do_nothing(index_elements=["message_id"])
                .returning(self.inbox.c.message_id)
            )
            if result.first() is None:
                await conn.rollback()
                return
            uow = self.uow(conn, item.envelope)
            try:
                events = await self._apply_all(conn, [item])
            except (DomainError, msgspec.ValidationError) as err:
                log.warning("event refused by its handler", extra=log_fields(type=item.envelope.type, error=str(err)))
                await conn.rollback()
                async with self.engine.begin() as again:
                    await again.execute(
                        pg_insert(self.inbox)
                        .values(message_id=item.envelope.message_id, type=item.envelope.type, reply=None)
                        .on_conflict_do_nothing(index_elements=["message_id"])
                    )
                return
            await self.insert_outbox(conn, events, uow)
            await conn.commit()
        self.publisher.submit(events)

    async def _apply_all(self, conn: AsyncConnection, items: list[EventItem]) -> list[PendingEvent]:
        """Run every subscription's handler for each event in order, with the subscriptions'
        batch hooks around them (prefetch before, flush after); the events they emitted."""
        batch: dict[str, Any] = {}
        decoded = [(item, [(sub, msgspec.json.decode(item.envelope.payload, type=sub.event_type))
                           for sub in item.subscriptions]) for item in items]
        hooked: dict[int, tuple[EventSubscription, list[tuple[Envelope, Any]]]] = {}
        for item, pairs in decoded:
            for sub, event in pairs:
                if sub.prefetch is not None or sub.flush is not None:
                    hooked.setdefault(id(sub), (sub, []))[1].append((item.envelope, event))
        for sub, matched in hooked.values():
            if sub.prefetch is not None:
                await sub.prefetch(matched, self.uow(conn, matched[0][0], batch))
        events: list[PendingEvent] = []
        for item, pairs in decoded:
            uow = self.uow(conn, item.envelope, batch)
            for sub, event in pairs:
                await sub.handler(event, uow)
            events += uow.take_events()
        for sub, matched in hooked.values():
            if sub.flush is not None:
                uow = self.uow(conn, matched[-1][0], batch)
                await sub.flush(uow)
                events += uow.take_events()
        return events

    # ------------------------------------------------------------------ timed jobs

    async def run_job(self, job: Job) -> bool:
        """One run under a transaction-scoped advisory lock; False when another replica has it."""
        envelope = make_envelope(f"{self.domain}.{job.name}", {}, Actor.system_actor(job.name))
        async with self.engine.connect() as conn:
            await conn.begin()
            got = (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": job.lock_key})).scalar()
            if not got:
                await conn.rollback()
                return False
            uow = self.uow(conn, envelope)
            try:
                await job.handler(uow)
                events = uow.take_events()
                await self.insert_outbox(conn, events, uow)
                await conn.commit()
            except BaseException:
                await run_hooks(uow.take_hooks(committed=False))
                raise
        self.publisher.submit(events)
        await run_hooks(uow.take_hooks(committed=True))
        return True


async def run_hooks(hooks: list[Any]) -> None:
    """After-commit or rollback actions of a unit of work: each runs, a failure is logged."""
    for hook in hooks:
        try:
            await hook()
        except Exception:
            log.exception("an after-commit/rollback action failed")


def audit_target(uow: UnitOfWork, op: Operation, payload: Any, result: Any) -> AuditTarget:
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
