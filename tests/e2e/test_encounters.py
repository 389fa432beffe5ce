"""Encounters over HTTP: gap-free daily queues under concurrency, the state machine with its role
and ownership rules, transfers, vital signs, the queue, stats, the overview and the expiry job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import EventTap, Person, Stack, eventually, make_user, unique


@dataclass
class Clinic:
    department: dict
    rooms: list[dict]
    links: list[dict]  # service-room links, one per room
    reception: Person
    doctor: Person
    doctor2: Person
    radiologist: Person
    tech: Person


async def _room_with_link(api: httpx.AsyncClient, admin: dict[str, str], department_id: str, service_id: str) -> tuple:
    r = await api.post("/rooms", json={"code": unique("R").upper()[:20], "departmentId": department_id,
                                       "type": "general", "capacity": 3}, headers=admin)
    assert r.status_code == 201, r.text
    room = r.json()
    r = await api.post("/service-rooms", json={"serviceId": service_id, "roomId": room["id"]}, headers=admin)
    assert r.status_code == 201, r.text
    return room, r.json()


@pytest.fixture(scope="module")
async def clinic(api: httpx.AsyncClient, admin: dict[str, str]) -> Clinic:
    r = await api.post("/departments", json={"code": unique("E").upper()[:10], "name": "Outpatients"}, headers=admin)
    department = r.json()
    r = await api.post("/services", json={"code": unique("S").upper()[:20], "name": unique("Consult ")},
                       headers=admin)
    assert r.status_code == 201, r.text
    service = r.json()
    pairs = [await _room_with_link(api, admin, department["id"], service["id"]) for _ in range(3)]
    people = [await make_user(api, admin, role) for role in
              ("reception_staff", "physician", "physician", "radiologist", "imaging_technician")]
    return Clinic(department, [p[0] for p in pairs], [p[1] for p in pairs], *people)


async def patient(api: httpx.AsyncClient, clinic: Clinic, **extra: Any) -> dict:
    r = await api.post("/patients", json={"firstName": "An", "lastName": unique("Vo"), "dateOfBirth": "1990-01-01",
                                          "gender": "male", **extra}, headers=clinic.reception.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def open_(api: httpx.AsyncClient, clinic: Clinic, who: Person, patient_id: str, link: int = 0,
                **extra: Any) -> httpx.Response:
    return await api.post("/encounters", json={"patientId": patient_id, "serviceRoomId": clinic.links[link]["id"],
                                               "type": "outpatient", **extra}, headers=who.headers)


async def test_open_and_event(api: httpx.AsyncClient, clinic: Clinic, stack: Stack) -> None:
    p = await patient(api, clinic)
    async with EventTap(stack.env["AMQP_URL"], "patients.encounter.*", "patients.vital_signs.*") as tap:
        r = await open_(api, clinic, clinic.reception, p["id"], priority="urgent", chiefComplaint="cough",
                        vitalSigns={"bpSystolic": 120, "bpDiastolic": 80, "weight": 70, "height": 175})
        assert r.status_code == 201, r.text
        e = r.json()
        assert e["status"] == "waiting" and e["queueNumber"] >= 1 and e["patient"]["mrn"] == p["mrn"]
        assert e["roomId"] == clinic.rooms[0]["id"] and r.headers["location"] == f"/encounters/{e['id']}"
        created = await tap.wait_for(lambda ev: ev["type"] == "patients.encounter.created"
                                     and ev["payload"]["encounterId"] == e["id"])
        assert created["payload"]["mrn"] == p["mrn"] and created["payload"]["queueNumber"] == e["queueNumber"]
        assert "chiefComplaint" not in created["payload"]  # free clinical text never rides an event
        vitals = await tap.wait_for(lambda ev: ev["type"] == "patients.vital_signs.recorded")
        assert "39156-5" in vitals["payload"]["codes"]  # the derived BMI
    listed = (await api.get(f"/encounters/{e['id']}/vital-signs", headers=clinic.doctor.headers)).json()
    bmi = next(v for v in listed["items"] if v["code"] == "39156-5")
    assert bmi["derived"] is True and bmi["value"] == "22.86"
    r = await open_(api, clinic, clinic.reception, p["id"])
    assert r.status_code == 409 and r.json()["code"] == "duplicate_open_encounter"


async def test_fifty_parallel_creations_in_one_room_number_1_to_50(api: httpx.AsyncClient, clinic: Clinic,
                                                                    admin: dict[str, str]) -> None:
    room, link = await _room_with_link(api, admin, clinic.department["id"], clinic.links[0]["service"]["id"])
    patients = await asyncio.gather(*(patient(api, clinic) for _ in range(50)))
    results = await asyncio.gather(*(
        api.post("/encounters", json={"patientId": p["id"], "serviceRoomId": link["id"], "type": "outpatient"},
                 headers=clinic.reception.headers) for p in patients))
    assert all(r.status_code == 201 for r in results), [r.text for r in results if r.status_code != 201][:2]
    assert sorted(r.json()["queueNumber"] for r in results) == list(range(1, 51))
    stats = (await api.get("/encounters/queue-stats", params={"roomIds": room["id"]},
                           headers=clinic.reception.headers)).json()
    assert stats[0]["total"] == 50 and stats[0]["lastQueueNumber"] == 50 and stats[0]["nextUp"] == 1


async def test_state_machine_roles_and_ownership(api: httpx.AsyncClient, clinic: Clinic,
                                                 admin: dict[str, str]) -> None:
    p = await patient(api, clinic)
    e = (await open_(api, clinic, clinic.reception, p["id"], link=1)).json()
    url = f"/encounters/{e['id']}"
    r = await api.post(f"{url}/finish", headers=clinic.doctor.headers)
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    assert r.json()["currentState"] == "waiting" and r.json()["targetState"] == "finished"
    assert (await api.post(f"{url}/arrive", headers=clinic.tech.headers)).status_code == 403
    assert (await api.post(f"{url}/arrive", headers=clinic.reception.headers)).json()["status"] == "arrived"
    assert (await api.post(f"{url}/start", headers=clinic.reception.headers)).status_code == 403
    r = await api.post(f"{url}/start", headers=clinic.doctor.headers)
    assert r.status_code == 200 and r.json()["assignedPhysicianId"] == clinic.doctor.id
    assert r.json()["assignedPhysician"]["displayName"]
    # one patient at a time
    other = (await open_(api, clinic, clinic.reception, (await patient(api, clinic))["id"], link=1)).json()
    busy = await api.post(f"/encounters/{other['id']}/start", headers=clinic.doctor.headers)
    assert busy.status_code == 409 and busy.json()["code"] == "physician_busy"
    r = await api.post(f"{url}/finish", headers=clinic.doctor2.headers)
    assert r.status_code == 403 and r.json()["code"] == "not_owner"
    r = await api.post(f"{url}/return-to-queue", json={"reason": "sent for imaging"}, headers=clinic.doctor.headers)
    assert r.status_code == 200 and r.json()["status"] == "arrived" and r.json()["queueNumber"] == e["queueNumber"]
    assert (await api.post(f"{url}/start", headers=clinic.doctor.headers)).status_code == 200
    r = await api.post(f"{url}/finish", headers=clinic.doctor.headers)
    assert r.status_code == 200 and r.json()["finishedAt"]
    r = await api.post(f"{url}/cancel", json={"reason": "too late"}, headers=clinic.reception.headers)
    assert r.status_code == 409
    r = await api.post(f"/encounters/{other['id']}/cancel", json={"reason": "x"}, headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["field"] == "reason"
    r = await api.post(f"/encounters/{other['id']}/cancel", json={"reason": "patient left"},
                       headers=clinic.reception.headers)
    assert r.status_code == 200 and r.json()["cancelReason"] == "patient left"
    r = await api.patch(f"/encounters/{other['id']}", json={"status": "waiting"}, headers=clinic.reception.headers)
    assert r.status_code in (409, 422)


async def test_update_rules(api: httpx.AsyncClient, clinic: Clinic) -> None:
    e = (await open_(api, clinic, clinic.reception, (await patient(api, clinic))["id"], link=2)).json()
    url = f"/encounters/{e['id']}"
    r = await api.patch(url, json={"priority": "stat", "notes": "wheelchair"}, headers=clinic.reception.headers)
    assert r.status_code == 200 and r.json()["priority"] == "stat" and r.json()["version"] == 2
    r = await api.patch(url, json={"status": "finished"}, headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["code"] == "use_transition"
    r = await api.patch(url, json={"symptoms": "fever"}, headers={**clinic.reception.headers, "If-Match": '"1"'})
    assert r.status_code == 412
    r = await api.patch(url, json={"symptoms": "fever"}, headers=clinic.doctor.headers)
    assert r.status_code == 403 and r.json()["code"] == "not_owner"
    await api.post(f"{url}/start", headers=clinic.doctor2.headers)
    r = await api.patch(url, json={"priority": "routine"}, headers=clinic.doctor2.headers)
    assert r.status_code == 403
    r = await api.patch(url, json={"symptoms": "fever"}, headers=clinic.doctor2.headers)
    assert r.status_code == 200 and r.json()["symptoms"] == "fever"
    r = await api.patch(url, json={"notes": "late"}, headers=clinic.reception.headers)
    assert r.status_code == 409
    await api.post(f"{url}/finish", headers=clinic.doctor2.headers)


async def test_transfer(api: httpx.AsyncClient, clinic: Clinic, admin: dict[str, str], stack: Stack) -> None:
    e = (await open_(api, clinic, clinic.reception, (await patient(api, clinic))["id"], link=0)).json()
    url = f"/encounters/{e['id']}"
    await api.post(f"{url}/start", headers=clinic.doctor.headers)
    async with EventTap(stack.env["AMQP_URL"], "patients.encounter.transferred") as tap:
        r = await api.post(f"{url}/transfer", json={"toServiceRoomId": clinic.links[2]["id"], "notes": "needs CT"},
                           headers=clinic.doctor.headers)
        assert r.status_code == 200, r.text
        moved = r.json()
        assert moved["status"] == "waiting" and moved["roomId"] == clinic.rooms[2]["id"] and moved["isTransferred"]
        assert moved["previousRoomId"] == clinic.rooms[0]["id"] and moved["previousPhysicianId"] == clinic.doctor.id
        event = await tap.wait_for(lambda ev: ev["payload"]["encounterId"] == e["id"])
        assert event["payload"]["toRoomId"] == clinic.rooms[2]["id"] and "notes" not in event["payload"]
    r = await api.post(f"{url}/transfer", json={"toPhysicianId": clinic.radiologist.id}, headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "toPhysicianId"
    r = await api.post(f"{url}/transfer", json={"toPhysicianId": clinic.doctor2.id}, headers=admin)
    assert r.status_code == 200 and r.json()["assignedPhysicianId"] == clinic.doctor2.id
    r = await api.post(f"{url}/transfer", json={}, headers=admin)
    assert r.status_code == 422


async def test_a_room_change_reaches_the_cached_link(api: httpx.AsyncClient, clinic: Clinic,
                                                    admin: dict[str, str]) -> None:
    """The patients worker caches service-room links; a room put under maintenance is refused at
    once all the same (the change event drops the cache in every patients process)."""
    room, link = await _room_with_link(api, admin, clinic.department["id"], clinic.links[0]["service"]["id"])
    body = {"serviceRoomId": link["id"], "type": "outpatient"}
    first = await api.post("/encounters", json={**body, "patientId": (await patient(api, clinic))["id"]},
                           headers=clinic.reception.headers)
    assert first.status_code == 201, first.text  # the link is cached now
    r = await api.patch(f"/rooms/{room['id']}", json={"status": "maintenance"}, headers=admin)
    assert r.status_code == 200, r.text

    async def refused() -> bool:
        r = await api.post("/encounters", json={**body, "patientId": (await patient(api, clinic))["id"]},
                           headers=clinic.reception.headers)
        return r.status_code == 422 and r.json()["code"] == "room_unavailable"

    await eventually(refused, timeout=3)


async def test_refused_references_write_nothing(api: httpx.AsyncClient, clinic: Clinic, admin: dict[str, str],
                                                stack: Stack) -> None:
    p = await patient(api, clinic)
    nowhere = "00000000-0000-4000-8000-00000000000a"
    r = await api.post("/encounters", json={"patientId": p["id"], "serviceRoomId": nowhere, "type": "outpatient"},
                       headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["field"] == "serviceRoomId"
    r = await api.post("/encounters", json={"patientId": "00000000-0000-4000-8000-00000000000b",
                                            "serviceRoomId": clinic.links[0]["id"], "type": "outpatient"},
                       headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["field"] == "patientId"
    room, link = await _room_with_link(api, admin, clinic.department["id"], clinic.links[0]["service"]["id"])
    await api.patch(f"/rooms/{room['id']}", json={"status": "maintenance"}, headers=admin)
    r = await api.post("/encounters", json={"patientId": p["id"], "serviceRoomId": link["id"], "type": "outpatient"},
                       headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["code"] == "room_unavailable"
    db = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        assert await db.fetchval("SELECT count(*) FROM patients.encounters WHERE patient_id = $1", p["id"]) == 0
        assert await db.fetchval("SELECT count(*) FROM patients.queue_counters WHERE room_id = $1", room["id"]) == 0
    finally:
        await db.close()
    r = await api.post("/encounters", json={"patientId": p["id"], "serviceRoomId": clinic.links[0]["id"],
                                            "type": "outpatient", "vitalSigns": [{"code": "8867-4", "value": 400,
                                                                                  "unit": "/min"}]},
                       headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["field"] == "vitalSigns/0/value"


async def test_vital_signs_rules(api: httpx.AsyncClient, clinic: Clinic) -> None:
    e = (await open_(api, clinic, clinic.reception, (await patient(api, clinic))["id"], link=1)).json()
    url = f"/encounters/{e['id']}/vital-signs"
    cases = [
        ([{"code": "0000-0", "value": 1, "unit": "x"}], "vitalSigns/0/code", "unknown_code"),
        ([{"code": "8310-5", "value": 37, "unit": "K"}], "vitalSigns/0/unit", "invalid_unit"),
        ([{"code": "8310-5", "value": 37, "unit": "Cel"}, {"code": "8310-5", "value": 20, "unit": "Cel"}],
         "vitalSigns/1/value", "out_of_range"),
        ([{"code": "72514-3", "value": 3.5, "unit": "{score}"}], "vitalSigns/0/value", "invalid_format"),
        ([{"code": "8867-4", "value": 70, "unit": "/min", "recordedAt": "2999-01-01T00:00:00Z"}],
         "vitalSigns/0/recordedAt", "out_of_range"),
    ]
    for body, field, code in cases:
        r = await api.post(url, json=body, headers=clinic.doctor.headers)
        assert r.status_code == 422 and r.json()["field"] == field and r.json()["errors"][0]["code"] == code, r.text
    r = await api.post(url, json={"bpSystolic": 80, "bpDiastolic": 90}, headers=clinic.doctor.headers)
    assert r.status_code == 422 and r.json()["code"] == "inconsistent_blood_pressure"
    r = await api.post(url, json=[{"code": "8310-5", "value": 98.6, "unit": "[degF]"}],
                       headers=clinic.reception.headers)
    assert r.status_code == 201
    reading = r.json()[0]
    assert (await api.post(url, json={"heartRate": 60}, headers=clinic.tech.headers)).status_code == 403
    r = await api.post(f"/vital-signs/{reading['id']}/retract", json={"reason": "wrong patient"},
                       headers=clinic.doctor.headers)
    assert r.status_code == 200 and r.json()["status"] == "entered_in_error"
    listed = (await api.get(url, headers=clinic.doctor.headers)).json()["items"]
    assert reading["id"] not in [v["id"] for v in listed]
    listed = (await api.get(url, params={"includeRetracted": "true"}, headers=clinic.doctor.headers)).json()["items"]
    assert reading["id"] in [v["id"] for v in listed]


async def test_lists_queue_stats_overview(api: httpx.AsyncClient, clinic: Clinic, admin: dict[str, str]) -> None:
    p = await patient(api, clinic, firstName="Hoàng")
    e = (await open_(api, clinic, clinic.reception, p["id"], link=1, priority="stat")).json()
    room_id = clinic.rooms[1]["id"]
    queue = (await api.get("/encounters/queue", params={"roomId": room_id}, headers=clinic.reception.headers)).json()
    order = [(x["status"] == "in_progress", x["priority"], x["queueNumber"]) for x in queue["items"]]
    rank = {"stat": 0, "urgent": 1, "routine": 2}
    assert order == sorted(order, key=lambda t: (not t[0], rank[t[1]], t[2]))
    r = await api.get("/encounters/queue", headers=clinic.reception.headers)
    assert r.status_code == 422 and r.json()["field"] == "roomId"  # not on duty anywhere: name a room
    r = await api.get("/encounters/queue", params={"roomId": room_id}, headers=clinic.tech.headers)
    assert r.status_code == 403
    mine = (await api.get("/encounters", params={"q": "hoang", "roomId": room_id}, headers=clinic.tech.headers)).json()
    assert e["id"] in [x["id"] for x in mine["items"]]
    by_patient = (await api.get(f"/patients/{p['id']}/encounters", headers=clinic.radiologist.headers)).json()
    assert [x["id"] for x in by_patient["items"]] == [e["id"]]
    stats = (await api.get("/encounters/stats", params={"roomId": room_id}, headers=admin)).json()
    assert stats["total"] >= 1 and stats["byPriority"]["stat"] >= 1
    assert (await api.get("/encounters/stats", headers=clinic.tech.headers)).status_code == 403
    over = (await api.get(f"/patients/{p['id']}/overview", headers=clinic.doctor.headers)).json()
    assert over["openEncounter"]["id"] == e["id"] and over["activeConditions"] == []
    over = (await api.get(f"/patients/{p['id']}/overview", headers=clinic.reception.headers)).json()
    assert over["activeConditions"] is None
    r = await api.delete(f"/patients/{p['id']}", headers=clinic.reception.headers)
    assert r.status_code == 409 and r.json()["code"] == "patient_has_open_encounters"


async def test_waiting_encounters_of_earlier_days_expire(api: httpx.AsyncClient, clinic: Clinic,
                                                         stack: Stack) -> None:
    e = (await open_(api, clinic, clinic.reception, (await patient(api, clinic))["id"], link=2)).json()
    db = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        # The encounter was opened yesterday (test setup); a fresh worker runs the job at start.
        await db.execute("UPDATE patients.encounters SET business_date = $1 WHERE id = $2",
                         date.today() - timedelta(days=2), e["id"])
    finally:
        await db.close()
    async with EventTap(stack.env["AMQP_URL"], "patients.encounter.cancelled") as tap:
        stack.stop("patients")
        stack.start("patients", ["worker", "patients"])
        event = await tap.wait_for(lambda ev: ev["payload"]["encounterId"] == e["id"], timeout=30)
        assert event["payload"]["expired"] is True and event["payload"]["previousStatus"] == "waiting"

    async def cancelled() -> bool:
        r = await api.get(f"/encounters/{e['id']}", headers=clinic.doctor.headers)
        return r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["cancelReason"] == "expired"

    await eventually(cancelled, timeout=30)
