"""`/departments` over HTTP, against the real stack."""

from __future__ import annotations

import httpx
import pytest

from tests.support import EventTap, Stack, make_user, unique

pytestmark = pytest.mark.asyncio


def code() -> str:
    return unique("D").upper()[:10]


async def test_create_refused_conflict_and_event(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack) -> None:
    async with EventTap(stack.env["AMQP_URL"], "users.department.*") as tap:
        c = code()
        r = await api.post("/departments", json={"code": c, "name": "Radiology"}, headers=admin)
        assert r.status_code == 201, r.text
        body = r.json()
        assert r.headers["location"] == f"/departments/{body['id']}"
        assert r.headers["etag"] == '"1"'
        assert body["code"] == c and body["version"] == 1 and body["deletedAt"] is None
        event = await tap.wait_for(lambda e: e["type"] == "users.department.created"
                                   and e["payload"]["departmentId"] == body["id"])
        assert event["payload"]["code"] == c and event["payload"]["version"] == 1
        assert event["actor"]["role"] == "system_admin"

        r = await api.post("/departments", json={"code": c, "name": "Again"}, headers=admin)
        assert r.status_code == 409
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "already_exists" and problem["field"] == "code"
        assert problem["type"] == "/problems/already_exists" and problem["correlationId"]


@pytest.mark.parametrize("role", ["physician", "radiologist", "imaging_technician", "reception_staff"])
async def test_write_refused_for_clinical_roles(api: httpx.AsyncClient, admin: dict[str, str], role: str) -> None:
    person = await make_user(api, admin, role)
    r = await api.post("/departments", json={"code": code(), "name": "X"}, headers=person.headers)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await api.get("/departments", headers=person.headers)
    assert r.status_code == 200


@pytest.mark.parametrize(("body", "field", "code_"), [
    ({"code": "lower", "name": "X"}, "code", "invalid_format"),
    ({"code": "A", "name": "X"}, "code", "too_short"),
    ({"code": "ABC", "name": ""}, "name", "too_short"),
    ({"code": "ABC"}, "name", "required"),
    ({"code": "ABC", "name": "X", "extra": 1}, "extra", "unknown_field"),
    ({"code": 5, "name": "X"}, "code", "invalid_format"),
])
async def test_create_validation(api: httpx.AsyncClient, admin: dict[str, str], body: dict, field: str,
                                 code_: str) -> None:
    r = await api.post("/departments", json=body, headers=admin)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_failed"
    assert problem["field"] == field
    assert problem["errors"][0]["code"] == code_


async def test_malformed_json_is_400(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await api.post("/departments", content=b"{nope", headers={**admin, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "bad_request"

