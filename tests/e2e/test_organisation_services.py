"""`/services` and `/service-rooms` over HTTP against the real stack (users.md §2, §4, §7): conflicts,
references, soft delete and restore, stats and events on the broker. Rooms: test_organisation.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.test_organisation import CLINICAL, assert_problem, department, ids, link, ok, room, service
from tests.support import EventTap, Person, Stack, make_user, unique

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
async def dept(api: httpx.AsyncClient, admin: dict[str, str]) -> str:
    return (await department(api, admin))["id"]


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> AsyncIterator[dict[str, Person]]:
    yield {role: await make_user(api, admin, role) for role in CLINICAL[:2]}


# ---------------------------------------------------------------- services


async def test_services_crud_conflicts_events_and_stats(api: httpx.AsyncClient, admin: dict[str, str],
                                                        stack: Stack, staff: dict[str, Person], dept: str) -> None:
    tag = unique()
    async with EventTap(stack.env["AMQP_URL"], "users.service.*") as tap:
        r = await api.post("/services", json={"code": f"CT-{tag}", "name": f"Chụp CT {tag}", "description": "x"},
                           headers=admin)
        assert r.status_code == 201, r.text
        s = r.json()
        assert r.headers["location"] == f"/services/{s['id']}" and r.headers["etag"] == '"1"'
        event = await tap.wait_for(lambda e: e["type"] == "users.service.created")
        assert event["payload"] == {"serviceId": s["id"], "code": f"CT-{tag}", "name": f"Chụp CT {tag}",
                                    "isActive": True, "version": 1}
        assert_problem(await api.post("/services", json={"code": f"CT-{tag}", "name": "Other"}, headers=admin),
                       409, "already_exists", "code")
        assert_problem(await api.post("/services", json={"code": unique("X"), "name": f"CHỤP ct {tag}".upper()},
                                      headers=admin), 409, "already_exists", "name")
        for body, field, code in (({"code": "", "name": "n"}, "code", "too_short"),
                                  ({"code": "c" * 21, "name": "n"}, "code", "too_long"),
                                  ({"code": "c"}, "name", "required"),
                                  ({"code": "c", "name": "n" * 101}, "name", "too_long"),
                                  ({"code": "c", "name": "n", "price": 1}, "price", "unknown_field")):
            problem = assert_problem(await api.post("/services", json=body, headers=admin), 422, "validation_failed",
                                     field)
            assert problem["errors"][0]["code"] == code

        path = f"/services/{s['id']}"
        assert_problem(await api.patch(path, json={"name": "Renamed"}, headers={**admin, "If-Match": '"3"'}), 412,
                       "version_mismatch")
        patched = await ok(api.patch(path, json={"name": f"CT scan {tag}", "description": None},
                                     headers={**admin, "If-Match": '"1"'}))
        assert patched["version"] == 2 and patched["description"] is None
        event = await tap.wait_for(lambda e: e["type"] == "users.service.updated")
        assert event["payload"]["name"] == f"CT scan {tag}" and event["payload"]["version"] == 2

        reader = staff["radiologist"].headers
        other = await service(api, admin, code=f"MR-{tag}", name=f"MRI {tag}")
        await ok(api.patch(f"/services/{other['id']}", json={"isActive": False}, headers=admin))
        assert await ids(api, reader, f"/services?q={tag}&sort=code") == [s["id"], other["id"]]
        found = await ids(api, reader, "/services?q=ct scan&limit=100")
        assert s["id"] in found and other["id"] not in found
        assert await ids(api, reader, f"/services?q={tag}&isActive=false") == [other["id"]]
        assert await ids(api, reader, f"/services?q={tag}&sort=-name") == [other["id"], s["id"]]
        assert (await ok(api.get(path, headers=reader)))["code"] == f"CT-{tag}"
        assert_problem(await api.get("/services?sort=description", headers=reader), 400, "invalid_sort")

        # stats: live rooms per service, as GET /rooms?serviceId= counts them
        r1, r2 = await room(api, admin, dept), await room(api, admin, dept)
        sr = await link(api, admin, s["id"], r1["id"])
        await link(api, admin, s["id"], r2["id"])
        stats = await ok(api.get("/services/stats", headers=admin))
        assert stats["roomsByService"][f"CT-{tag}"] == 2 == (await ok(api.get(f"/rooms?serviceId={s['id']}",
                                                                                headers=admin)))["total"]
        assert stats["roomsByService"][f"MR-{tag}"] == 0 and stats["inactive"] >= 1

        body = assert_problem(await api.delete(path, headers=admin), 409, "in_use")
        assert body["serviceRooms"] == 2
        for item in await ids(api, admin, f"/service-rooms?serviceId={s['id']}"):
            await ok(api.delete(f"/service-rooms/{item}", headers=admin), 204)
        await ok(api.delete(path, headers={**admin, "If-Match": '"2"'}), 204)
        event = await tap.wait_for(lambda e: e["type"] == "users.service.deleted")
        assert event["payload"]["version"] == 3
        assert_problem(await api.get(path, headers=reader), 404, "not_found")
        assert_problem(await api.post("/service-rooms", json={"serviceId": s["id"], "roomId": r1["id"]},
                                      headers=admin), 422, "invalid_reference", "serviceId")
        assert_problem(await api.post(f"/service-rooms/{sr['id']}/restore", headers=admin), 409,
                       "reference_deleted", "serviceId")
        twin = await service(api, admin, code=f"CT-{tag}", name=f"ct SCAN {tag}")
        assert_problem(await api.post(f"{path}/restore", headers=admin), 409, "already_exists")
        await ok(api.delete(f"/services/{twin['id']}", headers=admin), 204)
        restored = await ok(api.post(f"{path}/restore", headers={**admin, "If-Match": '"3"'}))
        assert restored["version"] == 4 and restored["deletedAt"] is None
        event = await tap.wait_for(lambda e: e["type"] == "users.service.restored")
        assert event["payload"]["version"] == 4


# ---------------------------------------------------------------- service-room links


async def test_service_rooms(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                             staff: dict[str, Person]) -> None:
    d1, d2 = await department(api, admin), await department(api, admin)
    s1, s2 = await service(api, admin), await service(api, admin)
    r1, r2 = await room(api, admin, d1["id"], type="ct"), await room(api, admin, d2["id"])
    async with EventTap(stack.env["AMQP_URL"], "users.service_room.*") as tap:
        r = await api.post("/service-rooms", json={"serviceId": s1["id"], "roomId": r1["id"], "notes": "mornings"},
                           headers=admin)
        assert r.status_code == 201, r.text
        a = r.json()
        assert r.headers["location"] == f"/service-rooms/{a['id']}" and r.headers["etag"] == '"1"'
        assert a["service"] == {"id": s1["id"], "code": s1["code"], "name": s1["name"], "isActive": True,
                                "deletedAt": None}
        assert a["room"] == {"id": r1["id"], "code": r1["code"], "type": "ct", "departmentId": d1["id"], "floor": None,
                             "status": "available", "isActive": True, "deletedAt": None}
        assert (a["isActive"], a["notes"], a["version"]) == (True, "mornings", 1)
        event = await tap.wait_for(lambda e: e["type"] == "users.service_room.created")
        assert event["payload"] == {"serviceRoomId": a["id"], "serviceId": s1["id"], "roomId": r1["id"],
                                    "isActive": True, "version": 1}
        assert_problem(await api.post("/service-rooms", json={"serviceId": s1["id"], "roomId": r1["id"]},
                                      headers=admin), 409, "already_exists", "roomId")
        b = await link(api, admin, s1["id"], r2["id"])
        c = await link(api, admin, s2["id"], r1["id"], isActive=False)

        reader = staff["physician"].headers
        assert await ids(api, reader, f"/service-rooms?serviceId={s1['id']}") == [b["id"], a["id"]]
        assert await ids(api, reader, f"/service-rooms?roomId={r1['id']}&sort=createdAt") == [a["id"], c["id"]]
        assert await ids(api, reader, f"/service-rooms?departmentId={d2['id']}") == [b["id"]]
        assert await ids(api, reader, f"/service-rooms?roomId={r1['id']}&isActive=false") == [c["id"]]
        assert await ids(api, reader, f"/service-rooms?roomId={r1['id']}&sort=serviceCode") == sorted(
            [a["id"], c["id"]], key=lambda i: s1["code"] if i == a["id"] else s2["code"])
        assert (await ok(api.get(f"/service-rooms/{a['id']}", headers=reader))) == a
        assert_problem(await api.get("/service-rooms?roomId=nope", headers=reader), 400, "invalid_filter")

        path = f"/service-rooms/{a['id']}"
        assert_problem(await api.patch(path, json={"roomId": r2["id"]}, headers=admin), 422, "validation_failed",
                       "roomId")
        assert_problem(await api.patch(path, json={"isActive": False}, headers={**admin, "If-Match": '"2"'}), 412,
                       "version_mismatch")
        off = await ok(api.patch(path, json={"isActive": False, "notes": None}, headers={**admin, "If-Match": '"1"'}))
        assert (off["isActive"], off["notes"], off["version"]) == (False, None, 2)
        event = await tap.wait_for(lambda e: e["type"] == "users.service_room.updated")
        assert event["payload"]["isActive"] is False and event["payload"]["version"] == 2
        await ok(api.patch(f"/services/{s1['id']}", json={"isActive": False}, headers=admin))
        assert_problem(await api.patch(path, json={"isActive": True}, headers=admin), 422, "inactive_reference",
                       "serviceId")
        await ok(api.patch(f"/services/{s1['id']}", json={"isActive": True}, headers=admin))
        assert (await ok(api.patch(path, json={"isActive": True}, headers=admin)))["version"] == 3

        await ok(api.delete(path, headers={**admin, "If-Match": '"3"'}), 204)
        event = await tap.wait_for(lambda e: e["type"] == "users.service_room.deleted")
        assert event["payload"]["version"] == 4
        assert_problem(await api.get(path, headers=reader), 404, "not_found")
        again = await link(api, admin, s1["id"], r1["id"])  # the pair is free among live links
        assert_problem(await api.post(f"{path}/restore", headers=admin), 409, "already_exists", "roomId")
        await ok(api.delete(f"/service-rooms/{again['id']}", headers=admin), 204)
        restored = await ok(api.post(f"{path}/restore", headers={**admin, "If-Match": '"4"'}))
        assert restored["version"] == 5 and restored["deletedAt"] is None
        await tap.wait_for(lambda e: e["type"] == "users.service_room.restored" and e["payload"]["version"] == 5)

    # both ends must be live and active
    inactive_room = await room(api, admin, d1["id"])
    await ok(api.patch(f"/rooms/{inactive_room['id']}", json={"isActive": False}, headers=admin))
    off_service = await service(api, admin)
    await ok(api.patch(f"/services/{off_service['id']}", json={"isActive": False}, headers=admin))
    deleted_room = await room(api, admin, d1["id"])
    await ok(api.delete(f"/rooms/{deleted_room['id']}", headers=admin), 204)
    for body, code, field in (
        ({"serviceId": s2["id"], "roomId": inactive_room["id"]}, "inactive_reference", "roomId"),
        ({"serviceId": off_service["id"], "roomId": r2["id"]}, "inactive_reference", "serviceId"),
        ({"serviceId": s2["id"], "roomId": deleted_room["id"]}, "invalid_reference", "roomId"),
        ({"serviceId": str(uuid.uuid4()), "roomId": r2["id"]}, "invalid_reference", "serviceId"),
        ({"serviceId": s2["id"]}, "validation_failed", "roomId"),
    ):
        assert_problem(await api.post("/service-rooms", json=body, headers=admin), 422, code, field)
