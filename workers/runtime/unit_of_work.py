"""What a handler gets besides its payload: the transaction, the actor, `emit`, audit hints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import Actor, Envelope, Event, encode, make_envelope, now_utc
from contracts.settings import Settings
from contracts.system import AuditOutcome, audit_event_type


@dataclass(slots=True)
class PendingEvent:
    message_id: UUID
    routing_key: str
    body: bytes


@dataclass(slots=True)
class AuditTarget:
    target_type: str | None = None
    target_id: str | None = None
    patient_ids: list[UUID] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class UnitOfWork:
    """One message's transaction. Events emitted here are written to the outbox in the same
    transaction and published only after it commits; a rollback drops them."""

    __slots__ = ("_after_commit", "_always", "_events", "_on_rollback", "actor", "audit", "batch", "bus", "conn",
                 "domain", "envelope", "now", "services", "settings")

    def __init__(self, conn: AsyncConnection, envelope: Envelope, domain: str, services: Any,
                 settings: Settings, bus: Any = None, batch: dict[str, Any] | None = None) -> None:
        self.conn = conn
        self.batch: dict[str, Any] = {} if batch is None else batch  # shared by the events of one batch
        self.bus = bus
        self.envelope = envelope
        self.actor: Actor = envelope.actor
        self.domain = domain
        self.services = services
        self.settings = settings
        self.now: datetime = now_utc()
        self.audit = AuditTarget()
        self._events: list[PendingEvent] = []
        self._always: list[PendingEvent] = []
        self._after_commit: list[Callable[[], Awaitable[None]]] = []
        self._on_rollback: list[Callable[[], Awaitable[None]]] = []

    @property
    def actor_id(self) -> UUID | None:
        return self.actor.user_id

    async def ask(self, payload: Any, result: Any) -> Any:
        """A query to another domain's worker, as this message's actor and in its correlation:
        the owner of the data decides, and its audit trail names who really asked."""
        if self.bus is None:
            raise RuntimeError("this worker has no bus client")
        return await self.bus.call(type(payload).OPERATION, payload, self.actor, result=result,
                                   correlation_id=self.envelope.correlation_id)

    def after_commit(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once this transaction has committed, before the reply (e.g. delete blobs
        the change made unreachable). Best effort: a failure is logged, never undoes the commit."""
        self._after_commit.append(action)

    def on_rollback(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` if this transaction does not commit (e.g. remove what the handler wrote
        outside the database)."""
        self._on_rollback.append(action)

    def take_hooks(self, committed: bool) -> list[Callable[[], Awaitable[None]]]:
        hooks = self._after_commit if committed else self._on_rollback
        self._after_commit, self._on_rollback = [], []
        return hooks

    def emit(self, event: Event) -> None:
        """Publish `event` if and only if this transaction commits."""
        self._events.append(self._pending(event))

    def emit_always(self, event: Event) -> None:
        """Publish `event` even when the handler then refuses the command with a domain error
        (a failed sign-in, a detected token reuse): it is committed with the failure's audit."""
        self._always.append(self._pending(event))

    def _pending(self, event: Event) -> PendingEvent:
        # Domain events name who acted, never the client's address or agent.
        actor = Actor(user_id=self.actor.user_id, role=self.actor.role, session_id=self.actor.session_id,
                      system=self.actor.system)
        env = make_envelope(event.TYPE, event, actor, correlation_id=self.envelope.correlation_id,
                            causation_id=self.envelope.message_id)
        return PendingEvent(env.message_id, event.TYPE, encode(env))

    def target(self, target_type: str, target_id: Any, *, patient_ids: list[UUID] | None = None,
               **details: Any) -> None:
        """Name what this command acted on, for its audit entry."""
        self.audit.target_type = target_type
        self.audit.target_id = None if target_id is None else str(target_id)
        if patient_ids is not None:
            self.audit.patient_ids = list(patient_ids)[:100]
        self.audit.details.update(details)

    def audit_read(self, action: str, target_type: str, target_id: Any, patient_ids: list[UUID],
                   **details: Any) -> None:
        """Record a read of patient data; the system worker coalesces repeats over 5 minutes."""
        self.emit(self.audit_record(action, AuditOutcome.SUCCESS,
                                    AuditTarget(target_type, None if target_id is None else str(target_id),
                                                patient_ids[:100], details),
                                    coalesce=True))

    def audit_record(self, action: str, outcome: AuditOutcome, target: AuditTarget,
                     coalesce: bool = False) -> Event:
        a = self.envelope.actor
        return audit_event_type(self.domain)(
            occurred_at=self.now,
            action=action,
            outcome=outcome,
            correlation_id=self.envelope.correlation_id,
            actor_id=a.user_id,
            actor_role=a.role,
            actor_system=a.system,
            session_id=a.session_id,
            target_type=target.target_type,
            target_id=target.target_id,
            patient_ids=target.patient_ids,
            ip=a.ip,
            user_agent=a.user_agent,
            details=target.details,
            coalesce=coalesce,
        )

    def take_events(self) -> list[PendingEvent]:
        """Everything emitted (the success path)."""
        events = self._always + self._events
        self._always, self._events = [], []
        return events

    def take_failure_events(self) -> list[PendingEvent]:
        """Only what was emitted with `emit_always` (the domain-error path)."""
        events = self._always
        self._always, self._events = [], []
        return events
