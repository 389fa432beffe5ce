"""The audit trail: every command, every refusal at the edge, reading the trail itself; filters and
paging; append-only in the database; coalesced reads of patient data."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from contracts.envelope import Actor, encode, make_envelope
from contracts.system import AuditOutcome, PatientsAuditRecorded
from tests.support import Stack, eventually, make_user, unique

pytestmark = pytest.mark.asyncio


async def _find(api: httpx.AsyncClient, admin: dict[str, str], **params: str) -> list[dict]:
    r = await api.get("/audit-events", params={"limit": "100", **params}, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_commands_and_refusals_are_audited(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    code = unique("A").upper()[:10]
    r = await api.post("/departments", json={"code": code, "name": "Audited"}, headers=admin)
    department = r.json()
    await api.post("/departments", json={"code": code, "name": "Twice"}, headers=admin)

    async def both() -> list[dict] | None:
        items = await _find(api, admin, action="users.create_department", actorId="me")
        mine = [i for i in items if i["targetId"] == department["id"] or i["details"].get("code") == "already_exists"]
        return mine if len(mine) >= 2 else None

    items = await eventually(both)
    outcomes = {i["outcome"] for i in items}
    assert {"success", "conflict"} <= outcomes
    ok = next(i for i in items if i["outcome"] == "success")
    assert ok["targetType"] == "department" and ok["actorRole"] == "system_admin"
    assert ok["ip"] and ok["userAgent"] and ok["correlationId"] and ok["sessionId"]

    person = await make_user(api, admin, "physician")
    assert (await api.get("/users", headers=person.headers)).status_code == 403
    denied = await eventually(lambda: _find(api, admin, actorId=person.id, action="http.forbidden"))
    assert denied[0]["outcome"] == "denied" and denied[0]["targetId"] == "GET /users"
    assert (await api.get("/users", headers={"Authorization": "Bearer nope"})).status_code == 401
    await eventually(lambda: _find(api, admin, action="http.unauthenticated"))


async def test_reading_the_trail_is_audited_and_admin_only(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await _find(api, admin, action="users.login")
    reads = await eventually(lambda: _find(api, admin, action="system.list_audit_events"))
    assert reads[0]["targetType"] == "audit_event"
    for role in ("physician", "radiologist", "imaging_technician", "reception_staff"):
        person = await make_user(api, admin, role)
        assert (await api.get("/audit-events", headers=person.headers)).status_code == 403


async def test_filters_and_paging(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for _ in range(2):
        await api.post("/departments", json={"code": "bad code"}, headers=admin)
    await eventually(lambda: _more_than(api, admin, 2))
    page = (await api.get("/audit-events", params={"limit": "2", "page": "1"}, headers=admin)).json()
    assert len(page["items"]) == 2 and page["total"] >= 2 and page["limit"] == 2
    times = [i["occurredAt"] for i in (await _find(api, admin))]
    assert times == sorted(times, reverse=True)
    r = await api.get("/audit-events", params={"outcome": "nonsense"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "outcome"
    r = await api.get("/audit-events", params={"sort": "action"}, headers=admin)
    assert r.status_code == 400 and r.json()["code"] == "invalid_sort"
    r = await api.get("/audit-events", params={"occurredFrom": "yesterday"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "occurredFrom"
    failures = await _find(api, admin, outcome="conflict,invalid")
    assert all(i["outcome"] in ("conflict", "invalid") for i in failures)


async def _more_than(api: httpx.AsyncClient, admin: dict[str, str], n: int) -> bool:
    return len(await _find(api, admin)) > n


async def test_trail_is_append_only(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        row = await conn.fetchrow("SELECT id FROM system.audit_events LIMIT 1")
        assert row is not None
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE system.audit_events SET action = 'rewritten' WHERE id = $1", row["id"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM system.audit_events WHERE id = $1", row["id"])
    finally:
        await conn.close()


async def test_reads_of_patient_data_are_coalesced(api: httpx.AsyncClient, admin: dict[str, str],
                                                   stack: Stack) -> None:
    """Three reads of one patient by one user within 5 minutes: one entry counting three.
    (Patient routes come with their issue; the audit events they will emit are published here.)"""
    import aio_pika

    patient = uuid.uuid4()
    reader = uuid.uuid4()
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("events")
        for _ in range(3):
            record = PatientsAuditRecorded(
                occurred_at=make_envelope("x", {}, Actor()).occurred_at, action="patients.get_patient",
                outcome=AuditOutcome.SUCCESS, actor_id=reader, actor_role="physician", target_type="patient",
                target_id=str(patient), patient_ids=[patient], coalesce=True,
            )
            envelope = make_envelope(record.TYPE, record, Actor(user_id=reader, role="physician"))
            await exchange.publish(aio_pika.Message(encode(envelope), message_id=str(envelope.message_id)),
                                   routing_key=record.TYPE)
    finally:
        await connection.close()

    async def counted() -> list[dict] | None:
        items = await _find(api, admin, patientId=str(patient), action="patients.get_patient")
        return items if items and items[0]["repeatCount"] == 3 else None

    items = await eventually(counted)
    assert len(items) == 1 and items[0]["actorId"] == str(reader)
