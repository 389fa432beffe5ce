"""The audit trail: storing it (append-only, reads coalesced) and reading it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.common import Page
from contracts.ids import uuid7
from contracts.system import (
    AuditEventView,
    AuditOutcome,
    AuditRecord,
    ListAuditEvents,
    RecordAuditEvent,
)
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import AuditTarget, UnitOfWork
from workers.system.handlers import registry
from workers.system.tables import audit_events

COALESCE_WINDOW = timedelta(minutes=5)
_SORT = {"occurredAt": audit_events.c.occurred_at}


def _coalesce_key(ev: AuditRecord) -> str:
    patients = ",".join(sorted(str(p) for p in ev.patient_ids))
    who = ev.actor_id or ev.actor_system or "anonymous"
    return f"{who}|{ev.action}|{ev.target_type}|{ev.target_id}|{patients}"


def _row(uow: UnitOfWork, ev: AuditRecord, coalesce_key: str | None) -> dict[str, Any]:
    return {
        "id": uuid7(), "message_id": uow.envelope.message_id, "occurred_at": ev.occurred_at,
        "last_occurred_at": ev.occurred_at, "repeat_count": max(1, ev.repeats), "actor_id": ev.actor_id,
        "actor_role": ev.actor_role,
        "actor_system": ev.actor_system, "session_id": ev.session_id, "action": ev.action,
        "target_type": ev.target_type, "target_id": ev.target_id, "patient_ids": list(ev.patient_ids)[:100],
        "outcome": ev.outcome.value, "ip": ev.ip, "user_agent": (ev.user_agent or "")[:500] or None,
        "correlation_id": ev.correlation_id, "details": ev.details, "coalesce_key": coalesce_key,
    }


async def _insert(uow: UnitOfWork, ev: AuditRecord, coalesce_key: str | None) -> None:
    await uow.conn.execute(pg_insert(audit_events).values(_row(uow, ev, coalesce_key))
                           .on_conflict_do_nothing(index_elements=["message_id"]))


async def _insert_collected(uow: UnitOfWork) -> None:
    """The batch's plain (not coalesced) entries in one multi-row insert."""
    rows = uow.batch.pop("audit_rows", None)
    if rows:
        await uow.conn.execute(pg_insert(audit_events).on_conflict_do_nothing(index_elements=["message_id"]), rows)


@registry.on_event("*.audit.recorded", AuditRecord, flush=_insert_collected)
async def store_audit_event(ev: AuditRecord, uow: UnitOfWork) -> None:
    """One audit fact from any worker. A read of patient data repeated by the same user within
    5 minutes raises the first entry's `repeatCount` instead of adding a row."""
    if not ev.coalesce:
        uow.batch.setdefault("audit_rows", []).append(_row(uow, ev, None))
        return
    key = _coalesce_key(ev)
    await uow.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})
    first = (
        await uow.conn.execute(
            select(audit_events.c.id)
            # Delivery may reorder reads: merge into an entry begun within 5 minutes either side.
            .where(audit_events.c.coalesce_key == key,
                   audit_events.c.occurred_at > ev.occurred_at - COALESCE_WINDOW,
                   audit_events.c.occurred_at < ev.occurred_at + COALESCE_WINDOW)
            .order_by(audit_events.c.occurred_at.desc())
            .limit(1)
        )
    ).scalar()
    if first is None:
        await _insert(uow, ev, key)
        return
    await uow.conn.execute(
        update(audit_events).where(audit_events.c.id == first)
        .values(repeat_count=audit_events.c.repeat_count + max(1, ev.repeats),
                last_occurred_at=func.greatest(audit_events.c.last_occurred_at, ev.occurred_at))
    )


@registry.handles(RecordAuditEvent)
async def record_audit_event(cmd: RecordAuditEvent, uow: UnitOfWork) -> None:
    """A refusal the edge saw (401/403): the actor and client facts come from the envelope."""
    record = uow.audit_record(cmd.action, cmd.outcome,
                              AuditTarget(cmd.target_type, cmd.target_id, list(cmd.patient_ids), dict(cmd.details)),
                              coalesce=cmd.coalesce)
    record.repeats = cmd.repeats  # type: ignore[attr-defined]
    if cmd.coalesce:
        await store_audit_event(record, uow)  # type: ignore[arg-type]
        return None
    await _insert(uow, record, None)  # type: ignore[arg-type]
    return None


def _view(row: Any) -> AuditEventView:
    return AuditEventView(
        id=row.id, occurred_at=row.occurred_at, last_occurred_at=row.last_occurred_at,
        repeat_count=row.repeat_count, actor_id=row.actor_id, actor_role=row.actor_role,
        actor_system=row.actor_system, session_id=row.session_id, action=row.action,
        target_type=row.target_type, target_id=row.target_id, patient_ids=list(row.patient_ids),
        outcome=AuditOutcome(row.outcome), ip=row.ip, user_agent=row.user_agent,
        correlation_id=row.correlation_id, details=row.details,
    )


@registry.handles(ListAuditEvents)
async def list_audit_events(q: ListAuditEvents, uow: UnitOfWork) -> Page[AuditEventView]:
    a = audit_events
    stmt = select(a)
    if q.actor_id is not None:
        stmt = stmt.where(a.c.actor_id == q.actor_id)
    if q.patient_id is not None:
        stmt = stmt.where(a.c.patient_ids.contains([q.patient_id]))
    if q.action:
        stmt = stmt.where(a.c.action.in_(q.action))
    if q.target_type is not None:
        stmt = stmt.where(a.c.target_type == q.target_type)
    if q.target_id is not None:
        stmt = stmt.where(a.c.target_id == q.target_id)
    if q.outcome:
        stmt = stmt.where(a.c.outcome.in_([o.value for o in q.outcome]))
    if q.occurred_from is not None:
        stmt = stmt.where(a.c.occurred_at >= q.occurred_from)
    if q.occurred_to is not None:
        stmt = stmt.where(a.c.occurred_at <= q.occurred_to)
    if q.correlation_id is not None:
        stmt = stmt.where(a.c.correlation_id == q.correlation_id)
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-occurredAt", a.c.id)
    filters = {k: str(v) for k, v in (("actorId", q.actor_id), ("patientId", q.patient_id),
                                      ("targetId", q.target_id), ("action", q.action)) if v}
    uow.emit(uow.audit_record("system.list_audit_events", AuditOutcome.SUCCESS,
                              AuditTarget("audit_event", None, [q.patient_id] if q.patient_id else [],
                                          {"filters": filters, "count": len(rows)}), coalesce=True))
    return Page(items=[_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)
