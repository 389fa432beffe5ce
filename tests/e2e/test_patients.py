"""The patient registry and conditions over HTTP: MRNs, duplicate check, search with typos and
accents, audited reads, soft delete, roles."""

from __future__ import annotations

import asyncio
import re
from datetime import date, timedelta

import httpx
import pytest

from tests.support import EventTap, Person, Stack, eventually, make_user, unique

MRN = re.compile(r"^[0-9ABCDEFGHJKMNPQRSTVWXYZ]{8}$")
READERS = ("reception_staff", "physician", "radiologist", "imaging_technician", "system_admin")


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Person]:
    people = {}
    for role in READERS[:-1]:
        people[role] = await make_user(api, admin, role)
    return people


def patient_body(**overrides: object) -> dict:
    return {"firstName": "Nguyễn", "lastName": unique("Thị-").title(), "dateOfBirth": "1980-05-17",
            "gender": "female", "phone": "+84 90 123 4567", **overrides}


async def register(api: httpx.AsyncClient, who: Person, **overrides: object) -> dict:
    r = await api.post("/patients", json=patient_body(**overrides), headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_register_gives_an_mrn_and_an_event(api: httpx.AsyncClient, staff: dict[str, Person],
                                                  stack: Stack) -> None:
    async with EventTap(stack.env["AMQP_URL"], "patients.patient.*") as tap:
        patient = await register(api, staff["reception_staff"])
        assert MRN.match(patient["mrn"]) and patient["version"] == 1 and patient["bloodType"] == "unknown"
        event = await tap.wait_for(lambda e: e["payload"]["patientId"] == patient["id"])
        assert event["type"] == "patients.patient.registered" and event["payload"]["mrn"] == patient["mrn"]
    many = await asyncio.gather(*(register(api, staff["physician"], lastName=unique("P")) for _ in range(20)))
    assert len({p["mrn"] for p in many}) == 20


async def test_duplicate_check(api: httpx.AsyncClient, staff: dict[str, Person]) -> None:
    last = unique("Trần-")
    first = await register(api, staff["reception_staff"], firstName="Lê Văn", lastName=last)
    r = await api.post("/patients", json=patient_body(firstName="LE VAN", lastName=last.upper()),
                       headers=staff["reception_staff"].headers)
    assert r.status_code == 409 and r.json()["code"] == "possible_duplicate" and first["mrn"] in r.json()["mrns"]
    r = await api.post("/patients?allowDuplicate=true", json=patient_body(firstName="LE VAN", lastName=last.upper()),
                       headers=staff["reception_staff"].headers)
    assert r.status_code == 201 and r.json()["mrn"] != first["mrn"]


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"dateOfBirth": "1899-12-31"}, "dateOfBirth", "out_of_range"),
    ({"dateOfBirth": (date.today() + timedelta(days=2)).isoformat()}, "dateOfBirth", "out_of_range"),
    ({"gender": "robot"}, "gender", "invalid_enum"),
    ({"firstName": ""}, "firstName", "too_short"),
    ({"bloodType": "C+"}, "bloodType", "invalid_enum"),
    ({"mrn": "ABCDEFGH"}, "mrn", "unknown_field"),
    ({"phone": "call me"}, "phone", "invalid_format"),
])
async def test_register_validation(api: httpx.AsyncClient, staff: dict[str, Person], body: dict, field: str,
                                   code: str) -> None:
    r = await api.post("/patients", json=patient_body(**body), headers=staff["reception_staff"].headers)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["errors"][0]["code"] == code


async def test_roles(api: httpx.AsyncClient, admin: dict[str, str], staff: dict[str, Person]) -> None:
    patient = await register(api, staff["reception_staff"])
    for role in ("radiologist", "imaging_technician"):
        r = await api.post("/patients", json=patient_body(), headers=staff[role].headers)
        assert r.status_code == 403
    assert (await api.post("/patients", json=patient_body(), headers=admin)).status_code == 403
    for who in [*staff.values()]:
        assert (await api.get(f"/patients/{patient['id']}", headers=who.headers)).status_code == 200
    assert (await api.get(f"/patients/{patient['id']}", headers=admin)).status_code == 200
    assert (await api.get(f"/patients/{patient['id']}")).status_code == 401
    for role in ("physician", "radiologist", "imaging_technician"):
        assert (await api.get("/patients/stats", headers=staff[role].headers)).status_code == 403
    assert (await api.get("/patients/stats", headers=staff["reception_staff"].headers)).status_code == 200
    r = await api.patch(f"/patients/{patient['id']}", json={"phone": None}, headers=staff["imaging_technician"].headers)
    assert r.status_code == 403
    r = await api.delete(f"/patients/{patient['id']}", headers=staff["physician"].headers)
    assert r.status_code == 403


