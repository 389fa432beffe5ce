"""The role rule of every patients, encounters and vital-signs route (patients.md §3): each role
that must be refused gets 403 `forbidden` before anything runs, and no token gets 401."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Person, make_user

ALL = {"system_admin", "physician", "radiologist", "imaging_technician", "reception_staff"}
ID = "00000000-0000-4000-8000-000000000099"
# (method, path, roles allowed by the route's rule)
ROUTES = [
    ("POST", "/patients", {"reception_staff", "physician"}),
    ("GET", "/patients", ALL),
    ("GET", "/patients/stats", {"system_admin", "reception_staff"}),
    ("GET", f"/patients/{ID}", ALL),
    ("GET", "/patients/by-mrn/ABCDEFGH", ALL),
    ("GET", f"/patients/{ID}/overview", ALL),
    ("PATCH", f"/patients/{ID}", {"reception_staff", "physician"}),
    ("DELETE", f"/patients/{ID}", {"reception_staff", "system_admin"}),
    ("POST", f"/patients/{ID}/restore", {"system_admin"}),
    ("GET", f"/patients/{ID}/encounters", ALL),
    ("GET", f"/patients/{ID}/vital-signs", ALL),
    ("GET", f"/patients/{ID}/conditions", {"physician", "radiologist", "imaging_technician", "system_admin"}),
    ("POST", f"/patients/{ID}/conditions", {"physician", "radiologist"}),
    ("POST", f"/patients/{ID}/conditions/bulk", {"physician", "radiologist"}),
    ("GET", f"/conditions/{ID}", {"physician", "radiologist", "imaging_technician", "system_admin"}),
    ("PATCH", f"/conditions/{ID}", {"physician", "radiologist"}),
    ("DELETE", f"/conditions/{ID}", {"physician", "radiologist", "system_admin"}),
    ("POST", f"/conditions/{ID}/restore", {"system_admin"}),
    ("POST", "/encounters", {"reception_staff", "physician"}),
    ("GET", "/encounters", ALL),
    ("GET", "/encounters/queue", {"reception_staff", "physician"}),
    ("GET", "/encounters/queue-stats", {"reception_staff", "physician", "system_admin"}),
    ("GET", "/encounters/stats", {"system_admin", "reception_staff", "physician"}),
    ("GET", f"/encounters/{ID}", ALL),
    ("PATCH", f"/encounters/{ID}", {"reception_staff", "physician"}),
    ("POST", f"/encounters/{ID}/arrive", {"reception_staff", "physician"}),
    ("POST", f"/encounters/{ID}/start", {"physician"}),
    ("POST", f"/encounters/{ID}/finish", {"physician"}),
    ("POST", f"/encounters/{ID}/return-to-queue", {"physician"}),
    ("POST", f"/encounters/{ID}/cancel", {"reception_staff", "physician", "system_admin"}),
    ("POST", f"/encounters/{ID}/transfer", {"physician", "system_admin"}),
    ("GET", f"/encounters/{ID}/vital-signs", ALL),
    ("POST", f"/encounters/{ID}/vital-signs", {"reception_staff", "physician"}),
    ("POST", f"/vital-signs/{ID}/retract", {"reception_staff", "physician"}),
]


@pytest.fixture(scope="module")
async def people(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, dict[str, str]]:
    found = {"system_admin": admin}
    for role in ALL - {"system_admin"}:
        person: Person = await make_user(api, admin, role)
        found[role] = person.headers
    return found


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_refused_roles_and_no_token(api: httpx.AsyncClient, people: dict[str, dict[str, str]], method: str,
                                          path: str, allowed: set[str]) -> None:
    assert (await api.request(method, path)).status_code == 401
    for role in sorted(ALL - allowed):
        r = await api.request(method, path, headers=people[role], json={})
        assert r.status_code == 403, f"{role} {method} {path}: {r.status_code} {r.text}"
        assert r.json()["code"] == "forbidden"
    for role in sorted(allowed):
        r = await api.request(method, path, headers=people[role], json={} if method != "GET" else None)
        assert r.status_code != 403 or r.json()["code"] != "forbidden", f"{role} was refused {method} {path}"
