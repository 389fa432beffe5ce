"""Employee room assignments and who is on duty, over HTTP and the bus against the real stack
(users.md §2, §4, §5, §6, §8): assignment rules, all-or-nothing bulk, 20 concurrent assignments of one
employee, the on-duty query across midnight, at shift boundaries and with cancelled schedules, the
`advance_room_schedules` timer run by several worker replicas, room occupancy, and who may call what."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest

from contracts.envelope import Actor
from contracts.rpc import RpcClient
from contracts.scheduling import AdvanceRoomSchedules, ListOnDuty
from tests.e2e.test_scheduling import (
    CLINICAL,
    assert_problem,
    future,
    instant,
    iso,
    local_slot,
    new_department,
    new_room,
    new_schedule,
    ok,
    parsed,
)
from tests.support import EventTap, Person, Stack, make_user

pytestmark = pytest.mark.asyncio
NOWHERE = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
async def dept(api: httpx.AsyncClient, admin: dict[str, str]) -> str:
    return await new_department(api, admin)


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> AsyncIterator[dict[str, Person]]:
    yield {role: await make_user(api, admin, role) for role in CLINICAL}


@pytest.fixture(scope="module")
def timers(stack: Stack) -> Any:
    """Two more users workers whose `advance_room_schedules` runs every second: three replicas
    compete for the job's advisory lock, and each due step must still happen exactly once."""
    names = ("users-timer-1", "users-timer-2")
    for name in names:
        stack.start(name, ["worker", "users"], extra_env={"ROOM_SCHEDULE_JOB_INTERVAL": "1s"})
    yield
    for name in names:
        stack.stop(name)


async def on_duty(api: httpx.AsyncClient, headers: dict[str, str], room_id: str, at: datetime | None = None,
                  **params: str) -> list[str]:
    query = {**params, **({"at": iso(at)} if at else {})}
    page = await ok(api.get(f"/rooms/{room_id}/on-duty", params=query, headers=headers))
    return sorted(item["id"] for item in page["items"])


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- assignments


