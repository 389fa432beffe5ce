"""From a route to the bus and back: send the contract struct with the request's actor, map the
reply. A successful reply's JSON is passed through as it came from the worker, never re-encoded."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.types import Scope

from contracts.envelope import Actor
from contracts.errors import DomainError
from contracts.observability import log_fields
from contracts.rpc import RpcClient
from contracts.system import AuditOutcome, RecordAuditEvent
from edge.auth import actor_of

log = logging.getLogger("edge.bus")
JSON = "application/json"


class _Meta(msgspec.Struct):
    id: str | None = None
    version: int | None = None


_meta = msgspec.json.Decoder(_Meta)


async def send(request: Request, payload: Any, *, status: int = 200, location: str | None = None,
               empty: bool = False, timeout: float | None = None, etag: bool = False) -> Response[Any]:
    """Send `payload` (a registered contract struct) for this request and answer with its reply.

    `location`: the collection path; a 201 gets `Location: <location>/<id>`.
    `etag`: the record's version becomes `ETag: "<version>"`.
    """
    scope = request.scope
    state = request.app.state
    reply = await state.bus.call_raw(
        type(payload).OPERATION, payload, actor_of(scope), timeout=timeout,
        correlation_id=scope.get("correlation_id"), message_id=scope.get("command_id"),
    )
    if reply.error is not None:
        raise DomainError.from_body(reply.error)
    body = bytes(reply.ok)
    if empty or body in (b"", b"null"):
        return Response(None, status_code=204)
    headers: dict[str, str] = {}
    if location is not None or etag:
        meta = _meta.decode(body)
        if etag and meta.version is not None:
            headers["ETag"] = f'"{meta.version}"'
        if location is not None and meta.id is not None:
            headers["Location"] = f"{location}/{meta.id}"
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def if_match(request: Request) -> int | None:
    """`If-Match: "<version>"` → the version, for optimistic concurrency (412 when stale)."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    try:
        return int(raw.strip().strip('W/').strip('"'))
    except ValueError as exc:
        from contracts.errors import BadRequest

        raise BadRequest('If-Match must be a quoted version, like "3"', field="If-Match") from exc


class RefusalAuditor:
    """Reports 401/403 refusals to the audit trail (`system.record_audit_event`), coalescing
    repeats of the same caller, action and route within a minute so noise cannot flood it."""

    WINDOW = 60.0

    def __init__(self, bus: RpcClient) -> None:
        self.bus = bus
        self._recent: dict[tuple[Any, ...], float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def refused(self, scope: Scope, action: str, code: str) -> None:
        actor: Actor = actor_of(scope)
        route = f"{scope.get('method', 'WS')} {scope.get('path', '')}"
        key = (actor.user_id or actor.ip, action, route)
        now = time.monotonic()
        if now - self._recent.get(key, -self.WINDOW) < self.WINDOW:
            return
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[key] = now
        payload = RecordAuditEvent(action=action, outcome=AuditOutcome.DENIED, target_type="route",
                                   target_id=route[:200], details={"code": code})
        task = asyncio.create_task(self._send(payload, actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, payload: RecordAuditEvent, actor: Actor) -> None:
        try:
            await self.bus.send("system.record_audit_event", payload, actor)
        except Exception as exc:
            log.warning("could not audit a refusal", extra=log_fields(error=repr(exc)))
