"""The whole stack with BLOB_STORE=cloudinary, against the local Cloudinary stand-in (the real SDK
speaks Cloudinary's wire format to it; every signature is checked): STOW, retrieval byte-identical,
frames, rendering, a failed part leaving nothing, deletion removing the study's folder. This stack also
runs IMAGING_SOP_CONFLICT=replace."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.cloudinary_standin import CloudinaryStandIn
from tests.dicom_factory import StudySpec, ct_instance, multipart_related, parse_multipart, series_files
from tests.support import PrivateServices, Stack, login

ROOT = Path(__file__).resolve().parents[2]
DW = "/dicom-web"
FOLDER = "pacs"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudinaryStandIn]:
    with CloudinaryStandIn(tmp_path_factory.mktemp("cloudinary")) as server:
        yield server


@pytest.fixture(scope="module")
def cloud_stack(standin: CloudinaryStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    private = PrivateServices.create()
    logs = tmp_path_factory.mktemp("cloud-logs")
    env = private.env(ROOT, logs, **standin.settings_env(), CLOUDINARY_FOLDER=FOLDER,
                      BLOB_DIR=str(tmp_path_factory.mktemp("cloud-spool")), ARGON2_TIME_COST="1",
                      ARGON2_MEMORY_KIB="8192", SHUTDOWN_GRACE="5s", IMAGING_SOP_CONFLICT="replace")
    stack = Stack(env, ROOT)
    try:
        stack.boot()
        yield stack
    finally:
        stack.stop_all()
        private.destroy()
        shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="module")
async def cloud_api(cloud_stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    async with httpx.AsyncClient(base_url=cloud_stack.edge_url, timeout=60) as client:
        r = await login(client, cloud_stack.env["ADMIN_EMAIL"], cloud_stack.env["ADMIN_PASSWORD"])
        assert r.status_code == 200, r.text
        yield client, {"Authorization": f"Bearer {r.json()['accessToken']}"}


def assets(standin: CloudinaryStandIn, below: str) -> list[str]:
    root = standin.asset_path(f"{FOLDER}/x").parent / below
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_dicomweb_on_cloudinary(cloud_api: tuple[httpx.AsyncClient, dict[str, str]],
                                      standin: CloudinaryStandIn) -> None:
    api, admin = cloud_api
    study = StudySpec()
    files = list(series_files(study, 3))
    body, ctype = multipart_related([*files, b"not DICOM" * 50])
    r = await api.post(f"{DW}/studies", content=body, headers={**admin, "Content-Type": ctype})
    assert r.status_code == 202, r.text
    assert len(r.json()["00081199"]["Value"]) == 3 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [
        0xC000]
    stored = assets(standin, f"studies/{study.study_uid}")
    assert stored == sorted(hashlib.sha256(f).hexdigest() for f in files)  # one folder per study, by content
    assert assets(standin, "staging") == []  # the failed part's and the promoted parts' staged copies are gone
    assert standin.calls["upload"] >= 4 and standin.calls["rename"] >= 3

    r = await api.get(f"{DW}/studies/{study.study_uid}",
                      headers={**admin, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    assert sorted(b for _, b in parse_multipart(r.content, r.headers["content-type"])) == sorted(files)
    ds = dcmread(io.BytesIO(files[1]))
    url = f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    r = await api.get(f"{url}/frames/1", headers=admin)
    assert parse_multipart(r.content, r.headers["content-type"])[0][1] == ds.PixelData
    r = await api.get(f"{url}/rendered", headers=admin)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"

    listed = (await api.get("/studies", params={"studyInstanceUid": study.study_uid}, headers=admin)).json()
    r = await api.request("DELETE", f"/studies/{listed['items'][0]['id']}", json={"reason": "test data"},
                          headers=admin)
    assert r.status_code == 204, r.text
    assert assets(standin, f"studies/{study.study_uid}") == []


async def test_signed_reads_only(cloud_api: tuple[httpx.AsyncClient, dict[str, str]],
                                 standin: CloudinaryStandIn) -> None:
    """The blobs are `authenticated` resources: a delivery URL without the SDK's signature is refused."""
    api, admin = cloud_api
    study = StudySpec()
    data = ct_instance(study)
    body, ctype = multipart_related([data])
    assert (await api.post(f"{DW}/studies", content=body, headers={**admin, "Content-Type": ctype})).status_code == 200
    key = f"{FOLDER}/studies/{study.study_uid}/{hashlib.sha256(data).hexdigest()}"
    async with httpx.AsyncClient() as raw:
        r = await raw.get(f"{standin.url}/{standin.cloud}/raw/authenticated/v1/{key}")
        assert r.status_code in (401, 403, 404)
        assert r.content != data


async def test_replace_policy(cloud_api: tuple[httpx.AsyncClient, dict[str, str]],
                              standin: CloudinaryStandIn) -> None:
    from tests.dicom_factory import new_uid

    api, admin = cloud_api
    study, sop, series = StudySpec(), new_uid(), new_uid()
    first = ct_instance(study, sop_uid=sop, series_uid=series, seed=1)
    second = ct_instance(study, sop_uid=sop, series_uid=series, seed=2)
    for data in (first, second):
        body, ctype = multipart_related([data])
        r = await api.post(f"{DW}/studies", content=body, headers={**admin, "Content-Type": ctype})
        assert r.status_code == 200, r.text
    assert assets(standin, f"studies/{study.study_uid}") == [hashlib.sha256(second).hexdigest()]
    url = f"{DW}/studies/{study.study_uid}/series/{series}/instances/{sop}"
    r = await api.get(url, headers={**admin, "Accept": "application/dicom"})
    assert r.content == second
    listed = (await api.get("/studies", params={"studyInstanceUid": study.study_uid}, headers=admin)).json()
    assert listed["items"][0]["numberOfInstances"] == 1
    r = await api.get(f"{url}/metadata", headers=admin)
    assert r.status_code == 200 and len(r.json()) == 1
    other_series = ct_instance(study, sop_uid=sop, series_uid=new_uid(), seed=3)
    body, ctype = multipart_related([other_series])
    r = await api.post(f"{DW}/studies", content=body, headers={**admin, "Content-Type": ctype})
    assert r.status_code == 409  # a replacement stays in its series
