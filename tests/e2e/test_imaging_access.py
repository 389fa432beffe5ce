"""The role rule of every study and DICOMweb route (imaging.md §3, §7): each role that must be
refused gets 403 `forbidden` before anything runs, no token gets 401, and every allowed role gets
past the rule."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Person, make_user

ALL = {"system_admin", "physician", "radiologist", "imaging_technician", "reception_staff"}
IMAGING = {"physician", "radiologist", "imaging_technician", "system_admin"}  # "Imaging+"
STORE = {"imaging_technician", "radiologist", "system_admin"}
ID = "00000000-0000-4000-8000-000000000099"
S, SE, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
INST = f"/dicom-web/studies/{S}/series/{SE}/instances/{SOP}"
ROUTES = [
    ("GET", "/studies", IMAGING),
    ("GET", "/studies/stats", IMAGING),
    ("GET", f"/studies/{ID}", IMAGING),
    ("GET", f"/studies/{ID}/series", IMAGING),
    ("GET", f"/series/{ID}", IMAGING),
    ("GET", f"/series/{ID}/instances", IMAGING),
    ("GET", f"/instances/{ID}", IMAGING),
    ("DELETE", f"/studies/{ID}", {"system_admin"}),
    ("POST", "/studies/upload", STORE),
    ("POST", "/dicom-web/studies", STORE),
    ("POST", f"/dicom-web/studies/{S}", STORE),
    ("GET", "/dicom-web/studies", IMAGING),
    ("GET", "/dicom-web/series", IMAGING),
    ("GET", "/dicom-web/instances", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/instances", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances", IMAGING),
    ("GET", f"/dicom-web/studies/{S}", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}", IMAGING),
    ("GET", INST, IMAGING),
    ("GET", f"/dicom-web/studies/{S}/metadata", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/metadata", IMAGING),
    ("GET", f"{INST}/metadata", IMAGING),
    ("GET", f"{INST}/frames/1", IMAGING),
    ("GET", f"{INST}/bulkdata/7FE00010", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/rendered", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/thumbnail", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/rendered", IMAGING),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/thumbnail", IMAGING),
    ("GET", f"{INST}/rendered", IMAGING),
    ("GET", f"{INST}/thumbnail", IMAGING),
    ("GET", f"{INST}/frames/1/rendered", IMAGING),
    ("GET", f"{INST}/frames/1/thumbnail", IMAGING),
]


@pytest.fixture(scope="module")
async def people(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, dict[str, str]]:
    found = {"system_admin": admin}
    for role in ALL - {"system_admin"}:
        person: Person = await make_user(api, admin, role)
        found[role] = person.headers
    return found


def test_every_imaging_route_is_in_the_matrix() -> None:
    from edge.app import create_app

    app = create_app()
    listed = {(m, p.split("?")[0]) for m, p, _ in ROUTES}
    for route in app.routes:
        path = route.path
        if not (path.startswith(("/dicom-web", "/studies", "/series", "/instances"))):
            continue
        for method in route.methods - {"OPTIONS", "HEAD"}:  # type: ignore[attr-defined]
            concrete = (path.replace("{study:str}", S).replace("{series:str}", SE).replace("{instance:str}", SOP)
                        .replace("{frames:str}", "1").replace("{path:path}", "7FE00010")
                        .replace("{study_id:uuid}", ID).replace("{series_id:uuid}", ID)
                        .replace("{instance_id:uuid}", ID))
            assert (method, concrete) in listed, f"{method} {path} is not in the role matrix"


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_refused_roles_and_no_token(api: httpx.AsyncClient, people: dict[str, dict[str, str]], method: str,
                                          path: str, allowed: set[str]) -> None:
    assert (await api.request(method, path)).status_code == 401
    for role in sorted(ALL - allowed):
        r = await api.request(method, path, headers=people[role])
        assert r.status_code == 403, f"{role} {method} {path}: {r.status_code} {r.text}"
        assert r.json()["code"] == "forbidden"
    for role in sorted(allowed):
        r = await api.request(method, path, headers=people[role])
        assert r.status_code != 403 or r.json()["code"] != "forbidden", f"{role} was refused {method} {path}"
        assert r.status_code < 500, f"{role} {method} {path}: {r.status_code} {r.text}"