async def test_reads_are_audited_and_coalesced(api: httpx.AsyncClient, admin: dict[str, str],
                                               staff: dict[str, Person]) -> None:
    patient = await register(api, staff["reception_staff"])
    doctor = staff["physician"]
    for _ in range(3):
        assert (await api.get(f"/patients/{patient['id']}", headers=doctor.headers)).status_code == 200
    await api.get(f"/patients/by-mrn/{patient['mrn'].lower()}", headers=doctor.headers)

    async def trail() -> list[dict] | None:
        r = await api.get("/audit-events", params={"patientId": patient["id"], "actorId": doctor.id,
                                                   "action": "patients.get_patient"}, headers=admin)
        items = r.json()["items"]
        return items if items and items[0]["repeatCount"] == 4 else None

    items = await eventually(trail)
    assert len(items) == 1
    registered = (await api.get("/audit-events", params={"patientId": patient["id"],
                                                         "action": "patients.register_patient"},
                                headers=admin)).json()["items"]
    assert registered and registered[0]["targetId"] == patient["id"]


async def test_search_by_name_with_typos_accents_mrn_phone(api: httpx.AsyncClient, staff: dict[str, Person]) -> None:
    tag = unique("Z").lower()
    patient = await register(api, staff["reception_staff"], firstName="Phạm Ngọc", lastName=f"Thạch{tag}",
                             phone=f"09{tag[-6:].encode().hex()[:8]}", insuranceNumber=f"INS-{tag}")
    rcp = staff["reception_staff"].headers

    async def ids(q: str) -> list[str]:
        r = await api.get("/patients", params={"q": q}, headers=rcp)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["items"]]

    assert patient["id"] in await ids(f"pham ngoc thach{tag}")  # no accents
    assert patient["id"] in await ids(f"PHẠM NGỌC THẠCH{tag.upper()}")  # accents and case
    assert patient["id"] in await ids(f"pham ngoc thac{tag}")  # a typo
    assert patient["id"] in await ids(patient["mrn"])
    assert patient["id"] in await ids(patient["mrn"].replace("1", "I").replace("0", "O").lower())
    assert patient["id"] in await ids(f"INS-{tag}")
    assert (await ids(f"qqqqqqq{tag}zzzz")) == []


async def test_search_ranks_exact_names_first_then_names_containing_the_words(
        api: httpx.AsyncClient, admin: dict[str, str], staff: dict[str, Person]) -> None:
    tag = unique("k")  # a name word nobody else has: 9 letters, so two typos are tolerated
    rcp = staff["reception_staff"]
    older = await register(api, rcp, firstName=f"Minh {tag}", lastName="Lê", dateOfBirth="1971-01-01")
    longer = await register(api, rcp, firstName=f"Minh {tag} Anh", lastName="Lê", dateOfBirth="1972-01-01")
    newer = await register(api, rcp, firstName=f"Minh {tag}", lastName="Lê", dateOfBirth="1973-01-01")
    ours = {older["id"], longer["id"], newer["id"]}

    async def found(q: str, **params: object) -> tuple[list[str], int]:
        r = await api.get("/patients", params={"q": q, **params}, headers=rcp.headers)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["items"] if p["id"] in ours], r.json()["total"]

    exact_then_wider = [newer["id"], older["id"], longer["id"]]
    assert await found(f"le minh {tag}") == (exact_then_wider, 3)
    assert await found(f"{tag.upper()} MINH LÊ") == (exact_then_wider, 3)  # any word order, accents, case
    typo = tag[:3] + ("x" if tag[3] != "x" else "y") + tag[4:]
    assert (await found(f"le minh {typo}"))[0] == exact_then_wider
    assert set((await found(f"le minh {tag[:-2]}"))[0]) == ours  # the last word still being typed
    assert (await found(f"{tag} le"))[0] == [newer["id"], longer["id"], older["id"]]  # contains: newest first
    assert await found(f"le minh {tag} anh") == ([longer["id"]], 1)
    assert await found(f"le minh {tag}", limit=1, page=2) == ([older["id"]], 3)  # paging across the tiers
    assert (await found(f"le minh {tag}", sort="dateOfBirth"))[0] == [older["id"], longer["id"], newer["id"]]
    assert await found(f"{tag} qqqqqqqqq") == ([], 0)

    assert (await api.delete(f"/patients/{newer['id']}", headers=rcp.headers)).status_code == 204
    assert await found(f"le minh {tag}") == ([older["id"], longer["id"]], 2)
    r = await api.get("/patients", params={"q": f"le minh {tag}", "includeDeleted": "true"}, headers=rcp.headers)
    assert r.status_code == 403 and r.json()["field"] == "includeDeleted"
    r = await api.get("/patients", params={"q": f"le minh {tag}", "includeDeleted": "true"}, headers=admin)
    assert [p["id"] for p in r.json()["items"]] == exact_then_wider

    renamed = await api.patch(f"/patients/{older['id']}", json={"firstName": f"Minh {tag} Bảo"},
                              headers={**rcp.headers, "If-Match": '"1"'})
    assert renamed.status_code == 200, renamed.text
    assert await found(f"le minh {tag} bao") == ([older["id"]], 1)  # a renamed patient is found by the new name