async def test_assignment_rules_and_lifecycle(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                              stack: Stack, staff: dict[str, Person]) -> None:
    room = await new_room(api, admin, dept, capacity=2)
    day = future(60)
    s = await new_schedule(api, admin, room["id"], day, "08:00", "12:00")
    phy = await make_user(api, admin, "physician")
    async with EventTap(stack.env["AMQP_URL"], "users.assignment.*") as tap:
        r = await api.post("/employee-room-assignments", json={"roomScheduleId": s["id"], "employeeId": phy.id},
                           headers=admin)
        assert r.status_code == 201, r.text
        a = r.json()
        assert r.headers["location"] == f"/employee-room-assignments/{a['id']}" and r.headers["etag"] == '"1"'
        assert (a["roomId"], a["isActive"], a["employee"]["role"], a["room"]["code"]) == (
            room["id"], True, "physician", room["code"])
        assert a["startsAt"] == s["startsAt"] and a["endsAt"] == s["endsAt"] and a["schedule"]["id"] == s["id"]
        event = await tap.wait_for(lambda e: e["type"] == "users.assignment.created"
                                   and e["payload"]["assignmentId"] == a["id"])
        assert event["payload"] == {"assignmentId": a["id"], "scheduleId": s["id"], "employeeId": phy.id,
                                    "roomId": room["id"], "startsAt": s["startsAt"], "endsAt": s["endsAt"],
                                    "isActive": True, "version": 1}

        body = {"roomScheduleId": s["id"], "employeeId": phy.id}
        assert_problem(await api.post("/employee-room-assignments", json=body, headers=admin), 409,
                       "already_exists", "employeeId")
        admin_id = (await ok(api.get("/auth/me", headers=admin)))["id"]
        for employee, code in ((admin_id, "not_assignable"), (NOWHERE, "invalid_reference")):
            r = await api.post("/employee-room-assignments", headers=admin, json={**body, "employeeId": employee})
            assert_problem(r, 422, code, "employeeId")
        assert_problem(await api.post("/employee-room-assignments", headers=admin,
                                      json={**body, "roomScheduleId": NOWHERE}),
                       422, "invalid_reference", "roomScheduleId")
        disabled = await make_user(api, admin, "radiologist")
        await ok(api.post(f"/users/{disabled.id}/disable", json={}, headers=admin))
        assert_problem(await api.post("/employee-room-assignments", headers=admin,
                                      json={**body, "employeeId": disabled.id}), 422, "inactive_reference")
        gone = await new_schedule(api, admin, room["id"], day + timedelta(days=1))
        await ok(api.post(f"/room-schedules/{gone['id']}/cancel", headers=admin))
        assert_problem(await api.post("/employee-room-assignments", headers=admin,
                                      json={**body, "roomScheduleId": gone["id"]}), 422, "schedule_not_open")

        # reads: anyone signed in; filters; `me`
        got = await ok(api.get(f"/employee-room-assignments/{a['id']}", headers=staff["reception_staff"].headers))
        assert got["id"] == a["id"]
        for params in ({"roomScheduleId": s["id"]}, {"roomId": room["id"]}, {"employeeId": phy.id},
                       {"date": day.isoformat(), "roomId": room["id"]}, {"isActive": "true", "roomId": room["id"]}):
            page = await ok(api.get("/employee-room-assignments", params=params, headers=admin))
            assert [i["id"] for i in page["items"]] == [a["id"]], params
        page = await ok(api.get("/employee-room-assignments", params={"employeeId": "me"}, headers=phy.headers))
        assert [i["id"] for i in page["items"]] == [a["id"]]
        page = await ok(api.get("/employee-room-assignments", params={"isActive": "false", "roomId": room["id"]},
                                headers=admin))
        assert page["items"] == []
        assert_problem(await api.get(f"/employee-room-assignments/{NOWHERE}", headers=admin), 404, "not_found")

        # deactivate, then someone else's overlapping slot blocks the reactivation
        off = await ok(api.patch(f"/employee-room-assignments/{a['id']}", json={"isActive": False},
                                 headers={**admin, "If-Match": '"1"'}))
        assert off["isActive"] is False and off["version"] == 2
        await tap.wait_for(lambda e: e["type"] == "users.assignment.updated" and e["payload"]["assignmentId"] == a["id"]
                           and e["payload"]["isActive"] is False)
        other_room = await new_room(api, admin, dept)
        await new_schedule(api, admin, other_room["id"], day, "11:00", "13:00", employeeIds=[phy.id])
        assert_problem(await api.patch(f"/employee-room-assignments/{a['id']}", json={"isActive": True},
                                       headers=admin), 409, "employee_double_booked")
        assert_problem(await api.patch(f"/employee-room-assignments/{a['id']}", json={"isActive": True},
                                       headers={**admin, "If-Match": '"1"'}), 412, "version_mismatch")

        # delete before the start removes it
        assert (await api.delete(f"/employee-room-assignments/{a['id']}", headers=admin)).status_code == 204
        assert (await api.get(f"/employee-room-assignments/{a['id']}", headers=admin)).status_code == 404
        await tap.wait_for(lambda e: e["type"] == "users.assignment.deleted"
                           and e["payload"]["assignmentId"] == a["id"])

    # on a started shift, delete only deactivates (the record stays)
    running = await ok(api.post("/room-schedules", headers=admin, json={
        **local_slot(now() - timedelta(hours=1), now() + timedelta(hours=1)), "roomId": other_room["id"],
        "allowPast": True, "employeeIds": [staff["radiologist"].id]}), 201)
    [kept] = (await ok(api.get(f"/room-schedules/{running['id']}", headers=admin)))["assignments"]
    assert (await api.delete(f"/employee-room-assignments/{kept['id']}", headers=admin)).status_code == 204
    assert (await ok(api.get(f"/employee-room-assignments/{kept['id']}", headers=admin)))["isActive"] is False


