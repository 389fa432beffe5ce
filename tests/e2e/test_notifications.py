"""Notifications: an encounter notifies exactly the staff on duty in its room, live over the relay;
each user sees and changes only their own; announcements; security notices."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aio_pika
import httpx
import pytest
from redis.asyncio import Redis

from contracts.settings import Settings
from tests.sse import open_sse
from tests.support import EventTap, Person, Stack, eventually, login, make_user, unique


@pytest.fixture(scope="module")
async def relay(stack: Stack) -> Any:
    async with httpx.AsyncClient(base_url=stack.relay_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def ward(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack) -> dict[str, Any]:
    """A room with a service; one physician on duty there now, one off duty."""
    department = (await api.post("/departments", json={"code": unique("N").upper()[:10], "name": "Ward"},
                                 headers=admin)).json()
    room = (await api.post("/rooms", json={"code": unique("W").upper()[:20], "departmentId": department["id"],
                                           "capacity": 2}, headers=admin)).json()
    service = (await api.post("/services", json={"code": unique("C").upper()[:20], "name": unique("Care ")},
                              headers=admin)).json()
    link = (await api.post("/service-rooms", json={"serviceId": service["id"], "roomId": room["id"]},
                           headers=admin)).json()
    on_duty, off_duty, reception = (await make_user(api, admin, "physician"), await make_user(api, admin, "physician"),
                                    await make_user(api, admin, "reception_staff"))
    zone = ZoneInfo(Settings.from_env(stack.env).clinic_timezone)
    start = datetime.now(zone) - timedelta(hours=1)
    end = start + timedelta(hours=4)
    r = await api.post("/room-schedules", json={
        "roomId": room["id"], "workDate": start.date().isoformat(), "startTime": start.strftime("%H:%M"),
        "endTime": end.strftime("%H:%M"), "overnight": end.date() != start.date(), "allowPast": True,
        "employeeIds": [on_duty.id],
    }, headers=admin)
    assert r.status_code == 201, r.text
    return {"room": room, "link": link, "on": on_duty, "off": off_duty, "reception": reception}


async def _open(api: httpx.AsyncClient, ward: dict[str, Any]) -> dict:
    patient = (await api.post("/patients", json={"firstName": "Mai", "lastName": unique("Do"),
                                                 "dateOfBirth": "1970-03-03", "gender": "female"},
                              headers=ward["reception"].headers)).json()
    r = await api.post("/encounters", json={"patientId": patient["id"], "serviceRoomId": ward["link"]["id"],
                                            "type": "outpatient"}, headers=ward["reception"].headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_encounter_notifies_the_staff_on_duty_live(api: httpx.AsyncClient, admin: dict[str, str],
                                                         relay: httpx.AsyncClient, ward: dict[str, Any]) -> None:
    on, off = ward["on"], ward["off"]
    async with open_sse(relay, on.token) as on_stream, open_sse(relay, off.token) as off_stream:
        encounter = await _open(api, ward)
        got = await on_stream.until(lambda m: m.event == "new_notification")
        note = got[-1].data
        assert note["type"] == "encounter_assigned" and note["relatedEntityId"] == encounter["id"]
        assert note["recipientId"] == on.id and str(encounter["queueNumber"]) in note["title"]
        assert encounter["patient"]["mrn"] in note["message"]
        assert encounter["patient"]["displayName"] not in note["message"]  # no patient names in notifications
        # The off-duty physician got nothing before this marker addressed to them.
        r = await api.post("/notifications", json={"recipientIds": [off.id], "title": "marker", "message": "m"},
                           headers=admin)
        assert r.status_code == 201 and r.json()["sent"] == 1
        before = await off_stream.until(lambda m: m.event == "new_notification" and m.data["title"] == "marker")
        assert [m.data["type"] for m in before if m.event == "new_notification"] == ["announcement"]
    mine = (await api.get("/notifications", headers=on.headers)).json()["items"]
    assert any(n["relatedEntityId"] == encounter["id"] for n in mine)
    theirs = (await api.get("/notifications", headers=off.headers)).json()["items"]
    assert not any(n["relatedEntityId"] == encounter["id"] for n in theirs)


async def test_read_delete_and_privacy(api: httpx.AsyncClient, relay: httpx.AsyncClient, ward: dict[str, Any]) -> None:
    on, off = ward["on"], ward["off"]
    encounter = await _open(api, ward)

    async def arrived() -> dict | None:
        items = (await api.get("/notifications", params={"isRead": "false"}, headers=on.headers)).json()["items"]
        return next((n for n in items if n["relatedEntityId"] == encounter["id"]), None)

    note = await eventually(arrived)
    unread = (await api.get("/notifications/unread-count", headers=on.headers)).json()["count"]
    assert unread >= 1
    assert (await api.get(f"/notifications/{note['id']}", headers=off.headers)).status_code == 404
    assert (await api.post(f"/notifications/{note['id']}/read", headers=off.headers)).status_code == 404
    assert (await api.delete(f"/notifications/{note['id']}", headers=off.headers)).status_code == 404
    async with open_sse(relay, on.token) as stream:
        r = await api.post(f"/notifications/{note['id']}/read", headers=on.headers)
        assert r.status_code == 200 and r.json()["isRead"] and r.json()["readAt"]
        read = (await stream.until(lambda m: m.event == "notification_read"))[-1].data
        assert read["notificationIds"] == [note["id"]] and read["unreadCount"] == unread - 1
    r = await api.post("/notifications/read-all", headers=on.headers)
    assert r.status_code == 200 and (await api.get("/notifications/unread-count", headers=on.headers)).json() == {
        "count": 0}
    assert (await api.delete(f"/notifications/{note['id']}", headers=on.headers)).status_code == 204
    assert (await api.get(f"/notifications/{note['id']}", headers=on.headers)).status_code == 404
    assert (await api.get("/notifications")).status_code == 401


async def test_exactly_one_notification_per_trigger_and_recipient(api: httpx.AsyncClient, stack: Stack,
                                                                   ward: dict[str, Any]) -> None:
    """The trigger event delivered again (same message id, as after a crash): no second notification."""
    async with EventTap(stack.env["AMQP_URL"], "patients.encounter.created") as tap:
        encounter = await _open(api, ward)
        event = await tap.wait_for(lambda e: e["payload"]["encounterId"] == encounter["id"])
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("events")
        await exchange.publish(aio_pika.Message(json.dumps(event).encode(), message_id=event["messageId"]),
                               routing_key="patients.encounter.created")
    finally:
        await connection.close()
    marker = await _open(api, ward)  # a later trigger, processed after the redelivery

    async def both() -> list[dict] | None:
        items = (await api.get("/notifications", params={"limit": 100}, headers=ward["on"].headers)).json()["items"]
        ids = [n["relatedEntityId"] for n in items]
        return ids if marker["id"] in ids else None

    ids = await eventually(both)
    assert ids.count(encounter["id"]) == 1


async def test_announcements(api: httpx.AsyncClient, admin: dict[str, str], ward: dict[str, Any]) -> None:
    title = unique("Fire drill ")
    r = await api.post("/notifications", json={"role": "physician", "title": title, "message": "At 3 pm."},
                       headers=admin)
    assert r.status_code == 201 and r.json()["sent"] >= 2
    for who in (ward["on"], ward["off"]):
        items = (await api.get("/notifications", params={"type": "announcement", "q": title},
                               headers=who.headers)).json()["items"]
        assert items and items[0]["senderId"]
    assert (await api.post("/notifications", json={"role": "physician", "title": "x", "message": "y"},
                           headers=ward["on"].headers)).status_code == 403
    r = await api.post("/notifications", json={"title": "x", "message": "y"}, headers=admin)
    assert r.status_code == 422
    r = await api.post("/notifications", json={"recipientIds": ["00000000-0000-4000-8000-000000000001"],
                                               "title": "x", "message": "y"}, headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "recipientIds"


async def test_refresh_token_reuse_notifies_its_owner(api: httpx.AsyncClient, admin: dict[str, str],
                                                      stack: Stack) -> None:
    person: Person = await make_user(api, admin, "radiologist")
    first = person.refresh
    r = await api.post("/auth/refresh", json={"refreshToken": first})
    assert r.status_code == 200
    redis = Redis.from_url(stack.env["REDIS_URL"])
    try:  # the rotated-away token is now older than its 10 s grace (test setup against the real Redis)
        await redis.hset(f"sess:{first.split('.')[0]}", "prevAt", time.time() - 60)
    finally:
        await redis.aclose()
    r = await api.post("/auth/refresh", json={"refreshToken": first})
    assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
    fresh = await login(api, person.email, person.password)
    headers = {"Authorization": f"Bearer {fresh.json()['accessToken']}"}

    async def security() -> list[dict] | None:
        items = (await api.get("/notifications", params={"type": "security"}, headers=headers)).json()["items"]
        return items or None

    notes = await eventually(security)
    assert notes[0]["relatedEntityType"] == "session" and notes[0]["relatedEntityId"] == first.split(".")[0]
