"""System worker (spec system.md): the audit trail (first part); notifications etc. come later."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import Meta

from contracts.common import Empty, ListParams, Page, PingResult, Struct, View
from contracts.envelope import Event
from contracts.registry import command, event, query

AUDIT_SORT = ("occurredAt",)
DOMAINS = ("users", "patients", "imaging", "system")


class AuditOutcome(enum.StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    ERROR = "error"

    @classmethod
    def of_status(cls, status: int) -> AuditOutcome:
        if status < 400:
            return cls.SUCCESS
        if status in (401, 403, 423, 429):
            return cls.DENIED
        if status == 404:
            return cls.NOT_FOUND
        if status in (409, 412):
            return cls.CONFLICT
        if status < 500:
            return cls.INVALID
        return cls.ERROR


class AuditRecord(Event):
    """One audit fact (system.md §5). `coalesceKey` marks a read to be merged over 5 minutes."""

    occurred_at: datetime
    action: str
    outcome: AuditOutcome
    correlation_id: UUID | None = None
    actor_id: UUID | None = None
    actor_role: str | None = None
    actor_system: str | None = None
    session_id: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    patient_ids: list[UUID] = msgspec.field(default_factory=list)
    ip: str | None = None
    user_agent: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    coalesce: bool = False
    repeats: int = 1  # a coalesced read counted this many times at its source (an edge's read cache)


@event("users.audit.recorded", relay=False)
class UsersAuditRecorded(AuditRecord):
    pass


@event("patients.audit.recorded", relay=False)
class PatientsAuditRecorded(AuditRecord):
    pass


@event("imaging.audit.recorded", relay=False)
class ImagingAuditRecorded(AuditRecord):
    pass


@event("system.audit.recorded", relay=False)
class SystemAuditRecorded(AuditRecord):
    pass


AUDIT_EVENT_TYPES: dict[str, type[AuditRecord]] = {
    "users": UsersAuditRecorded,
    "patients": PatientsAuditRecorded,
    "imaging": ImagingAuditRecorded,
    "system": SystemAuditRecorded,
}


def audit_event_type(domain: str) -> type[AuditRecord]:
    """`<domain>.audit.recorded`, registered on first use for a domain without its own class."""
    kind = AUDIT_EVENT_TYPES.get(domain)
    if kind is None:
        kind = event(f"{domain}.audit.recorded", relay=False)(
            type(f"{domain.title()}AuditRecorded", (AuditRecord,), {})
        )
        AUDIT_EVENT_TYPES[domain] = kind
    return kind


class AuditEventView(View):
    id: UUID
    occurred_at: datetime
    last_occurred_at: datetime
    repeat_count: int
    actor_id: UUID | None
    actor_role: str | None
    actor_system: str | None
    session_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    patient_ids: list[UUID]
    outcome: AuditOutcome
    ip: str | None
    user_agent: str | None
    correlation_id: UUID | None
    details: dict[str, Any]


@command("system.record_audit_event", audited=False,
         summary="Record what the edge saw itself: a refusal (401/403), or reads it answered from its own cache")
class RecordAuditEvent(Struct):
    action: Annotated[str, Meta(max_length=200)]
    outcome: AuditOutcome
    target_type: Annotated[str, Meta(max_length=100)] | None = None
    target_id: Annotated[str, Meta(max_length=200)] | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    patient_ids: Annotated[list[UUID], Meta(max_length=100)] = msgspec.field(default_factory=list)
    coalesce: bool = False  # a read of patient data: merged with the same user's, patient's and action's over 5 min
    repeats: Annotated[int, Meta(ge=1, le=1_000_000)] = 1


@query("system.list_audit_events", result=Page[AuditEventView], summary="The audit trail (ADM)")
class ListAuditEvents(ListParams):
    actor_id: UUID | None = None
    patient_id: UUID | None = None
    action: list[Annotated[str, Meta(max_length=200)]] | None = None
    target_type: Annotated[str, Meta(max_length=100)] | None = None
    target_id: Annotated[str, Meta(max_length=200)] | None = None
    outcome: list[AuditOutcome] | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None
    correlation_id: UUID | None = None


@query("system.ping", result=PingResult)
class PingSystem(Empty):
    pass