async def test_bulk_assign_is_all_or_nothing(api: httpx.AsyncClient, admin: dict[str, str], dept: str) -> None:
    a, b = await new_room(api, admin, dept), await new_room(api, admin, dept)
    day = future(61)
    s1 = await new_schedule(api, admin, a["id"], day, "08:00", "12:00")
    s2 = await new_schedule(api, admin, b["id"], day, "10:00", "14:00")
    s3 = await new_schedule(api, admin, b["id"], day, "14:00", "18:00")
    phy, tech = await make_user(api, admin, "physician"), await make_user(api, admin, "imaging_technician")
    items = [{"roomScheduleId": s1["id"], "employeeId": phy.id}, {"roomScheduleId": s2["id"], "employeeId": phy.id},
             {"roomScheduleId": s3["id"], "employeeId": phy.id}, {"roomScheduleId": s2["id"], "employeeId": tech.id}]
    problem = assert_problem(await api.post("/employee-room-assignments/bulk", json={"items": items},
                                            headers=admin), 409, "employee_double_booked")
    assert [(c["index"], c["conflictingIndex"], c["employeeId"]) for c in problem["conflicts"]] == [(1, 0, phy.id)]
    page = await ok(api.get("/employee-room-assignments", params={"roomId": b["id"]}, headers=admin))
    assert page["total"] == 0  # nothing was written
    problem = assert_problem(await api.post("/employee-room-assignments/bulk", headers=admin, json={
        "items": [items[0], {"roomScheduleId": NOWHERE, "employeeId": phy.id}]}), 422, "invalid_reference")
    assert problem["field"] == "items/1/roomScheduleId"

    created = await ok(api.post("/employee-room-assignments/bulk", json={"items": [items[0], items[2], items[3]]},
                                headers=admin), 201)
    assert [(x["roomScheduleId"], x["employeeId"]) for x in created["created"]] == [
        (s1["id"], phy.id), (s3["id"], phy.id), (s2["id"], tech.id)]
    problem = assert_problem(await api.post("/employee-room-assignments/bulk", json={"items": [items[1], items[3]]},
                                            headers=admin), 409, "employee_double_booked")
    assert sorted((c["index"], c["code"]) for c in problem["conflicts"]) == [
        (0, "employee_double_booked"), (1, "already_exists")]


async def test_twenty_parallel_assignments_leave_exactly_one(api: httpx.AsyncClient, admin: dict[str, str],
                                                              dept: str) -> None:
    day = future(62)
    rooms = await asyncio.gather(*[new_room(api, admin, dept) for _ in range(20)])
    schedules = await asyncio.gather(*[
        new_schedule(api, admin, r["id"], day, f"08:{i:02d}", f"12:{i:02d}") for i, r in enumerate(rooms)])
    person = await make_user(api, admin, "imaging_technician")
    replies = await asyncio.gather(*[
        api.post("/employee-room-assignments", json={"roomScheduleId": s["id"], "employeeId": person.id},
                 headers=admin) for s in schedules])
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] + [409] * 19, [r.text for r in replies if r.status_code not in (201, 409)]
    assert {r.json()["code"] for r in replies if r.status_code == 409} == {"employee_double_booked"}
    page = await ok(api.get("/employee-room-assignments", params={"employeeId": person.id, "isActive": "true"},
                            headers=admin))
    assert page["total"] == 1


# ---------------------------------------------------------------- on duty