async def test_list_filters_sort_paging(api: httpx.AsyncClient, staff: dict[str, Person]) -> None:
    rcp = staff["reception_staff"].headers
    birth = "1955-02-03"
    made = [await register(api, staff["reception_staff"], dateOfBirth=birth, gender=g, lastName=unique(n))
            for g, n in (("male", "Aa"), ("female", "Bb"), ("other", "Cc"))]
    r = await api.get("/patients", params={"dateOfBirth": birth, "gender": "male,female", "sort": "lastName",
                                           "limit": 100}, headers=rcp)
    assert r.status_code == 200
    got = [p["id"] for p in r.json()["items"] if p["id"] in {m["id"] for m in made}]
    assert got == [made[0]["id"], made[1]["id"]]
    assert (await api.get("/patients", params={"sort": "phone"}, headers=rcp)).json()["code"] == "invalid_sort"
    assert (await api.get("/patients", params={"gender": "x"}, headers=rcp)).status_code == 400
    page = (await api.get("/patients", params={"limit": 2, "page": 1}, headers=rcp)).json()
    assert len(page["items"]) == 2 and page["total"] >= 3


async def test_update_delete_restore(api: httpx.AsyncClient, admin: dict[str, str], staff: dict[str, Person],
                                     stack: Stack) -> None:
    rcp = staff["reception_staff"].headers
    patient = await register(api, staff["reception_staff"])
    r = await api.patch(f"/patients/{patient['id']}", json={"phone": None, "bloodType": "O+"},
                        headers={**rcp, "If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["phone"] is None and r.json()["version"] == 2
    r = await api.patch(f"/patients/{patient['id']}", json={"address": "x"}, headers={**rcp, "If-Match": '"1"'})
    assert r.status_code == 412
    r = await api.patch(f"/patients/{patient['id']}", json={"mrn": "00000000"}, headers=rcp)
    assert r.status_code == 422 and r.json()["field"] == "mrn"
    async with EventTap(stack.env["AMQP_URL"], "patients.patient.*") as tap:
        assert (await api.delete(f"/patients/{patient['id']}", headers=rcp)).status_code == 204
        await tap.wait_for(lambda e: e["type"] == "patients.patient.deleted")
    assert (await api.get(f"/patients/{patient['id']}", headers=rcp)).status_code == 404
    assert (await api.get(f"/patients/by-mrn/{patient['mrn']}", headers=rcp)).status_code == 404
    assert (await api.post(f"/patients/{patient['id']}/restore", headers=rcp)).status_code == 403
    r = await api.post(f"/patients/{patient['id']}/restore", headers=admin)
    assert r.status_code == 200 and r.json()["deletedAt"] is None
    stats = (await api.get("/patients/stats", headers=admin)).json()
    assert stats["total"] >= 1 and stats["newToday"] >= 1


async def test_conditions(api: httpx.AsyncClient, admin: dict[str, str], staff: dict[str, Person],
                          stack: Stack) -> None:
    patient = await register(api, staff["reception_staff"])
    doctor, rad = staff["physician"], staff["radiologist"]
    url = f"/patients/{patient['id']}/conditions"
    async with EventTap(stack.env["AMQP_URL"], "patients.condition.*") as tap:
        r = await api.post(url, json={"code": "I10", "codeDisplay": "Essential hypertension"}, headers=doctor.headers)
        assert r.status_code == 201, r.text
        condition = r.json()
        assert condition["codeSystem"] == "http://hl7.org/fhir/sid/icd-10" and condition["patient"]["mrn"]
        await tap.wait_for(lambda e: e["payload"]["conditionId"] == condition["id"])
    assert (await api.post(url, json={"code": "I10"}, headers=staff["reception_staff"].headers)).status_code == 403
    r = await api.post(f"{url}/bulk", json={"items": [{"code": "E11"}, {"code": ""}]}, headers=rad.headers)
    assert r.status_code == 422 and r.json()["field"] == "items/1/code"
    r = await api.post(f"{url}/bulk", json={"items": [{"code": "E11"}, {"code": "J45", "clinicalStatus": "remission"}]},
                       headers=rad.headers)
    assert r.status_code == 201 and len(r.json()) == 2
    listed = (await api.get(url, params={"clinicalStatus": "active"}, headers=staff["imaging_technician"].headers))
    assert listed.status_code == 200 and {c["code"] for c in listed.json()["items"]} == {"I10", "E11"}
    assert (await api.get(url, headers=staff["reception_staff"].headers)).status_code == 403
    r = await api.patch(f"/conditions/{condition['id']}", json={"clinicalStatus": "resolved"}, headers=rad.headers)
    assert r.status_code == 200 and r.json()["clinicalStatus"] == "resolved"
    r = await api.delete(f"/conditions/{condition['id']}", headers=rad.headers)
    assert r.status_code == 403 and r.json()["code"] == "not_owner"
    assert (await api.delete(f"/conditions/{condition['id']}", headers=doctor.headers)).status_code == 204
    assert (await api.get(f"/conditions/{condition['id']}", headers=doctor.headers)).status_code == 404
    assert (await api.post(f"/conditions/{condition['id']}/restore", headers=admin)).status_code == 200
    r = await api.post(url, json={"code": "I10", "encounterId": "00000000-0000-4000-8000-000000000000"},
                       headers=doctor.headers)
    assert r.status_code == 422 and r.json()["field"] == "encounterId"
