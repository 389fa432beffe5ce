"""`/audit-events` (system.md §5): the audit trail, for administrators; reading it is audited."""

from __future__ import annotations

from litestar import Request, get

from contracts.common import Page
from contracts.system import AuditEventView, ListAuditEvents
from edge.access import ADM, roles
from edge.bus import send
from edge.queries import documented, parse_query


@get("/audit-events", operation_id="ListAuditEvents", opt=roles(ADM), tags=["audit"],
     operation_class=documented(ListAuditEvents), summary="Who did or read what, filtered and paged")
async def list_audit_events(request: Request) -> Page[AuditEventView]:
    return await send(request, parse_query(request, ListAuditEvents, me=("actorId",)))  # type: ignore[return-value]


ROUTES = [list_audit_events]