async def test_on_duty_across_midnight_at_boundaries_and_by_role(api: httpx.AsyncClient, admin: dict[str, str],
                                                                 dept: str, stack: Stack,
                                                                 staff: dict[str, Person]) -> None:
    room = await new_room(api, admin, dept, capacity=3)
    day = future(63)
    phy, tech, rad = (await make_user(api, admin, "physician"), await make_user(api, admin, "imaging_technician"),
                      await make_user(api, admin, "radiologist"))
    night = await new_schedule(api, admin, room["id"], day, "22:00", "06:00", employeeIds=[phy.id, tech.id])
    await new_schedule(api, admin, room["id"], day + timedelta(days=1), "06:00", "14:00", employeeIds=[rad.id])
    viewer = staff["reception_staff"].headers
    both = sorted([phy.id, tech.id])
    expected = [
        (instant(day, "21:59:59"), []),
        (instant(day, "22:00"), both),  # starts at startsAt
        (instant(day, "23:59:59"), both),
        (instant(day, "00:00", 1), both),  # across midnight
        (instant(day, "05:59:59", 1), both),
        (instant(day, "06:00", 1), [rad.id]),  # endsAt excluded; the next shift starts
        (instant(day, "13:59:59", 1), [rad.id]),
        (instant(day, "14:00", 1), []),
    ]
    for moment, who in expected:
        assert await on_duty(api, viewer, room["id"], moment) == who, moment
    assert await on_duty(api, viewer, room["id"], instant(day, "23:00"), role="physician") == [phy.id]
    assert await on_duty(api, viewer, room["id"], instant(day, "23:00"),
                         role="physician,imaging_technician") == both
    assert await on_duty(api, viewer, room["id"], instant(day, "23:00"), role="radiologist") == []
    page = await ok(api.get(f"/rooms/{room['id']}/on-duty", params={"at": iso(instant(day, "23:00")),
                                                                    "role": "physician"}, headers=viewer))
    [item] = page["items"]
    assert (item["id"], item["role"], item["username"], item["isActive"]) == (phy.id, "physician",
                                                                             phy.body["username"], True)
    assert item["schedule"]["id"] == night["id"] and item["schedule"]["overnight"] is True
    assert item["assignment"]["employeeId"] == phy.id and item["assignment"]["roomScheduleId"] == night["id"]
    # an offset in `at` names the same instant
    offset = instant(day, "23:30").astimezone(timezone(timedelta(hours=-3))).isoformat()
    page = await ok(api.get(f"/rooms/{room['id']}/on-duty", params={"at": offset}, headers=viewer))
    assert sorted(i["id"] for i in page["items"]) == both
    assert_problem(await api.get(f"/rooms/{room['id']}/on-duty", params={"at": "2030-01-01T00:00:00"},
                                 headers=viewer), 400, "invalid_filter")
    assert_problem(await api.get(f"/rooms/{NOWHERE}/on-duty", headers=viewer), 404, "not_found")

    # the bus query other domains use (users.md §6)
    bus = RpcClient(stack.env["AMQP_URL"], name="scheduling-test")
    await bus.start()
    try:
        actor = Actor(system="patients")
        raw = await bus.call("users.list_on_duty", ListOnDuty(room_id=uuid.UUID(room["id"]),
                                                              at=instant(day, "00:30", 1)), actor)
        refs = msgspec.json.decode(bytes(raw))
        assert sorted(r["id"] for r in refs) == both and {r["role"] for r in refs} == {"physician",
                                                                                       "imaging_technician"}
        assert set(refs[0]) == {"id", "displayName", "role"}
        query = ListOnDuty(room_id=uuid.UUID(room["id"]), at=instant(day, "06:00", 1), roles=["radiologist"])
        raw = await bus.call("users.list_on_duty", query, actor)
        assert [r["id"] for r in msgspec.json.decode(bytes(raw))] == [rad.id]
        reply = await bus.call_raw("users.list_on_duty", ListOnDuty(room_id=uuid.uuid4()), actor)
        assert reply.error is not None and reply.error.code == "not_found"
    finally:
        await bus.close()


async def test_on_duty_ignores_cancelled_inactive_and_disabled(api: httpx.AsyncClient, admin: dict[str, str],
                                                               dept: str, staff: dict[str, Person]) -> None:
    room = await new_room(api, admin, dept, capacity=3)
    day = future(64)
    phy, tech = await make_user(api, admin, "physician"), await make_user(api, admin, "imaging_technician")
    s = await new_schedule(api, admin, room["id"], day, "08:00", "16:00", employeeIds=[phy.id, tech.id])
    noon = instant(day, "12:00")
    viewer = staff["physician"].headers
    assert await on_duty(api, viewer, room["id"], noon) == sorted([phy.id, tech.id])
    await ok(api.post(f"/users/{tech.id}/disable", json={"reason": "leave"}, headers=admin))
    assert await on_duty(api, viewer, room["id"], noon) == [phy.id]
    [a] = [x for x in (await ok(api.get(f"/room-schedules/{s['id']}", headers=admin)))["assignments"]
           if x["employeeId"] == phy.id]
    await ok(api.patch(f"/employee-room-assignments/{a['id']}", json={"isActive": False}, headers=admin))
    assert await on_duty(api, viewer, room["id"], noon) == []
    await ok(api.patch(f"/employee-room-assignments/{a['id']}", json={"isActive": True}, headers=admin))
    assert await on_duty(api, viewer, room["id"], noon) == [phy.id]
    await ok(api.post(f"/room-schedules/{s['id']}/cancel", json={"reason": "closed"}, headers=admin))
    assert await on_duty(api, viewer, room["id"], noon) == []
    # a new schedule in the freed slot puts someone on duty again
    rad = await make_user(api, admin, "radiologist")
    await new_schedule(api, admin, room["id"], day, "11:00", "13:00", employeeIds=[rad.id])
    assert await on_duty(api, viewer, room["id"], noon) == [rad.id]


# ---------------------------------------------------------------- the timer and room occupancy


