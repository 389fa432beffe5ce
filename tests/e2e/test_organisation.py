"""`/rooms` over HTTP against the real stack (users.md §2, §4, §7) and their events on the broker, who may
call each organisation route, and the bus queries `users.get_room` / `users.get_service_room`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from contracts.envelope import Actor
from contracts.organisation import GetRoom, GetServiceRoom
from contracts.rpc import RpcClient
from tests.support import EventTap, Person, Stack, make_user, unique

pytestmark = pytest.mark.asyncio
CLINICAL = ("physician", "radiologist", "imaging_technician", "reception_staff")
Json = dict[str, Any]


def assert_problem(r: httpx.Response, status: int, code: str, field: str | None = None) -> Json:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body
    return body


async def ok(r: Any, status: int = 200) -> Json:
    r = await r
    assert r.status_code == status, r.text
    return r.json() if r.content else {}


async def department(api: httpx.AsyncClient, admin: dict[str, str], **fields: Any) -> Json:
    body = {"code": unique("R").upper()[:10], "name": "Organisation test", **fields}
    return await ok(api.post("/departments", json=body, headers=admin), 201)


async def room(api: httpx.AsyncClient, admin: dict[str, str], dept: str, **fields: Any) -> Json:
    return await ok(api.post("/rooms", json={"code": unique("RM-"), "departmentId": dept, **fields},
                             headers=admin), 201)


async def service(api: httpx.AsyncClient, admin: dict[str, str], **fields: Any) -> Json:
    body = {"code": unique("S-"), "name": unique("Service "), **fields}
    return await ok(api.post("/services", json=body, headers=admin), 201)


async def link(api: httpx.AsyncClient, admin: dict[str, str], service_id: str, room_id: str, **fields: Any) -> Json:
    body = {"serviceId": service_id, "roomId": room_id, **fields}
    return await ok(api.post("/service-rooms", json=body, headers=admin), 201)


async def ids(api: httpx.AsyncClient, headers: dict[str, str], path: str) -> list[str]:
    page = await ok(api.get(path, headers=headers))
    return [item["id"] for item in page["items"]]


@pytest.fixture(scope="module")
async def dept(api: httpx.AsyncClient, admin: dict[str, str]) -> str:
    return (await department(api, admin))["id"]


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> AsyncIterator[dict[str, Person]]:
    yield {role: await make_user(api, admin, role) for role in CLINICAL}


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        yield conn
    finally:
        await conn.close()


# ---------------------------------------------------------------- rooms


async def test_room_lifecycle_and_events(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                         dept: str) -> None:
    async with EventTap(stack.env["AMQP_URL"], "users.room.*") as tap:
        code = unique("CT-")
        r = await api.post("/rooms", json={"code": code, "departmentId": dept, "type": "ct", "floor": -2,
                                           "capacity": 3, "pricePerDay": 1500000.5, "amenities": ["tv", "wifi"],
                                           "description": "Phòng chụp CT", "notes": "near lift"}, headers=admin)
        assert r.status_code == 201, r.text
        created = r.json()
        rid = created["id"]
        assert r.headers["location"] == f"/rooms/{rid}" and r.headers["etag"] == '"1"'
        assert created["department"]["id"] == dept and created["departmentId"] == dept
        assert (created["type"], created["floor"], created["capacity"], created["pricePerDay"]) == ("ct", -2, 3,
                                                                                                       "1500000.50")
        assert created["status"] == "available" and created["onDutyCount"] == 0 and created["isActive"] is True
        assert created["amenities"] == ["tv", "wifi"] and created["version"] == 1 and created["deletedAt"] is None
        event = await tap.wait_for(lambda e: e["type"] == "users.room.created" and e["payload"]["roomId"] == rid)
        assert event["payload"] == {"roomId": rid, "code": code, "type": "ct", "departmentId": dept,
                                    "status": "available", "capacity": 3, "onDutyCount": 0, "isActive": True,
                                    "version": 1}
        r = await api.get(f"/rooms/{rid}", headers=admin)
        assert r.json() == created and r.headers["etag"] == '"1"'

        path = f"/rooms/{rid}"
        assert_problem(await api.patch(path, json={"status": "maintenance"}, headers={**admin, "If-Match": '"7"'}),
                       412, "version_mismatch")
        r = await api.patch(path, json={"status": "maintenance", "floor": None, "pricePerDay": "12.30"},
                            headers={**admin, "If-Match": '"1"'})
        patched = r.json()
        assert r.status_code == 200 and r.headers["etag"] == '"2"'
        assert (patched["status"], patched["floor"], patched["pricePerDay"], patched["version"]) == (
            "maintenance", None, "12.30", 2)
        event = await tap.wait_for(lambda e: e["type"] == "users.room.updated" and e["payload"]["roomId"] == rid)
        assert event["payload"]["status"] == "maintenance" and event["payload"]["version"] == 2
        assert (await ok(api.patch(path, json={"floor": None}, headers=admin)))["version"] == 2  # no change
        assert_problem(await api.patch(path, json={"status": "occupied"}, headers=admin), 422, "validation_failed",
                       "status")
        assert_problem(await api.patch(path, json={"code": None}, headers=admin), 422, "validation_failed", "code")
        assert_problem(await api.patch(path, json={"amenities": ["tv", "tv"]}, headers=admin), 422,
                       "validation_failed", "amenities/1")
        for price in ("sNaN", "-0.01", "1.001"):
            assert_problem(await api.patch(path, json={"pricePerDay": price}, headers=admin), 422,
                           "validation_failed", "pricePerDay")
        other = await room(api, admin, dept)
        assert_problem(await api.patch(path, json={"code": other["code"]}, headers=admin), 409, "already_exists",
                       "code")
        assert_problem(await api.patch(path, json={"departmentId": str(uuid.uuid4())}, headers=admin), 422,
                       "invalid_reference", "departmentId")
        moved = await department(api, admin)
        patched = await ok(api.patch(path, json={"departmentId": moved["id"], "status": "available"}, headers=admin))
        assert patched["department"]["code"] == moved["code"] and patched["status"] == "available"
        assert_problem(await api.patch(f"/rooms/{uuid.uuid4()}", json={"floor": 1}, headers=admin), 404, "not_found")


@pytest.mark.parametrize(("fields", "field", "code"), [
    ({"code": ""}, "code", "too_short"),
    ({"code": "x" * 21}, "code", "too_long"),
    ({"code": " padded "}, "code", "invalid_format"),
    ({"code": None}, "code", "required"),
    ({"departmentId": None}, "departmentId", "required"),
    ({"departmentId": "nope"}, "departmentId", "invalid_format"),
    ({"type": "X-RAY"}, "type", "invalid_enum"),
    ({"floor": -6}, "floor", "out_of_range"),
    ({"floor": 201}, "floor", "out_of_range"),
    ({"capacity": 0}, "capacity", "out_of_range"),
    ({"capacity": 101}, "capacity", "out_of_range"),
    ({"pricePerDay": -1}, "pricePerDay", "out_of_range"),
    ({"pricePerDay": "100000000"}, "pricePerDay", "out_of_range"),
    ({"pricePerDay": "1.234"}, "pricePerDay", "invalid_format"),
    ({"pricePerDay": "NaN"}, "pricePerDay", "invalid_format"),
    ({"pricePerDay": "sNaN"}, "pricePerDay", "invalid_format"),
    ({"pricePerDay": "-Infinity"}, "pricePerDay", "invalid_format"),
    ({"pricePerDay": "cheap"}, "pricePerDay", "invalid_format"),
    ({"status": "occupied"}, "status", "invalid_enum"),
    ({"amenities": ["jacuzzi"]}, "amenities/0", "invalid_enum"),
    ({"amenities": ["wifi", "tv", "wifi"]}, "amenities/2", "duplicate"),
    ({"hasTv": True}, "hasTv", "unknown_field"),
    ({"description": "x" * 10_001}, "description", "too_long"),
])
async def test_room_validation_names_the_field(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                               fields: Json, field: str, code: str) -> None:
    body = {k: v for k, v in {"code": unique("V-"), "departmentId": dept, **fields}.items() if v is not None}
    r = await api.post("/rooms", json=body, headers=admin)
    problem = assert_problem(r, 422, "validation_failed", field)
    assert problem["errors"][0]["field"] == field and problem["errors"][0]["code"] == code


async def test_room_department_must_be_live_and_active(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert_problem(await api.post("/rooms", json={"code": unique("X-"), "departmentId": str(uuid.uuid4())},
                                  headers=admin), 422, "invalid_reference", "departmentId")
    inactive = await department(api, admin)
    await ok(api.patch(f"/departments/{inactive['id']}", json={"isActive": False}, headers=admin))
    assert_problem(await api.post("/rooms", json={"code": unique("X-"), "departmentId": inactive["id"]},
                                  headers=admin), 422, "inactive_reference", "departmentId")
    gone = await department(api, admin)
    await ok(api.delete(f"/departments/{gone['id']}", headers=admin), 204)
    assert_problem(await api.post("/rooms", json={"code": unique("X-"), "departmentId": gone["id"]},
                                  headers=admin), 422, "invalid_reference", "departmentId")


async def test_room_lists_filters_derived_status_and_stats(api: httpx.AsyncClient, admin: dict[str, str],
                                                           staff: dict[str, Person], db: asyncpg.Connection) -> None:
    before = await ok(api.get("/rooms/stats", headers=admin))
    d = await department(api, admin)
    tag = unique()
    a = await room(api, admin, d["id"], code=f"A-{tag}", type="ct", floor=1, description="Chụp cắt lớp")
    b = await room(api, admin, d["id"], code=f"B-{tag}", type="mri", floor=3, status="maintenance")
    c = await room(api, admin, d["id"], code=f"C-{tag}", type="x_ray", floor=2, capacity=2)
    e = await room(api, admin, d["id"], code=f"E-{tag}", type="x_ray", floor=0)
    await ok(api.patch(f"/rooms/{e['id']}", json={"isActive": False}, headers=admin))
    # the scheduling side keeps on_duty_count; here it is set directly: C at capacity, B busy but in maintenance
    await db.execute("UPDATE users.rooms SET on_duty_count = 2 WHERE id = ANY($1::uuid[])", [c["id"], b["id"]])
    await db.execute("UPDATE users.rooms SET on_duty_count = 1 WHERE id = $1::uuid", a["id"])  # 1 of 3: available
    await ok(api.patch(f"/rooms/{a['id']}", json={"capacity": 3}, headers=admin))
    reader = staff["reception_staff"].headers
    base = f"/rooms?departmentId={d['id']}"

    assert await ids(api, reader, base) == [e["id"], c["id"], b["id"], a["id"]]  # newest first
    assert await ids(api, reader, f"{base}&status=occupied") == [c["id"]]
    assert await ids(api, reader, f"{base}&status=maintenance") == [b["id"]]
    assert await ids(api, reader, f"{base}&status=available&sort=code") == [a["id"], e["id"]]
    assert await ids(api, reader, f"{base}&status=occupied,maintenance&sort=code") == [b["id"], c["id"]]
    assert await ids(api, reader, f"{base}&type=ct,mri&sort=-code") == [b["id"], a["id"]]
    assert await ids(api, reader, f"{base}&isActive=false") == [e["id"]]
    assert await ids(api, reader, f"{base}&sort=floor") == [e["id"], a["id"], c["id"], b["id"]]
    assert await ids(api, reader, f"{base}&sort=-type,code") == [c["id"], e["id"], b["id"], a["id"]]
    assert await ids(api, reader, f"{base}&sort=createdAt") == [a["id"], b["id"], c["id"], e["id"]]
    assert c["id"] in await ids(api, reader, f"{base}&q=c-{tag.upper()}")  # code (with look-alikes by similarity)
    for q in ("CHUP CAT", "cắt lớp", "chup cat lop"):  # description, case- and accent-insensitive
        assert await ids(api, reader, f"{base}&q={q}") == [a["id"]], q
    assert await ids(api, reader, f"{base}&q=%25") == []  # a LIKE wildcard is just a character
    page = await ok(api.get(f"{base}&sort=code&limit=1&page=2", headers=reader))
    assert [i["id"] for i in page["items"]] == [b["id"]] and page["total"] == 4 and page["limit"] == 1
    listed = (await ok(api.get(f"{base}&status=occupied", headers=reader)))["items"][0]
    assert listed["status"] == "occupied" and "onDutyCount" not in listed
    detail = await ok(api.get(f"/rooms/{c['id']}", headers=reader))
    assert detail["status"] == "occupied" and detail["onDutyCount"] == 2
    assert (await ok(api.get(f"/rooms/{b['id']}", headers=reader)))["status"] == "maintenance"

    r = await api.get("/rooms?sort=price", headers=reader)
    assert set(assert_problem(r, 400, "invalid_sort", "sort")["allowed"]) == {"code", "floor", "type", "createdAt"}
    for query in ("status=busy", "type=X-RAY", "departmentId=x", "isActive=maybe", "serviceId=1"):
        assert_problem(await api.get(f"/rooms?{query}", headers=reader), 400, "invalid_filter")

    # serviceId: rooms offering it through a live, active link
    s = await service(api, admin)
    await link(api, admin, s["id"], a["id"])
    await link(api, admin, s["id"], b["id"], isActive=False)
    gone = await link(api, admin, s["id"], c["id"])
    await ok(api.delete(f"/service-rooms/{gone['id']}", headers=admin), 204)
    assert await ids(api, reader, f"/rooms?serviceId={s['id']}") == [a["id"]]

    after = await ok(api.get("/rooms/stats", headers=admin))
    assert after["byDepartment"][d["code"]] == 4
    delta = {k: after["byStatus"][k] - before["byStatus"][k] for k in before["byStatus"]}
    assert delta == {"available": 2, "occupied": 1, "maintenance": 1}
    assert {k: after["byType"][k] - before["byType"][k] for k in after["byType"] if k in ("ct", "mri", "x_ray")} == {
        "ct": 1, "mri": 1, "x_ray": 2}
    assert set(after["byType"]) == {"ct", "mri", "x_ray", "ultrasound", "respiratory", "general", "wc"}
    assert (after["total"] - before["total"], after["inactive"] - before["inactive"]) == (4, 1)


async def test_room_delete_restore_and_department_guard(api: httpx.AsyncClient, admin: dict[str, str],
                                                        stack: Stack, staff: dict[str, Person],
                                                        db: asyncpg.Connection) -> None:
    d = await department(api, admin)
    r1 = await room(api, admin, d["id"])
    path = f"/rooms/{r1['id']}"
    assert (await ok(api.get(f"/departments/{d['id']}", headers=admin)))["roomCount"] == 1
    assert_problem(await api.delete(f"/departments/{d['id']}", headers=admin), 409, "in_use")

    s = await service(api, admin)
    sr = await link(api, admin, s["id"], r1["id"], isActive=False)
    body = assert_problem(await api.delete(path, headers=admin), 409, "in_use")
    assert body["serviceRooms"] == 1
    await ok(api.delete(f"/service-rooms/{sr['id']}", headers=admin), 204)

    now = datetime.now(UTC)
    schedule = await db.fetchval(
        "INSERT INTO users.room_schedules (room_id, work_date, start_time, end_time, starts_at, ends_at) "
        "VALUES ($1::uuid, $2, $3, $4, $5, $6) RETURNING id",
        r1["id"], (now + timedelta(days=3)).date(), (now + timedelta(days=3)).time(),
        (now + timedelta(days=3, hours=4)).time(), now + timedelta(days=3), now + timedelta(days=3, hours=4))
    await db.execute(  # a finished schedule does not hold the room
        "INSERT INTO users.room_schedules (room_id, work_date, start_time, end_time, starts_at, ends_at, status) "
        "VALUES ($1::uuid, $2, $3, $4, $5, $6, 'completed')", r1["id"], (now - timedelta(days=3)).date(),
        (now - timedelta(days=3)).time(), (now - timedelta(days=3, hours=-4)).time(), now - timedelta(days=3),
        now - timedelta(days=3, hours=-4))
    assert assert_problem(await api.delete(path, headers=admin), 409, "in_use")["schedules"] == 1
    await db.execute("UPDATE users.room_schedules SET status = 'cancelled' WHERE id = $1", schedule)

    version = (await ok(api.get(path, headers=admin)))["version"]
    async with EventTap(stack.env["AMQP_URL"], "users.room.*") as tap:
        assert_problem(await api.delete(path, headers={**admin, "If-Match": f'"{version + 1}"'}), 412,
                       "version_mismatch")
        await ok(api.delete(path, headers={**admin, "If-Match": f'"{version}"'}), 204)
        event = await tap.wait_for(lambda e: e["type"] == "users.room.deleted" and e["payload"]["roomId"] == r1["id"])
        assert event["payload"]["version"] == version + 1
        assert_problem(await api.get(path, headers=admin), 404, "not_found")
        assert_problem(await api.delete(path, headers=admin), 404, "not_found")
        assert await ids(api, admin, f"/rooms?departmentId={d['id']}") == []
        deleted = (await ok(api.get(f"/rooms?departmentId={d['id']}&includeDeleted=true", headers=admin)))["items"]
        assert [i["id"] for i in deleted] == [r1["id"]] and deleted[0]["deletedAt"] is not None
        assert_problem(await api.get("/rooms?includeDeleted=true", headers=staff["physician"].headers), 400,
                       "forbidden_filter", "includeDeleted")
        assert (await ok(api.get(f"/departments/{d['id']}", headers=admin)))["roomCount"] == 0

        twin = await room(api, admin, d["id"], code=r1["code"])  # the code is free among live rooms
        assert_problem(await api.post(f"{path}/restore", headers=admin), 409, "already_exists", "code")
        await ok(api.delete(f"/rooms/{twin['id']}", headers=admin), 204)
        assert_problem(await api.post(f"{path}/restore", headers={**admin, "If-Match": '"1"'}), 412,
                       "version_mismatch")
        restored = await ok(api.post(f"{path}/restore", headers={**admin, "If-Match": f'"{version + 1}"'}))
        assert restored["deletedAt"] is None and restored["version"] == version + 2
        event = await tap.wait_for(lambda e: e["type"] == "users.room.restored" and e["payload"]["roomId"] == r1["id"])
        assert event["payload"]["version"] == version + 2
        assert_problem(await api.post(f"{path}/restore", headers=admin), 409, "invalid_transition")

    # a room cannot come back into a deleted department
    await ok(api.delete(path, headers=admin), 204)
    await ok(api.delete(f"/departments/{d['id']}", headers=admin), 204)
    assert_problem(await api.post(f"{path}/restore", headers=admin), 409, "reference_deleted", "departmentId")


# ---------------------------------------------------------------- bus queries


async def test_bus_queries_for_other_domains(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                             dept: str) -> None:
    r = await room(api, admin, dept, type="ultrasound", capacity=2)
    s = await service(api, admin)
    sr = await link(api, admin, s["id"], r["id"])
    await ok(api.patch(f"/rooms/{r['id']}", json={"status": "maintenance"}, headers=admin))
    bus = RpcClient(stack.env["AMQP_URL"], name="organisation-test")
    await bus.start()
    actor = Actor(system="patients")
    try:
        got = msgspec_decode(await bus.call("users.get_room", GetRoom(id=uuid.UUID(r["id"])), actor))
        assert (got["id"], got["status"], got["isActive"], got["onDutyCount"], got["capacity"]) == (
            r["id"], "maintenance", True, 0, 2)
        got = msgspec_decode(await bus.call("users.get_service_room", GetServiceRoom(id=uuid.UUID(sr["id"])), actor))
        assert (got["serviceId"], got["roomId"], got["isActive"], got["room"]["status"]) == (
            s["id"], r["id"], True, "maintenance")
        assert got["room"]["isActive"] is True and got["service"]["isActive"] is True
        for name, payload in (("users.get_room", GetRoom(id=uuid.uuid4())),
                              ("users.get_service_room", GetServiceRoom(id=uuid.uuid4()))):
            reply = await bus.call_raw(name, payload, actor)
            assert reply.error is not None and (reply.error.status, reply.error.code) == (404, "not_found")
    finally:
        await bus.close()


def msgspec_decode(raw: Any) -> Json:
    return msgspec.json.decode(bytes(raw))


# ---------------------------------------------------------------- who may call


def _admin_routes(rid: str, sid: str, lid: str) -> list[tuple[str, str, Json | None]]:
    routes: list[tuple[str, str, Json | None]] = [
        ("GET", "/rooms/stats", None), ("GET", "/services/stats", None), ("GET", "/departments/stats", None),
        ("POST", "/rooms", {"code": unique("H-"), "departmentId": str(uuid.uuid4())}),
        ("POST", "/services", {"code": unique("H-"), "name": unique("H ")}),
        ("POST", "/service-rooms", {"serviceId": sid, "roomId": rid}),
    ]
    for path, ident, patch in (("/rooms", rid, {"floor": 9}), ("/services", sid, {"name": unique("H ")}),
                               ("/service-rooms", lid, {"notes": "hacked"})):
        routes += [("PATCH", f"{path}/{ident}", patch), ("DELETE", f"{path}/{ident}", None),
                   ("POST", f"{path}/{ident}/restore", None)]
    return routes


def _staff_routes(rid: str, sid: str, lid: str) -> list[str]:
    return ["/rooms", f"/rooms/{rid}", "/services", f"/services/{sid}", "/service-rooms", f"/service-rooms/{lid}"]


@pytest.mark.parametrize("role", CLINICAL)
async def test_writes_and_stats_refuse_other_roles(api: httpx.AsyncClient, admin: dict[str, str],
                                                   staff: dict[str, Person], dept: str, role: str) -> None:
    person = staff[role]
    r, s = await room(api, admin, dept), await service(api, admin)
    sr = await link(api, admin, s["id"], r["id"])
    for method, path, body in _admin_routes(r["id"], s["id"], sr["id"]):
        assert_problem(await api.request(method, path, json=body, headers=person.headers), 403, "forbidden")
    for path in _staff_routes(r["id"], s["id"], sr["id"]):
        assert (await api.get(path, headers=person.headers)).status_code == 200, path
    for path, item in ((f"/rooms/{r['id']}", r), (f"/services/{s['id']}", s), (f"/service-rooms/{sr['id']}", sr)):
        assert (await ok(api.get(path, headers=admin)))["version"] == item["version"] == 1


async def test_routes_need_a_token(api: httpx.AsyncClient) -> None:
    rid, sid, lid = (str(uuid.uuid4()) for _ in range(3))
    calls = [*_admin_routes(rid, sid, lid), *(("GET", p, None) for p in _staff_routes(rid, sid, lid))]
    for method, path, body in calls:
        assert_problem(await api.request(method, path, json=body), 401, "unauthenticated")
        assert_problem(await api.request(method, path, json=body, headers={"Authorization": "Bearer nope"}), 401,
                       "unauthenticated")
