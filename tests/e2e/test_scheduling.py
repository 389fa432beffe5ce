"""Shift templates and room schedules over HTTP against the real stack (users.md §2, §4, §5, §7):
CRUD, template runs, single and bulk writes, copy-week, conflict checks, cancellation rules, lists,
"mine", availability and stats. Schedules are created on future business days in the clinic time
zone (or in the past with allowPast), never relative to the wall clock in a way that could flake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support import EventTap, Person, Stack, make_user, unique

pytestmark = pytest.mark.asyncio
TZ = ZoneInfo("Asia/Ho_Chi_Minh")  # the stack's CLINIC_TIMEZONE (default)
CLINICAL = ("physician", "radiologist", "imaging_technician", "reception_staff")
Json = dict[str, Any]


# ---------------------------------------------------------------- helpers (also used by test_scheduling_duty)


def today() -> date:
    return datetime.now(TZ).date()


def future(days: int = 20) -> date:
    return today() + timedelta(days=days)


def instant(day: date, hhmm: str, plus_days: int = 0) -> datetime:
    """A wall-clock time of a business day in the clinic zone, as an aware UTC instant."""
    return datetime.combine(day + timedelta(days=plus_days), time.fromisoformat(hhmm), tzinfo=TZ).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


GENERIC = {"required", "too_short", "too_long", "out_of_range", "invalid_format", "invalid_enum", "unknown_field"}


def top_code(code: str) -> str:
    """A 422's code: the domain rule's, or validation_failed for generic field errors (README §5)."""
    return "validation_failed" if code in GENERIC else code


def assert_problem(r: httpx.Response, status: int, code: str, field: str | None = None) -> Json:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body
    return body


async def ok(request: Any, status: int = 200) -> Any:
    r = await request
    assert r.status_code == status, r.text
    return r.json() if r.content else None


async def new_department(api: httpx.AsyncClient, admin: dict[str, str]) -> str:
    body = {"code": unique("SC").upper()[:10], "name": "Scheduling test"}
    return (await ok(api.post("/departments", json=body, headers=admin), 201))["id"]


async def new_room(api: httpx.AsyncClient, admin: dict[str, str], dept: str, **fields: Any) -> Json:
    return await ok(api.post("/rooms", json={"code": unique("SR-"), "departmentId": dept, **fields},
                             headers=admin), 201)


async def new_template(api: httpx.AsyncClient, admin: dict[str, str], start: str = "07:00", end: str = "15:00",
                       **fields: Any) -> Json:
    body = {"name": unique("Shift "), "shiftType": "custom", "startTime": start, "endTime": end, **fields}
    return await ok(api.post("/shift-templates", json=body, headers=admin), 201)


async def new_schedule(api: httpx.AsyncClient, admin: dict[str, str], room_id: str, day: date, start: str = "08:00",
                       end: str = "16:00", **fields: Any) -> Json:
    body = {"roomId": room_id, "workDate": day.isoformat(), "startTime": start, "endTime": end, **fields}
    return await ok(api.post("/room-schedules", json=body, headers=admin), 201)


def local_slot(start: datetime, end: datetime) -> dict[str, str]:
    """The workDate/startTime/endTime of a shift between two instants (seconds kept)."""
    a, b = start.astimezone(TZ), end.astimezone(TZ)
    return {"workDate": a.date().isoformat(), "startTime": a.strftime("%H:%M:%S"), "endTime": b.strftime("%H:%M:%S")}


@pytest.fixture(scope="module")
async def dept(api: httpx.AsyncClient, admin: dict[str, str]) -> str:
    return await new_department(api, admin)


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> AsyncIterator[dict[str, Person]]:
    yield {role: await make_user(api, admin, role) for role in CLINICAL}


# ---------------------------------------------------------------- shift templates


async def test_shift_template_crud_and_events(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                              staff: dict[str, Person]) -> None:
    name = unique("Morning ")
    async with EventTap(stack.env["AMQP_URL"], "users.shift_template.*") as tap:
        r = await api.post("/shift-templates", headers=admin, json={
            "name": name, "shiftType": "morning", "startTime": "07:00", "endTime": "11:30",
            "breakStartTime": "09:00", "breakEndTime": "09:15", "description": "early"})
        assert r.status_code == 201, r.text
        t = r.json()
        assert r.headers["location"] == f"/shift-templates/{t['id']}" and r.headers["etag"] == '"1"'
        assert (t["startTime"], t["endTime"], t["breakStartTime"], t["breakEndTime"]) == (
            "07:00:00", "11:30:00", "09:00:00", "09:15:00")
        assert t["overnight"] is False and t["durationMinutes"] == 270 and t["isActive"] is True
        event = await tap.wait_for(lambda e: e["type"] == "users.shift_template.created"
                                   and e["payload"]["shiftTemplateId"] == t["id"])
        assert event["payload"]["name"] == name and event["payload"]["shiftType"] == "morning"

        night = await new_template(api, admin, "22:00", "06:00", shiftType="night",
                                   breakStartTime="02:00", breakEndTime="02:30")
        assert night["overnight"] is True and night["durationMinutes"] == 480

        # name unique case-insensitively among live templates
        r = await api.post("/shift-templates", headers=admin, json={
            "name": name.upper(), "shiftType": "custom", "startTime": "01:00", "endTime": "02:00"})
        assert_problem(r, 409, "already_exists", "name")

        # read by anyone signed in; list filters and sort
        got = await ok(api.get(f"/shift-templates/{t['id']}", headers=staff["reception_staff"].headers))
        assert got["name"] == name
        page = await ok(api.get("/shift-templates", params={"q": name.lower(), "shiftType": "morning"},
                                headers=staff["physician"].headers))
        assert [i["id"] for i in page["items"]] == [t["id"]]
        page = await ok(api.get("/shift-templates", params={"sort": "startTime", "limit": 100}, headers=admin))
        starts = [i["startTime"] for i in page["items"]]
        assert starts == sorted(starts)
        r = await api.get("/shift-templates", params={"sort": "nope"}, headers=admin)
        assert_problem(r, 400, "invalid_sort")

        # change (If-Match), break outside the shift refused
        r = await api.patch(f"/shift-templates/{t['id']}", json={"endTime": "12:00"},
                            headers={**admin, "If-Match": '"9"'})
        assert_problem(r, 412, "version_mismatch")
        r = await api.patch(f"/shift-templates/{t['id']}", json={"breakStartTime": "12:30", "breakEndTime": "12:45"},
                            headers=admin)
        assert_problem(r, 422, "break_outside_shift", "breakStartTime")
        updated = await ok(api.patch(f"/shift-templates/{t['id']}", json={"endTime": "12:00", "isActive": False},
                                     headers={**admin, "If-Match": '"1"'}))
        assert updated["endTime"] == "12:00:00" and updated["version"] == 2 and updated["isActive"] is False
        await tap.wait_for(lambda e: e["type"] == "users.shift_template.updated"
                           and e["payload"]["shiftTemplateId"] == t["id"] and e["payload"]["version"] == 2)

        # duplicate (active copy under a new name), delete, restore
        copy_name = unique("Copy ")
        r = await api.post(f"/shift-templates/{t['id']}/duplicate", json={"name": copy_name}, headers=admin)
        assert r.status_code == 201, r.text
        copy = r.json()
        assert r.headers["location"] == f"/shift-templates/{copy['id']}"
        assert copy["id"] != t["id"] and copy["name"] == copy_name and copy["endTime"] == "12:00:00"
        assert copy["breakStartTime"] == "09:00:00" and copy["version"] == 1
        r = await api.post(f"/shift-templates/{t['id']}/duplicate", json={"name": copy_name}, headers=admin)
        assert_problem(r, 409, "already_exists", "name")

        assert (await api.delete(f"/shift-templates/{copy['id']}", headers=admin)).status_code == 204
        assert (await api.get(f"/shift-templates/{copy['id']}", headers=staff["physician"].headers)).status_code == 404
        page = await ok(api.get("/shift-templates", params={"q": copy_name}, headers=admin))
        assert page["items"] == []
        page = await ok(api.get("/shift-templates", params={"q": copy_name, "includeDeleted": "true"}, headers=admin))
        assert [i["id"] for i in page["items"]] == [copy["id"]]
        restored = await ok(api.post(f"/shift-templates/{copy['id']}/restore", headers=admin))
        assert restored["deletedAt"] is None and restored["version"] == 3
        r = await api.post(f"/shift-templates/{copy['id']}/restore", headers=admin)
        assert_problem(r, 409, "invalid_transition")
        for kind in ("deleted", "restored"):
            await tap.wait_for(lambda e, k=kind: e["type"] == f"users.shift_template.{k}"
                               and e["payload"]["shiftTemplateId"] == copy["id"])


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"startTime": "08:00", "endTime": "08:00"}, "endTime", "invalid_time_range"),
    ({"startTime": "8:00", "endTime": "09:00"}, "startTime", "invalid_format"),
    ({"startTime": "24:00", "endTime": "09:00"}, "startTime", "invalid_format"),
    ({"startTime": "08:00", "endTime": "09:00", "breakStartTime": "08:30"}, "breakEndTime", "required"),
    ({"startTime": "08:00", "endTime": "12:00", "breakStartTime": "11:00", "breakEndTime": "10:00"},
     "breakStartTime", "break_outside_shift"),
    ({"startTime": "22:00", "endTime": "06:00", "breakStartTime": "07:00", "breakEndTime": "07:30"},
     "breakStartTime", "break_outside_shift"),
    ({"startTime": "08:00", "endTime": "09:00", "shiftType": "evening"}, "shiftType", "invalid_enum"),
    ({"startTime": "08:00", "endTime": "09:00", "name": ""}, "name", "too_short"),
    ({"startTime": "08:00", "endTime": "09:00", "colour": "red"}, "colour", "unknown_field"),
])
async def test_shift_template_validation(api: httpx.AsyncClient, admin: dict[str, str], body: Json, field: str,
                                         code: str) -> None:
    full = {"name": unique("Bad "), "shiftType": "custom", **body}
    r = await api.post("/shift-templates", json=full, headers=admin)
    problem = assert_problem(r, 422, top_code(code), field)
    assert problem["errors"][0]["code"] == code


async def test_create_schedules_from_template(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                              stack: Stack) -> None:
    rooms = [await new_room(api, admin, dept) for _ in range(2)]
    closed = await new_room(api, admin, dept, status="maintenance")
    night = await new_template(api, admin, "22:00", "06:00", shiftType="night")
    monday = future(30) - timedelta(days=future(30).weekday())
    # one day of rooms[1] is taken already: that item is skipped with its reason, the rest is created
    taken = await new_schedule(api, admin, rooms[1]["id"], monday + timedelta(days=2), "20:00", "23:00")
    body = {"roomIds": [rooms[0]["id"], rooms[1]["id"], closed["id"]], "dateFrom": monday.isoformat(),
            "dateTo": (monday + timedelta(days=6)).isoformat(), "weekdays": [1, 3, 5]}
    async with EventTap(stack.env["AMQP_URL"], "users.room_schedule.created") as tap:
        result = await ok(api.post(f"/shift-templates/{night['id']}/create-schedules", json=body, headers=admin))
        assert len(result["created"]) == 5 and result["assigned"] == []
        for s in result["created"]:
            assert s["shiftTemplateId"] == night["id"] and s["shiftTemplate"]["name"] == night["name"]
            assert s["overnight"] is True and s["status"] == "scheduled"
            assert date.fromisoformat(s["workDate"]).isoweekday() in (1, 3, 5)
            day = date.fromisoformat(s["workDate"])
            assert parsed(s["startsAt"]) == instant(day, "22:00") and parsed(s["endsAt"]) == instant(day, "06:00", 1)
        reasons = sorted((c["code"], c["roomId"], c["workDate"]) for c in result["conflicts"])
        assert reasons == sorted(
            [("schedule_overlap", rooms[1]["id"], (monday + timedelta(days=2)).isoformat())]
            + [("room_unavailable", closed["id"], (monday + timedelta(days=d)).isoformat()) for d in (0, 2, 4)])
        overlap = next(c for c in result["conflicts"] if c["code"] == "schedule_overlap")
        assert overlap["conflictingScheduleId"] == taken["id"]
        await tap.wait_for(lambda e: e["payload"]["scheduleId"] == result["created"][-1]["id"])

    # a second run creates nothing new: every item is already there
    again = await ok(api.post(f"/shift-templates/{night['id']}/create-schedules", json=body, headers=admin))
    assert again["created"] == [] and {c["code"] for c in again["conflicts"]} == {
        "already_exists", "schedule_overlap", "room_unavailable"}

    r = await api.post(f"/shift-templates/{night['id']}/create-schedules", headers=admin, json={
        **body, "dateTo": (monday + timedelta(days=62)).isoformat()})
    assert_problem(r, 422, "validation_failed", "dateTo")
    r = await api.post(f"/shift-templates/{night['id']}/create-schedules", headers=admin, json={
        **body, "roomIds": [rooms[0]["id"], "00000000-0000-4000-8000-000000000000"]})
    assert_problem(r, 422, "invalid_reference", "roomIds/1")
    r = await api.post("/shift-templates/00000000-0000-4000-8000-000000000000/create-schedules", json=body,
                       headers=admin)
    assert_problem(r, 404, "not_found")
    past = today() - timedelta(days=3)
    result = await ok(api.post(f"/shift-templates/{night['id']}/create-schedules", headers=admin, json={
        "roomIds": [rooms[0]["id"]], "dateFrom": past.isoformat(), "dateTo": past.isoformat()}))
    assert result["created"] == [] and result["conflicts"][0]["code"] == "schedule_in_past"


async def test_apply_template_to_employees(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                           staff: dict[str, Person]) -> None:
    room = await new_room(api, admin, dept, capacity=3)
    other = await new_room(api, admin, dept)
    template = await new_template(api, admin, "07:00", "13:00", shiftType="morning")
    start = future(40)
    # day 2 already has the template's shift (reused), and the technician is busy elsewhere on day 3
    existing = await new_schedule(api, admin, room["id"], start + timedelta(days=1), "07:00", "13:00",
                                  shiftTemplateId=template["id"])
    tech = await make_user(api, admin, "imaging_technician")
    phy = await make_user(api, admin, "physician")
    busy = await new_schedule(api, admin, other["id"], start + timedelta(days=2), "12:00", "14:00",
                              employeeIds=[tech.id])
    body = {"roomId": room["id"], "employeeIds": [phy.id, tech.id], "dateFrom": start.isoformat(),
            "dateTo": (start + timedelta(days=2)).isoformat()}
    result = await ok(api.post(f"/shift-templates/{template['id']}/apply-to-employees", json=body, headers=admin))
    assert len(result["created"]) == 2  # day 1 and day 3; day 2 reused
    assert existing["id"] not in [s["id"] for s in result["created"]]
    pairs = {(a["employeeId"], a["schedule"]["workDate"]) for a in result["assigned"]}
    days = [(start + timedelta(days=d)).isoformat() for d in range(3)]
    assert pairs == {(phy.id, d) for d in days} | {(tech.id, days[0]), (tech.id, days[1])}
    [conflict] = result["conflicts"]
    assert conflict["code"] == "employee_double_booked" and conflict["employeeId"] == tech.id
    assert conflict["workDate"] == days[2] and conflict["conflictingScheduleId"] == busy["id"]
    detail = await ok(api.get(f"/room-schedules/{existing['id']}", headers=staff["physician"].headers))
    assert {a["employeeId"] for a in detail["assignments"]} == {phy.id, tech.id} and detail["assignmentCount"] == 2

    # once more: nothing new, each pair reported as already there
    again = await ok(api.post(f"/shift-templates/{template['id']}/apply-to-employees", json=body, headers=admin))
    assert again["created"] == [] and again["assigned"] == []
    assert sorted(c["code"] for c in again["conflicts"]) == ["already_exists"] * 5 + ["employee_double_booked"]

    admin_id = (await ok(api.get("/auth/me", headers=admin)))["id"]
    r = await api.post(f"/shift-templates/{template['id']}/apply-to-employees", headers=admin,
                       json={**body, "employeeIds": [admin_id]})
    assert_problem(r, 422, "not_assignable", "employeeIds/0")
    r = await api.post(f"/shift-templates/{template['id']}/apply-to-employees", headers=admin,
                       json={**body, "employeeIds": []})
    assert_problem(r, 422, "validation_failed", "employeeIds")
    await ok(api.patch(f"/shift-templates/{template['id']}", json={"isActive": False}, headers=admin))
    r = await api.post(f"/shift-templates/{template['id']}/apply-to-employees", json=body, headers=admin)
    assert_problem(r, 409, "template_inactive")


# ---------------------------------------------------------------- room schedules, one at a time


async def test_create_schedule_times_and_events(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                                stack: Stack) -> None:
    room = await new_room(api, admin, dept)
    day = future(25)
    async with EventTap(stack.env["AMQP_URL"], "users.room_schedule.*") as tap:
        r = await api.post("/room-schedules", headers=admin, json={
            "roomId": room["id"], "workDate": day.isoformat(), "startTime": "20:00", "endTime": "02:00",
            "overtimeHours": 1.5, "notes": "night cover"})
        assert r.status_code == 201, r.text
        s = r.json()
        assert r.headers["location"] == f"/room-schedules/{s['id']}" and r.headers["etag"] == '"1"'
        assert s["overnight"] is True and s["status"] == "scheduled" and s["overtimeHours"] == 1.5
        assert parsed(s["startsAt"]) == instant(day, "20:00") and parsed(s["endsAt"]) == instant(day, "02:00", 1)
        assert s["room"]["code"] == room["code"] and s["assignmentCount"] == 0 and s["actualEndAt"] is None
        event = await tap.wait_for(lambda e: e["payload"].get("scheduleId") == s["id"])
        assert event["type"] == "users.room_schedule.created"
        assert event["payload"] | {} == {**event["payload"], "roomId": room["id"], "workDate": day.isoformat(),
                                         "status": "scheduled", "version": 1}

    # back-to-back is fine; an overlap of the same room is refused, naming the schedule it meets
    await new_schedule(api, admin, room["id"], day + timedelta(days=1), "02:00", "08:00")
    r = await api.post("/room-schedules", headers=admin, json={
        "roomId": room["id"], "workDate": (day + timedelta(days=1)).isoformat(), "startTime": "01:00",
        "endTime": "03:00"})
    problem = assert_problem(r, 409, "schedule_overlap")
    assert {c["conflictingScheduleId"] for c in problem["conflicts"]} >= {s["id"]}

    # the template supplies the times; explicit ones win
    template = await new_template(api, admin, "13:00", "17:00")
    other = await new_room(api, admin, dept)
    from_template = await new_schedule(api, admin, other["id"], day, None, None, shiftTemplateId=template["id"])
    assert (from_template["startTime"], from_template["endTime"]) == ("13:00:00", "17:00:00")
    overridden = await new_schedule(api, admin, other["id"], day, "17:00", "19:30", shiftTemplateId=template["id"])
    assert (overridden["startTime"], overridden["endTime"]) == ("17:00:00", "19:30:00")


@pytest.mark.parametrize(("fields", "status", "code", "field"), [
    ({"startTime": "10:00", "endTime": "10:00"}, 422, "invalid_time_range", "endTime"),
    ({"startTime": "10:00", "endTime": "08:00", "overnight": False}, 422, "end_before_start", "endTime"),
    ({"startTime": "08:00", "endTime": "10:00", "overnight": True}, 422, "not_overnight", "overnight"),
    ({"startTime": "08:00"}, 422, "validation_failed", "endTime"),
    ({"startTime": "08:00", "endTime": "10:00", "overtimeHours": 25}, 422, "validation_failed", "overtimeHours"),
    ({"startTime": "08:00", "endTime": "10:00", "workDate": "2001-01-01"}, 422, "validation_failed", "workDate"),
    ({"startTime": "08:00", "endTime": "10:00", "status": "completed"}, 422, "validation_failed", "status"),
    ({"startTime": "08:00", "endTime": "10:00", "roomId": "00000000-0000-4000-8000-000000000000"},
     422, "invalid_reference", "roomId"),
    ({"startTime": "08:00", "endTime": "10:00", "shiftTemplateId": "00000000-0000-4000-8000-000000000000"},
     422, "invalid_reference", "shiftTemplateId"),
    ({"startTime": "08:00", "endTime": "10:00", "employeeIds": ["00000000-0000-4000-8000-000000000000"]},
     422, "invalid_reference", "employeeIds/0"),
])
async def test_create_schedule_refusals(api: httpx.AsyncClient, admin: dict[str, str], dept: str, fields: Json,
                                        status: int, code: str, field: str) -> None:
    room = await new_room(api, admin, dept)
    body = {"roomId": room["id"], "workDate": future(21).isoformat(), **fields}
    assert_problem(await api.post("/room-schedules", json=body, headers=admin), status, code, field)


async def test_past_schedules_need_allow_past_and_rooms_must_be_usable(api: httpx.AsyncClient,
                                                                     admin: dict[str, str], dept: str) -> None:
    room = await new_room(api, admin, dept)
    yesterday = today() - timedelta(days=1)
    body = {"roomId": room["id"], "workDate": yesterday.isoformat(), "startTime": "08:00", "endTime": "09:00"}
    assert_problem(await api.post("/room-schedules", json=body, headers=admin), 422, "schedule_in_past", "workDate")
    recorded = await ok(api.post("/room-schedules", json={**body, "allowPast": True}, headers=admin), 201)
    assert recorded["workDate"] == yesterday.isoformat()

    for fields in ({"status": "maintenance"}, {"isActive": False}):
        other = await new_room(api, admin, dept)
        await ok(api.patch(f"/rooms/{other['id']}", json=fields, headers=admin))
        r = await api.post("/room-schedules", headers=admin, json={
            "roomId": other["id"], "workDate": future(22).isoformat(), "startTime": "08:00", "endTime": "09:00"})
        assert_problem(r, 409, "room_unavailable", "roomId")


async def test_update_delete_cancel(api: httpx.AsyncClient, admin: dict[str, str], dept: str, stack: Stack,
                                    staff: dict[str, Person]) -> None:
    room, room2 = await new_room(api, admin, dept, capacity=2), await new_room(api, admin, dept)
    day = future(26)
    phy = await make_user(api, admin, "physician")
    s = await new_schedule(api, admin, room["id"], day, "08:00", "12:00", employeeIds=[phy.id])
    blocker = await new_schedule(api, admin, room2["id"], day, "12:00", "14:00")
    async with EventTap(stack.env["AMQP_URL"], "users.room_schedule.*", "users.assignment.*") as tap:
        # moving the shift moves its assignment with it
        r = await api.patch(f"/room-schedules/{s['id']}", json={"startTime": "09:00", "endTime": "13:00",
                                                                 "notes": "moved"},
                            headers={**admin, "If-Match": '"1"'})
        assert r.status_code == 200, r.text
        moved = r.json()
        assert r.headers["etag"] == '"2"' and moved["notes"] == "moved"
        [a] = moved["assignments"]
        assert parsed(a["startsAt"]) == instant(day, "09:00") and parsed(a["endsAt"]) == instant(day, "13:00")
        await tap.wait_for(lambda e: e["type"] == "users.assignment.updated" and e["payload"]["scheduleId"] == s["id"])
        await tap.wait_for(lambda e: e["type"] == "users.room_schedule.updated"
                           and e["payload"]["scheduleId"] == s["id"] and e["payload"]["version"] == 2)
        # into another room's taken slot → 409; status is not patchable; stale If-Match → 412
        r = await api.patch(f"/room-schedules/{s['id']}", json={"roomId": room2["id"]}, headers=admin)
        assert assert_problem(r, 409, "schedule_overlap")["conflicts"][0]["conflictingScheduleId"] == blocker["id"]
        assert_problem(await api.patch(f"/room-schedules/{s['id']}", json={"status": "cancelled"}, headers=admin),
                       422, "use_transition", "status")
        assert_problem(await api.patch(f"/room-schedules/{s['id']}", json={"notes": "x"},
                                       headers={**admin, "If-Match": '"1"'}), 412, "version_mismatch")

        # cancel: before the start only, assignments deactivated, final
        c = await ok(api.post(f"/room-schedules/{s['id']}/cancel", json={"reason": "equipment"}, headers=admin))
        assert c["status"] == "cancelled" and c["cancelReason"] == "equipment" and c["assignmentCount"] == 0
        assert [x["isActive"] for x in c["assignments"]] == [False]
        await tap.wait_for(lambda e: e["type"] == "users.room_schedule.cancelled"
                           and e["payload"]["scheduleId"] == s["id"])
        await tap.wait_for(lambda e: e["type"] == "users.assignment.updated" and e["payload"]["scheduleId"] == s["id"]
                           and e["payload"]["isActive"] is False)
        for verb in ("cancel", "end"):
            assert_problem(await api.post(f"/room-schedules/{s['id']}/{verb}", headers=admin), 409,
                           "invalid_transition")
        assert_problem(await api.patch(f"/room-schedules/{s['id']}", json={"notes": "x"}, headers=admin),
                       409, "invalid_transition")
        assert_problem(await api.delete(f"/room-schedules/{s['id']}", headers=admin), 409, "invalid_transition")
        # the slot is free again once cancelled
        await new_schedule(api, admin, room["id"], day, "09:00", "13:00")
        # still listed for the people who were on it
        mine = await ok(api.get("/room-schedules/mine", params={"dateFrom": day.isoformat(), "dateTo": day.isoformat()},
                                headers=phy.headers))
        assert [(x["id"], x["status"]) for x in mine["items"]] == [(s["id"], "cancelled")]

        # a started shift cannot be cancelled; delete removes a scheduled one and its assignments
        started = await ok(api.post("/room-schedules", headers=admin, json={
            **local_slot(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)),
            "roomId": room2["id"], "allowPast": True}), 201)
        assert_problem(await api.post(f"/room-schedules/{started['id']}/cancel", headers=admin),
                       409, "invalid_transition")
        d = await new_schedule(api, admin, room2["id"], day + timedelta(days=1), employeeIds=[phy.id])
        assert (await api.delete(f"/room-schedules/{d['id']}", headers=admin)).status_code == 204
        assert (await api.get(f"/room-schedules/{d['id']}", headers=admin)).status_code == 404
        await tap.wait_for(lambda e: e["type"] == "users.room_schedule.deleted"
                           and e["payload"]["scheduleId"] == d["id"])
        await tap.wait_for(lambda e: e["type"] == "users.assignment.deleted" and e["payload"]["scheduleId"] == d["id"])
        assert (await api.delete(f"/room-schedules/{d['id']}", headers=admin)).status_code == 404


# ---------------------------------------------------------------- bulk, conflict check, copy-week


async def test_bulk_create_is_all_or_nothing(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                             staff: dict[str, Person]) -> None:
    a, b = await new_room(api, admin, dept), await new_room(api, admin, dept)
    day = future(27)
    tech = await make_user(api, admin, "imaging_technician")
    taken = await new_schedule(api, admin, b["id"], day, "10:00", "12:00")
    items = [
        {"roomId": a["id"], "workDate": day.isoformat(), "startTime": "08:00", "endTime": "12:00",
         "employeeIds": [tech.id]},
        {"roomId": a["id"], "workDate": day.isoformat(), "startTime": "11:00", "endTime": "13:00"},  # item 0
        {"roomId": b["id"], "workDate": day.isoformat(), "startTime": "09:00", "endTime": "11:00",
         "employeeIds": [tech.id]},  # taken, and tech twice at once
        {"roomId": b["id"], "workDate": day.isoformat(), "startTime": "12:00", "endTime": "14:00"},  # fine
    ]
    r = await api.post("/room-schedules/bulk", json={"items": items}, headers=admin)
    problem = assert_problem(r, 409, "schedule_overlap")
    found = sorted((c["index"], c["code"], c.get("conflictingIndex"), c.get("conflictingScheduleId"))
                   for c in problem["conflicts"])
    assert found == [(1, "schedule_overlap", 0, None), (2, "employee_double_booked", 0, None),
                     (2, "schedule_overlap", None, taken["id"])]
    listed = await ok(api.get("/room-schedules", params={"roomId": a["id"]}, headers=admin))
    assert listed["total"] == 0  # nothing was written

    # the conflict check says the same and writes nothing
    report = await ok(api.post("/room-schedules/check-conflicts", json={"items": items}, headers=admin))
    assert report["hasConflicts"] is True
    assert sorted((c["index"], c["code"]) for c in report["conflicts"]) == [
        (1, "schedule_overlap"), (2, "employee_double_booked"), (2, "schedule_overlap")]
    clean = await ok(api.post("/room-schedules/check-conflicts", json={"items": [items[0], items[3]]},
                              headers=admin))
    assert clean == {"hasConflicts": False, "conflicts": []}
    # an existing schedule moved onto itself does not collide with itself
    report = await ok(api.post("/room-schedules/check-conflicts", headers=admin, json={"items": [
        {"id": taken["id"], "roomId": b["id"], "workDate": day.isoformat(), "startTime": "10:30",
         "endTime": "12:30"}]}))
    assert report["hasConflicts"] is False

    created = await ok(api.post("/room-schedules/bulk", json={"items": [items[0], items[3]]}, headers=admin), 201)
    assert [s["roomId"] for s in created["created"]] == [a["id"], b["id"]]
    assert created["created"][0]["assignmentCount"] == 1

    r = await api.post("/room-schedules/bulk", json={"items": [items[3]] * 201}, headers=admin)
    assert_problem(r, 422, "validation_failed", "items")
    r = await api.post("/room-schedules/bulk", headers=admin, json={"items": [
        {**items[3], "startTime": "15:00", "endTime": "15:00"}, {**items[3], "workDate": "2001-01-01"}]})
    problem = assert_problem(r, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["items/0/endTime", "items/1/workDate"]


async def test_bulk_update_and_delete(api: httpx.AsyncClient, admin: dict[str, str], dept: str) -> None:
    room = await new_room(api, admin, dept)
    day = future(28)
    phy = await make_user(api, admin, "physician")
    early = await new_schedule(api, admin, room["id"], day, "08:00", "12:00", employeeIds=[phy.id])
    late = await new_schedule(api, admin, room["id"], day, "12:00", "16:00")
    # the two shifts trade places in one request (each alone would overlap the other)
    swapped = await ok(api.post("/room-schedules/bulk-update", headers=admin, json={"items": [
        {"id": early["id"], "startTime": "12:00", "endTime": "16:00"},
        {"id": late["id"], "startTime": "08:00", "endTime": "12:00", "notes": "swapped"}]}))
    got = {s["id"]: (s["startTime"], s["endTime"], s["version"]) for s in swapped["updated"]}
    assert got == {early["id"]: ("12:00:00", "16:00:00", 2), late["id"]: ("08:00:00", "12:00:00", 2)}
    detail = await ok(api.get(f"/room-schedules/{early['id']}", headers=admin))
    [a] = detail["assignments"]
    assert a["isActive"] is True and parsed(a["startsAt"]) == instant(day, "12:00")

    extra = await new_schedule(api, admin, room["id"], day, "16:00", "18:00")
    r = await api.post("/room-schedules/bulk-update", headers=admin, json={"items": [
        {"id": extra["id"], "startTime": "15:00"}, {"id": late["id"], "notes": "fine"}]})
    problem = assert_problem(r, 409, "schedule_overlap")
    assert [(c["index"], c["conflictingScheduleId"]) for c in problem["conflicts"]] == [(0, early["id"])]
    assert (await ok(api.get(f"/room-schedules/{late['id']}", headers=admin)))["notes"] == "swapped"
    r = await api.post("/room-schedules/bulk-update", headers=admin, json={"items": [
        {"id": "00000000-0000-4000-8000-000000000000", "notes": "x"}]})
    assert_problem(r, 422, "invalid_reference", "items/0/id")

    cancelled = await new_schedule(api, admin, room["id"], day + timedelta(days=1))
    await ok(api.post(f"/room-schedules/{cancelled['id']}/cancel", headers=admin))
    r = await api.post("/room-schedules/bulk-delete", headers=admin,
                       json={"ids": [early["id"], cancelled["id"], late["id"]]})
    problem = assert_problem(r, 409, "invalid_transition")
    assert [(c["index"], c["scheduleId"]) for c in problem["conflicts"]] == [(1, cancelled["id"])]
    assert (await api.get(f"/room-schedules/{early['id']}", headers=admin)).status_code == 200
    r = await api.post("/room-schedules/bulk-delete", headers=admin,
                       json={"ids": [early["id"], "00000000-0000-4000-8000-000000000000"]})
    assert_problem(r, 422, "invalid_reference", "ids/1")
    deleted = await ok(api.post("/room-schedules/bulk-delete", json={"ids": [early["id"], late["id"]]},
                                headers=admin))
    assert deleted == {"deleted": [early["id"], late["id"]]}
    page = await ok(api.get("/employee-room-assignments", params={"employeeId": phy.id}, headers=admin))
    assert page["total"] == 0


async def test_copy_week(api: httpx.AsyncClient, admin: dict[str, str], dept: str) -> None:
    a, b = await new_room(api, admin, dept), await new_room(api, admin, dept)
    source = future(35) - timedelta(days=future(35).weekday())
    target = source + timedelta(days=7)
    phy, rad = await make_user(api, admin, "physician"), await make_user(api, admin, "radiologist")
    s1 = await new_schedule(api, admin, a["id"], source, "08:00", "12:00", employeeIds=[phy.id, rad.id],
                            overtimeHours=0.5, notes="copy me")
    s2 = await new_schedule(api, admin, a["id"], source + timedelta(days=3), "22:00", "06:00", employeeIds=[phy.id])
    s3 = await new_schedule(api, admin, b["id"], source + timedelta(days=6), "09:00", "10:00")
    cancelled = await new_schedule(api, admin, b["id"], source + timedelta(days=1))
    await ok(api.post(f"/room-schedules/{cancelled['id']}/cancel", headers=admin))
    # in the target week: room b's slot is taken, and the radiologist is busy when s1's copy runs
    clash = await new_schedule(api, admin, b["id"], target + timedelta(days=6), "09:30", "11:00")
    await new_schedule(api, admin, b["id"], target, "07:00", "09:00", employeeIds=[rad.id])
    result = await ok(api.post("/room-schedules/copy-week", headers=admin, json={
        "fromWeekStart": source.isoformat(), "toWeekStart": target.isoformat(), "roomIds": [a["id"], b["id"]]}))
    copies = {c["workDate"]: c for c in result["created"]}
    assert set(copies) == {target.isoformat(), (target + timedelta(days=3)).isoformat()}
    first = copies[target.isoformat()]
    assert (first["startTime"], first["endTime"], first["overtimeHours"], first["notes"]) == (
        "08:00:00", "12:00:00", 0.5, "copy me")
    assert copies[(target + timedelta(days=3)).isoformat()]["overnight"] is True
    assert result["assignmentsCreated"] == 2  # phy twice; rad skipped
    skipped = sorted((s["code"], s.get("sourceScheduleId"), s.get("employeeId")) for s in result["skipped"])
    assert skipped == sorted([("schedule_overlap", s3["id"], None), ("employee_double_booked", None, rad.id)])
    assert next(s for s in result["skipped"] if s["code"] == "schedule_overlap")["conflictingScheduleId"] == clash["id"]

    again = await ok(api.post("/room-schedules/copy-week", headers=admin, json={
        "fromWeekStart": source.isoformat(), "toWeekStart": target.isoformat(), "roomIds": [a["id"]],
        "includeAssignments": False}))
    assert again["created"] == [] and {s["code"] for s in again["skipped"]} == {"already_exists"}
    assert {s["sourceScheduleId"] for s in again["skipped"]} == {s1["id"], s2["id"]}
    r = await api.post("/room-schedules/copy-week", headers=admin, json={
        "fromWeekStart": (source + timedelta(days=1)).isoformat(), "toWeekStart": target.isoformat()})
    assert_problem(r, 422, "not_a_monday", "fromWeekStart")
    r = await api.post("/room-schedules/copy-week", headers=admin, json={
        "fromWeekStart": source.isoformat(), "toWeekStart": source.isoformat()})
    assert_problem(r, 422, "same_week", "toWeekStart")


# ---------------------------------------------------------------- reads


async def test_lists_mine_stats_and_availability(api: httpx.AsyncClient, admin: dict[str, str], dept: str,
                                                 staff: dict[str, Person]) -> None:
    other_dept = await new_department(api, admin)
    room = await new_room(api, admin, other_dept, type="ct")
    free = await new_room(api, admin, other_dept, type="ct")
    await new_room(api, admin, other_dept, type="ct", status="maintenance")
    day = future(45)
    phy = await make_user(api, admin, "physician", departmentId=other_dept)
    idle = await make_user(api, admin, "physician", departmentId=other_dept)
    s1 = await new_schedule(api, admin, room["id"], day, "08:00", "12:00", employeeIds=[phy.id], overtimeHours=1)
    s2 = await new_schedule(api, admin, room["id"], day + timedelta(days=1), "06:00", "08:30")
    s3 = await new_schedule(api, admin, room["id"], day + timedelta(days=2), "20:00", "04:00", employeeIds=[phy.id])
    await ok(api.post(f"/room-schedules/{s2['id']}/cancel", headers=admin))

    page = await ok(api.get("/room-schedules", params={"departmentId": other_dept},
                            headers=staff["radiologist"].headers))
    assert [s["id"] for s in page["items"]] == [s1["id"], s2["id"], s3["id"]]  # default sort startsAt
    page = await ok(api.get("/room-schedules", params={"roomId": room["id"], "sort": "-startsAt",
                                                       "status": "scheduled,in_progress"}, headers=admin))
    assert [s["id"] for s in page["items"]] == [s3["id"], s1["id"]]
    page = await ok(api.get("/room-schedules", params={"employeeId": phy.id, "dateFrom": day.isoformat(),
                                                       "dateTo": day.isoformat()}, headers=admin))
    assert [s["id"] for s in page["items"]] == [s1["id"]]
    page = await ok(api.get("/room-schedules", params={"employeeId": "me"}, headers=phy.headers))
    assert {s["id"] for s in page["items"]} == {s1["id"], s3["id"]}
    assert_problem(await api.get("/room-schedules", params={"sort": "roomId"}, headers=admin), 400, "invalid_sort")
    assert_problem(await api.get("/room-schedules", params={"status": "done"}, headers=admin), 400, "invalid_filter")

    mine = await ok(api.get("/room-schedules/mine", params={"dateFrom": day.isoformat(),
                                                            "dateTo": (day + timedelta(days=6)).isoformat()},
                            headers=phy.headers))
    assert [s["id"] for s in mine["items"]] == [s1["id"], s3["id"]]
    assert (await ok(api.get("/room-schedules/mine", headers=idle.headers)))["items"] == []
    detail = await ok(api.get(f"/room-schedules/{s1['id']}", headers=idle.headers))
    assert detail["assignments"][0]["employee"] == {"id": phy.id, "displayName": f"Test {phy.body['lastName']}",
                                                    "role": "physician"}
    assert (await api.get(f"/room-schedules/{s1['id']}")).status_code == 401
    assert_problem(await api.get("/room-schedules/00000000-0000-4000-8000-000000000000", headers=admin),
                   404, "not_found")

    stats = await ok(api.get("/room-schedules/stats", params={"roomId": room["id"]}, headers=admin))
    assert stats["total"] == 3 and stats["byStatus"] == {"scheduled": 2, "in_progress": 0, "completed": 0,
                                                         "cancelled": 1}
    assert stats["scheduledHours"] == 12.0 and stats["overtimeHours"] == 1.0 and stats["workedHours"] == 0.0
    own = await ok(api.get("/room-schedules/stats", params={"employeeId": "me"}, headers=phy.headers))
    assert own["total"] == 2 and own["scheduledHours"] == 12.0
    assert (await ok(api.get("/room-schedules/stats", headers=phy.headers)))["total"] == 2  # defaults to self
    assert_problem(await api.get("/room-schedules/stats", params={"employeeId": idle.id}, headers=phy.headers),
                   403, "not_owner")

    window = {"date": day.isoformat(), "startTime": "11:00", "endTime": "13:00", "departmentId": other_dept}
    rooms = await ok(api.get("/room-schedules/available-rooms", params=window,
                             headers=staff["reception_staff"].headers))
    assert [r["id"] for r in rooms["items"]] == [free["id"]]  # room busy, the third in maintenance
    later = {**window, "startTime": "12:00", "endTime": "13:00", "type": "ct"}
    rooms = await ok(api.get("/room-schedules/available-rooms", params=later, headers=admin))
    assert {r["id"] for r in rooms["items"]} == {room["id"], free["id"]}  # back-to-back is free
    absolute = {"startsAt": iso(instant(day, "09:00")), "endsAt": iso(instant(day, "10:00")),
                "departmentId": other_dept}
    people = await ok(api.get("/room-schedules/available-employees", params=absolute, headers=admin))
    assert {p["id"] for p in people["items"]} == {idle.id}
    people = await ok(api.get("/room-schedules/available-employees", headers=admin, params={
        "date": (day + timedelta(days=3)).isoformat(), "startTime": "01:00", "endTime": "02:00",
        "departmentId": other_dept, "role": "physician"}))
    assert {p["id"] for p in people["items"]} == {idle.id}  # phy is on the overnight shift of day + 2
    assert_problem(await api.get("/room-schedules/available-rooms", params={"date": day.isoformat()},
                                 headers=admin), 400, "invalid_filter")
    assert_problem(await api.get("/room-schedules/available-employees", headers=admin, params={
        "startsAt": iso(instant(day, "10:00")), "endsAt": iso(instant(day, "09:00"))}), 400, "invalid_filter")


async def test_parallel_template_runs_never_double_book(api: httpx.AsyncClient, admin: dict[str, str],
                                                        dept: str) -> None:
    """Two runs of the same template over the same rooms at once: the database lets one shift per
    room and day through; the other run reports each as skipped."""
    rooms = [await new_room(api, admin, dept) for _ in range(3)]
    template = await new_template(api, admin, "09:00", "17:00")
    start = future(50)
    body = {"roomIds": [r["id"] for r in rooms], "dateFrom": start.isoformat(),
            "dateTo": (start + timedelta(days=9)).isoformat()}
    results = await asyncio.gather(*[
        ok(api.post(f"/shift-templates/{template['id']}/create-schedules", json=body, headers=admin))
        for _ in range(3)])
    assert sum(len(r["created"]) for r in results) == 30
    assert sum(len(r["conflicts"]) for r in results) == 60
    page = await ok(api.get("/room-schedules", params={"shiftTemplateId": template["id"], "limit": 100},
                            headers=admin))
    assert page["total"] == 30