async def test_timer_moves_schedules_once_and_keeps_rooms_occupancy(api: httpx.AsyncClient, admin: dict[str, str],
                                                                    dept: str, stack: Stack, timers: Any) -> None:
    room, busy_room, short_room = (await new_room(api, admin, dept), await new_room(api, admin, dept),
                                   await new_room(api, admin, dept))
    person, other = await make_user(api, admin, "imaging_technician"), await make_user(api, admin, "physician")
    keys = ("users.room_schedule.*", "users.room.updated")
    async with EventTap(stack.env["AMQP_URL"], *keys) as tap:
        # both ends passed unseen: two steps in one run, two events
        past = await ok(api.post("/room-schedules", headers=admin, json={
            **local_slot(now() - timedelta(hours=3), now() - timedelta(hours=2)), "roomId": room["id"],
            "allowPast": True}), 201)
        # running now, with someone on it: the room is occupied at once (capacity 1)
        running = await ok(api.post("/room-schedules", headers=admin, json={
            **local_slot(now() - timedelta(hours=1), now() + timedelta(hours=2)), "roomId": busy_room["id"],
            "allowPast": True, "employeeIds": [person.id]}), 201)
        occupied = await tap.wait_for(lambda e: e["type"] == "users.room.updated"
                                      and e["payload"]["roomId"] == busy_room["id"])
        assert (occupied["payload"]["onDutyCount"], occupied["payload"]["status"]) == (1, "occupied")
        # ends in a few seconds: the timer completes it and frees the room
        short = await ok(api.post("/room-schedules", headers=admin, json={
            **local_slot(now() - timedelta(minutes=30), now() + timedelta(seconds=4)), "roomId": short_room["id"],
            "allowPast": True, "employeeIds": [other.id]}), 201)

        for schedule in (past, running, short):
            started = await tap.wait_for(lambda e, s=schedule: e["type"] == "users.room_schedule.started"
                                         and e["payload"]["scheduleId"] == s["id"], timeout=30)
            assert (started["payload"]["status"], started["payload"]["version"]) == ("in_progress", 2)
            assert started["actor"] == {"system": "advance_room_schedules"}
        for schedule in (past, short):
            done = await tap.wait_for(lambda e, s=schedule: e["type"] == "users.room_schedule.completed"
                                      and e["payload"]["scheduleId"] == s["id"], timeout=30)
            assert (done["payload"]["status"], done["payload"]["version"]) == ("completed", 3)
        freed = await tap.wait_for(lambda e: e["type"] == "users.room.updated"
                                   and e["payload"]["roomId"] == short_room["id"]
                                   and e["payload"]["onDutyCount"] == 0, timeout=30)
        assert freed["payload"]["status"] == "available"

        current = await ok(api.get("/employee-room-assignments/current", headers=person.headers))
        assert [(c["roomScheduleId"], c["room"]["id"], c["schedule"]["status"]) for c in current] == [
            (running["id"], busy_room["id"], "in_progress")]
        assert await ok(api.get("/employee-room-assignments/current", headers=other.headers)) == []
        assert await on_duty(api, admin, busy_room["id"]) == [person.id]  # `at` defaults to now
        room_view = await ok(api.get(f"/rooms/{busy_room['id']}", headers=admin))
        assert (room_view["onDutyCount"], room_view["status"]) == (1, "occupied")

        # an early end: completed at `at`, the assignment ends then too, the room is free
        end_at = now() - timedelta(minutes=5)
        ended = await ok(api.post(f"/room-schedules/{running['id']}/end", json={"at": iso(end_at)}, headers=admin))
        assert ended["status"] == "completed" and parsed(ended["actualEndAt"]) == end_at
        assert parsed(ended["assignments"][0]["endsAt"]) == end_at
        await tap.wait_for(lambda e: e["type"] == "users.room_schedule.completed"
                           and e["payload"]["scheduleId"] == running["id"])
        await tap.wait_for(lambda e: e["type"] == "users.room.updated" and e["payload"]["roomId"] == busy_room["id"]
                           and e["payload"]["onDutyCount"] == 0)
        assert await ok(api.get("/employee-room-assignments/current", headers=person.headers)) == []
        assert_problem(await api.post(f"/room-schedules/{running['id']}/end", headers=admin), 409,
                       "invalid_transition")
        # the person is free for another room right after the early end
        await ok(api.post("/room-schedules", headers=admin, json={
            **local_slot(now() - timedelta(minutes=1), now() + timedelta(hours=1)), "roomId": room["id"],
            "allowPast": True, "employeeIds": [person.id]}), 201)

        # several replicas ran the timer all along: still exactly one event per step and schedule
        await asyncio.sleep(2.5)
        await tap.settle()
        for schedule in (past, running, short):
            steps = [e["type"] for e in tap.events if e["payload"].get("scheduleId") == schedule["id"]
                     and e["type"] in ("users.room_schedule.started", "users.room_schedule.completed")]
            assert steps == ["users.room_schedule.started", "users.room_schedule.completed"], (schedule["id"], steps)
    for schedule in (past, short):
        got = await ok(api.get(f"/room-schedules/{schedule['id']}", headers=admin))
        assert (got["status"], got["version"]) == ("completed", 3)

    # the same run as a command on the bus (an operator's tool): it waits for the lock, then finds nothing due
    bus = RpcClient(stack.env["AMQP_URL"], name="scheduling-timer-test")
    await bus.start()
    try:
        result = msgspec.json.decode(bytes(await bus.call("users.advance_room_schedules", AdvanceRoomSchedules(),
                                                          Actor(system="ops"))))
        assert set(result) == {"started", "completed", "roomsUpdated"}
        assert all(isinstance(v, int) and v >= 0 for v in result.values())
    finally:
        await bus.close()


# ---------------------------------------------------------------- who may call what

ADM, ALL = {"system_admin"}, None
ROUTES: list[tuple[str, str, set[str] | None]] = [
    ("GET", "/shift-templates", ALL),
    ("GET", "/shift-templates/{id}", ALL),
    ("POST", "/shift-templates", ADM),
    ("PATCH", "/shift-templates/{id}", ADM),
    ("DELETE", "/shift-templates/{id}", ADM),
    ("POST", "/shift-templates/{id}/restore", ADM),
    ("POST", "/shift-templates/{id}/duplicate", ADM),
    ("POST", "/shift-templates/{id}/create-schedules", ADM),
    ("POST", "/shift-templates/{id}/apply-to-employees", ADM),
    ("GET", "/room-schedules", ALL),
    ("GET", "/room-schedules/mine", ALL),
    ("GET", "/room-schedules/available-rooms", {"system_admin", "reception_staff"}),
    ("GET", "/room-schedules/available-employees", ADM),
    ("GET", "/room-schedules/stats", ALL),
    ("GET", "/room-schedules/{id}", ALL),
    ("POST", "/room-schedules", ADM),
    ("POST", "/room-schedules/bulk", ADM),
    ("POST", "/room-schedules/bulk-update", ADM),
    ("POST", "/room-schedules/bulk-delete", ADM),
    ("POST", "/room-schedules/check-conflicts", ADM),
    ("POST", "/room-schedules/copy-week", ADM),
    ("PATCH", "/room-schedules/{id}", ADM),
    ("DELETE", "/room-schedules/{id}", ADM),
    ("POST", "/room-schedules/{id}/cancel", ADM),
    ("POST", "/room-schedules/{id}/end", ADM),
    ("GET", "/employee-room-assignments", ALL),
    ("GET", "/employee-room-assignments/current", ALL),
    ("GET", "/employee-room-assignments/{id}", ALL),
    ("POST", "/employee-room-assignments", ADM),
    ("POST", "/employee-room-assignments/bulk", ADM),
    ("PATCH", "/employee-room-assignments/{id}", ADM),
    ("DELETE", "/employee-room-assignments/{id}", ADM),
    ("GET", "/rooms/{id}/on-duty", ALL),
]


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_who_may_call_each_route(api: httpx.AsyncClient, staff: dict[str, Person], method: str, path: str,
                                       allowed: set[str] | None) -> None:
    url = path.replace("{id}", NOWHERE)
    body = {} if method in ("POST", "PATCH") else None
    r = await api.request(method, url, json=body)
    assert_problem(r, 401, "unauthenticated")
    for role, person in staff.items():
        r = await api.request(method, url, json=body, headers=person.headers)
        if allowed is None or role in allowed:
            assert r.status_code not in (401, 403), (role, r.text)
        else:
            assert_problem(r, 403, "forbidden")


async def test_route_table_covers_every_scheduling_route() -> None:
    from edge.routes.scheduling import ROUTES as HANDLERS

    declared = {(m, p) for m, p, _ in ROUTES}
    for handler in HANDLERS:
        path = next(iter(handler.paths))
        for method in handler.http_methods:
            normalised = path
            for name in ("template_id", "schedule_id", "assignment_id", "room_id"):
                normalised = normalised.replace(f"{{{name}:uuid}}", "{id}")
            assert (method, normalised) in declared, (method, path)
    assert len(declared) == sum(len(h.http_methods) for h in HANDLERS)
