"""DICOM storage and DICOMweb over HTTP against the real stack: STOW-RS and the upload, the index
and its events, WADO-RS retrieve (byte-identical), metadata, frames, rendered images, QIDO-RS, the
REST study views, deletion, roles, and no orphan blob after a failure."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydicom import dcmread

from tests.dicom_factory import StudySpec, ct_instance, multipart_related, new_uid, parse_multipart, series_files
from tests.support import EventTap, Person, Stack, eventually, make_user

DW = "/dicom-web"
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
async def staff(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Person]:
    return {role: await make_user(api, admin, role) for role in
            ("imaging_technician", "radiologist", "physician", "reception_staff")}


@pytest.fixture(scope="module")
def tech(staff: dict[str, Person]) -> dict[str, str]:
    return staff["imaging_technician"].headers


async def stow(api: httpx.AsyncClient, headers: dict[str, str], files: list[bytes], study: str | None = None,
               ) -> httpx.Response:
    body, ctype = multipart_related(files)
    url = f"{DW}/studies" + (f"/{study}" if study else "")
    return await api.post(url, content=body, headers={**headers, "Content-Type": ctype,
                                                      "Accept": "application/dicom+json"})


def seq(doc: dict, tag: str) -> list[dict]:
    return doc.get(tag, {}).get("Value", [])


async def staging_empty(stack: Stack) -> bool:
    return not blob_files(stack, "staging")


def blob_files(stack: Stack, area: str) -> list[Path]:
    root = Path(stack.env["BLOB_DIR"]) / area
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_stow_stores_indexes_and_announces(api: httpx.AsyncClient, tech: dict[str, str], stack: Stack) -> None:
    study = StudySpec()
    files = list(series_files(study, 3))
    async with EventTap(stack.env["AMQP_URL"], "imaging.#") as tap:
        r = await stow(api, tech, files)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom+json")
        doc = r.json()
        refs = seq(doc, "00081199")
        assert len(refs) == 3 and "00081198" not in doc
        assert doc["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study.study_uid}")
        sops = {dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
        assert {ref["00081155"]["Value"][0] for ref in refs} == sops
        received = await tap.wait_for(lambda e: e["type"] == "imaging.study.received"
                                      and e["payload"]["studyInstanceUid"] == study.study_uid)
        assert received["payload"]["matchStatus"] == "unmatched" and received["payload"]["numberOfInstances"] == 3
        stored = await tap.wait_for(lambda e: e["type"] == "imaging.instances.stored"
                                    and e["payload"]["studyInstanceUid"] == study.study_uid)
        assert stored["payload"]["count"] == 3 and stored["payload"]["source"] == "stow"
        stable = await tap.wait_for(lambda e: e["type"] == "imaging.study.stabilized"
                                    and e["payload"]["studyInstanceUid"] == study.study_uid, timeout=15)
        assert stable["payload"]["numberOfInstances"] == 3
    assert r.headers.get("cross-origin-resource-policy") == "cross-origin"


async def test_same_bytes_again_succeed_other_bytes_conflict(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    study = StudySpec()
    sop = new_uid()
    series = new_uid()
    first = ct_instance(study, series_uid=series, sop_uid=sop, seed=1)
    assert (await stow(api, tech, [first])).status_code == 200
    again = await stow(api, tech, [first])
    assert again.status_code == 200
    ref = seq(again.json(), "00081199")[0]
    assert ref["00081196"]["Value"] == [0xB007]
    other = ct_instance(study, series_uid=series, sop_uid=sop, seed=2)
    r = await stow(api, tech, [other])
    assert r.status_code == 409, r.text
    failed = seq(r.json(), "00081198")
    assert failed[0]["00081197"]["Value"] == [0x0110] and failed[0]["00081155"]["Value"] == [sop]


async def test_partial_failure_is_202_and_leaves_no_blob(api: httpx.AsyncClient, tech: dict[str, str],
                                                         stack: Stack) -> None:
    before = len(blob_files(stack, "objects"))
    good = ct_instance(StudySpec())
    r = await stow(api, tech, [good, b"this is not a DICOM file at all" * 10, good[: len(good) // 2]])
    assert r.status_code == 202, r.text
    doc = r.json()
    assert len(seq(doc, "00081199")) == 1
    reasons = [f["00081197"]["Value"][0] for f in seq(doc, "00081198")]
    assert reasons == [0xC000, 0xC000]
    assert len(blob_files(stack, "objects")) == before + 1
    await eventually(lambda: staging_empty(stack))


async def test_stow_to_a_study_refuses_other_studies(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    a, b = StudySpec(), StudySpec()
    r = await stow(api, tech, [ct_instance(a), ct_instance(b)], study=a.study_uid)
    assert r.status_code == 202, r.text
    failed = seq(r.json(), "00081198")
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0x0110]
    assert r.json()["00081190"]["Value"][0].endswith(a.study_uid)


@pytest.mark.parametrize(("ctype", "body", "status", "field"), [
    ("application/dicom", b"x", 415, "Content-Type"),
    ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--", 415, "Content-Type"),
    ('multipart/related; type="application/dicom"', b"--x--", 400, "Content-Type"),
    ('multipart/related; type="application/dicom"; boundary=abc', b"--abc\r\nContent-Type: application/dicom\r\n\r\n"
     b"truncated without a closing delimiter", 400, "body"),
    ('multipart/related; type="application/dicom"; boundary=abc', b"--abc--\r\n", 400, "files"),
])
async def test_stow_bad_requests(api: httpx.AsyncClient, tech: dict[str, str], ctype: str, body: bytes, status: int,
                                 field: str) -> None:
    r = await api.post(f"{DW}/studies", content=body, headers={**tech, "Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["field"] == field


async def test_patient_matched_by_mrn(api: httpx.AsyncClient, tech: dict[str, str], staff: dict[str, Person],
                                      admin: dict[str, str]) -> None:
    r = await api.post("/patients", json={"firstName": "An", "lastName": "Nguyễn", "dateOfBirth": "1980-05-17",
                                          "gender": "female"}, headers=staff["reception_staff"].headers)
    assert r.status_code in (201, 409), r.text
    if r.status_code == 409:
        r = await api.post("/patients?allowDuplicate=true", json={"firstName": "An", "lastName": "Nguyễn",
                           "dateOfBirth": "1980-05-17", "gender": "female"}, headers=staff["reception_staff"].headers)
    patient = r.json()
    study = StudySpec(patient_id=patient["mrn"], patient_name="Nguyễn^An")
    assert (await stow(api, tech, [ct_instance(study)])).status_code == 200
    r = await api.get("/studies", params={"studyInstanceUid": study.study_uid}, headers=tech)
    item = r.json()["items"][0]
    assert item["matchStatus"] == "matched" and item["patientId"] == patient["id"]
    r = await api.get("/studies", params={"patientId": patient["id"]}, headers=staff["physician"].headers)
    assert [s["studyInstanceUid"] for s in r.json()["items"]] == [study.study_uid]
    r = await api.get(f"{DW}/studies", params={"PatientID": patient["mrn"]}, headers=staff["physician"].headers)
    assert [d["0020000D"]["Value"][0] for d in r.json()] == [study.study_uid]
    for action in ("imaging.list_studies", "imaging.qido_study"):
        assert await eventually(lambda action=action: _audited(api, admin, patient["id"], action))


async def _audited(api: httpx.AsyncClient, admin: dict[str, str], patient_id: str, action: str) -> bool:
    r = await api.get("/audit-events", params={"patientId": patient_id, "action": action}, headers=admin)
    return r.status_code == 200 and r.json()["total"] >= 1


async def test_retrieve_is_byte_identical(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    study = StudySpec()
    files = list(series_files(study, 2))
    implicit = ct_instance(study, implicit=True, instance_number=9)
    assert (await stow(api, tech, [*files, implicit])).status_code == 200
    ds0 = dcmread(io.BytesIO(files[0]))
    url = f"{DW}/studies/{study.study_uid}/series/{ds0.SeriesInstanceUID}/instances/{ds0.SOPInstanceUID}"
    r = await api.get(url, headers={**tech, "Accept": ANY_TS})
    assert r.status_code == 200
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1 and parts[0][1] == files[0]
    assert parts[0][0]["content-type"].startswith("application/dicom")
    r = await api.get(url, headers={**tech, "Accept": "application/dicom"})
    assert r.status_code == 200 and r.content == files[0]
    r = await api.get(f"{DW}/studies/{study.study_uid}", headers={**tech, "Accept": ANY_TS})
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert sorted(p[1] for p in parts) == sorted([*files, implicit])
    # No transfer-syntax: Explicit VR Little Endian; the implicit file is re-encoded, its data unchanged.
    imp = dcmread(io.BytesIO(implicit))
    url = f"{DW}/studies/{study.study_uid}/series/{imp.SeriesInstanceUID}/instances/{imp.SOPInstanceUID}"
    r = await api.get(url, headers={**tech, "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    (headers, data), = parse_multipart(r.content, r.headers["content-type"])
    out = dcmread(io.BytesIO(data))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and out.PixelData == imp.PixelData
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    r = await api.get(url, headers={**tech, "Accept": 'multipart/related; type="application/dicom"; '
                                                        'transfer-syntax=1.2.840.10008.1.2.4.50'})
    assert r.status_code == 406
    r = await api.get(f"{DW}/studies/{new_uid()}", headers={**tech, "Accept": ANY_TS})
    assert r.status_code == 404


def _bulk(el: object) -> str:
    return "bulk"


async def test_metadata_matches_pydicom(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    study = StudySpec()
    files = list(series_files(study, 3))
    assert (await stow(api, tech, files)).status_code == 200
    ds = dcmread(io.BytesIO(files[0]))
    r = await api.get(f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/metadata",
                      headers={**tech, "Accept": "application/dicom+json", "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip"
    docs = r.json()
    assert len(docs) == 3
    etag = r.headers["etag"]
    for doc, data in zip(docs, files, strict=True):
        expected = dcmread(io.BytesIO(data)).to_json_dict(bulk_data_threshold=1024,
                                                           bulk_data_element_handler=_bulk)
        uri = doc["7FE00010"].pop("BulkDataURI")
        assert uri.startswith("http") and "/bulkdata/7FE00010" in uri
        expected["7FE00010"].pop("BulkDataURI")
        assert doc == expected
    again = await api.get(f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/metadata",
                          headers={**tech, "If-None-Match": etag})
    assert again.status_code == 304
    # A new instance makes a new version: the cached document is not served stale.
    more = ct_instance(study, series_uid=ds.SeriesInstanceUID, instance_number=4)
    assert (await stow(api, tech, [more])).status_code == 200
    r = await api.get(f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/metadata", headers=tech)
    assert len(r.json()) == 4 and r.headers["etag"] != etag
    r = await api.get(f"{DW}/studies/{study.study_uid}/metadata", headers=tech)
    assert len(r.json()) == 4
    r = await api.get(f"{DW}/studies/{study.study_uid}/metadata", headers={**tech, "Accept": "image/png"})
    assert r.status_code == 406


async def test_frames_native(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    study = StudySpec()
    data = ct_instance(study, frames=4, rows=32, columns=48)
    assert (await stow(api, tech, [data])).status_code == 200
    ds = dcmread(io.BytesIO(data))
    url = f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    size = 32 * 48 * 2
    for accept in ("multipart/related; type=application/octet-stream; transfer-syntax=*",
                   'multipart/related; type="application/octet-stream"'):
        r = await api.get(f"{url}/frames/2,4", headers={**tech, "Accept": accept})
        assert r.status_code == 200, r.text
        parts = parse_multipart(r.content, r.headers["content-type"])
        assert [p[1] for p in parts] == [ds.PixelData[size:2 * size], ds.PixelData[3 * size:4 * size]]
        assert parts[0][0]["content-type"].startswith("application/octet-stream")
    r = await api.get(f"{url}/frames/5", headers=tech)
    assert r.status_code == 404 and r.json()["code"] == "frame_out_of_range"
    r = await api.get(f"{url}/frames/0", headers=tech)
    assert r.status_code == 400 and r.json()["field"] == "frames"
    r = await api.get(f"{url}/bulkdata/7FE00010", headers=tech)
    assert parse_multipart(r.content, r.headers["content-type"])[0][1] == ds.PixelData


async def test_rendered_and_thumbnail(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    study = StudySpec()
    data = ct_instance(study, rows=64, columns=96)
    assert (await stow(api, tech, [data])).status_code == 200
    ds = dcmread(io.BytesIO(data))
    url = f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    r = await api.get(f"{url}/rendered", headers=tech)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (96, 64)
    r = await api.get(f"{url}/rendered", params={"window": "40,400,sigmoid", "viewport": "48,48"},
                      headers={**tech, "Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (48, 32)
    r = await api.get(f"{url}/rendered", params={"window": "40,abc"}, headers=tech)
    assert r.status_code == 400 and r.json()["field"] == "window"
    for thumb in (f"{DW}/studies/{study.study_uid}/thumbnail", f"{url}/thumbnail", f"{url}/frames/1/thumbnail"):
        r = await api.get(thumb, headers=tech)
        assert r.status_code == 200, (thumb, r.text)
        assert max(Image.open(io.BytesIO(r.content)).size) <= 128


async def test_qido(api: httpx.AsyncClient, tech: dict[str, str], staff: dict[str, Person]) -> None:
    study = StudySpec(patient_name="Trần^Thị^Bình", study_date="20250102")
    files = list(series_files(study, 2))
    assert (await stow(api, tech, files)).status_code == 200
    r = await api.get(f"{DW}/studies", params={"PatientID": study.patient_id}, headers=tech)
    assert r.status_code == 200, r.text
    (doc,) = r.json()
    assert doc["0020000D"]["Value"] == [study.study_uid] and doc["00201208"]["Value"] == [2]
    assert doc["00080061"]["Value"] == ["CT"]
    # OHIF's study list, as it sends it.
    r = await api.get(f"{DW}/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C"
                      f"00080090%2C00100030&00100020={study.patient_id}", headers=staff["physician"].headers)
    assert r.status_code == 200 and len(r.json()) == 1
    r = await api.get(f"{DW}/studies/{study.study_uid}/series", params={"includefield": "0008103E,00080021"},
                      headers=tech)
    assert r.status_code == 200 and len(r.json()) == 1
    r = await api.get(f"{DW}/studies/{study.study_uid}/instances", headers=tech)
    assert r.status_code == 200 and len(r.json()) == 2
    r = await api.get(f"{DW}/studies", params={"PatientName": "tran*", "StudyDate": "20250101-20250103"},
                      headers=tech)
    assert study.study_uid in [d["0020000D"]["Value"][0] for d in r.json()]
    r = await api.get(f"{DW}/studies", params={"limit": "5000"}, headers=tech)
    assert r.status_code == 200 and "Warning" in r.headers
    r = await api.get(f"{DW}/studies", params={"NoSuchKeyword": "x"}, headers=tech)
    assert r.status_code == 400


@pytest.mark.parametrize(("role", "method", "path"), [
    ("reception_staff", "GET", f"{DW}/studies"),
    ("reception_staff", "GET", "/studies"),
    ("physician", "POST", f"{DW}/studies"),
    ("physician", "POST", "/studies/upload"),
    ("physician", "DELETE", "/studies/00000000-0000-0000-0000-000000000000"),
])
async def test_roles_refused(api: httpx.AsyncClient, staff: dict[str, Person], role: str, method: str,
                             path: str) -> None:
    r = await api.request(method, path, headers=staff[role].headers)
    assert r.status_code == 403, r.text
    r = await api.request(method, path)
    assert r.status_code == 401


async def test_upload_and_rest_views_and_delete(api: httpx.AsyncClient, tech: dict[str, str], admin: dict[str, str],
                                                stack: Stack) -> None:
    study = StudySpec()
    files = list(series_files(study, 3))
    form = [("files", (f"img{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    r = await api.post("/studies/upload", files=form, headers=tech)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 3 and [x["fileName"] for x in body["results"]] == ["img0.dcm", "img1.dcm", "img2.dcm"]
    study_id = body["results"][0]["studyId"]
    r = await api.post("/studies/upload", files=[("files", ("bad.dcm", b"garbage", "application/dicom"))],
                       headers=tech)
    assert r.status_code == 422 and r.json()["code"] == "upload_rejected"
    assert r.json()["results"][0]["code"] == "not_dicom"
    r = await api.post("/studies/upload", files=[("other", ("x", b"x", "text/plain"))], headers=tech)
    assert r.status_code == 400 and r.json()["field"] == "other"
    detail = (await api.get(f"/studies/{study_id}", headers=tech)).json()
    assert detail["numberOfInstances"] == 3 and len(detail["series"]) == 1 and detail["status"] == "scanned"
    series_id = detail["series"][0]["id"]
    r = await api.get(f"/series/{series_id}/instances", headers=tech)
    assert [i["instanceNumber"] for i in r.json()["items"]] == [1, 2, 3]
    instance = (await api.get(f"/instances/{r.json()['items'][0]['id']}", headers=tech)).json()
    assert instance["source"] == "upload" and instance["metadataUrl"].endswith("/metadata")
    stats = (await api.get("/studies/stats", headers=tech)).json()
    assert sum(s["total"] for s in stats["byStatus"]) >= 1
    objects = len(blob_files(stack, "objects"))
    async with EventTap(stack.env["AMQP_URL"], "imaging.study.deleted") as tap:
        r = await api.request("DELETE", f"/studies/{study_id}", json={"reason": "wrong patient"}, headers=admin)
        assert r.status_code == 204, r.text
        await tap.wait_for(lambda e: e["payload"]["studyId"] == study_id)
    assert (await api.get(f"/studies/{study_id}", headers=tech)).status_code == 404
    assert len(blob_files(stack, "objects")) == objects - 3
    r = await api.request("DELETE", f"/studies/{study_id}", json={"reason": "x"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "reason"


async def test_client_gone_mid_upload_leaves_nothing(tech: dict[str, str], stack: Stack) -> None:
    study = StudySpec()
    data = ct_instance(study, rows=256, columns=256)
    boundary = "cut"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    host, port = stack.edge_url.split("//")[1].split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    auth = tech["Authorization"]
    request = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
               f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n'
               f"Content-Length: {len(head) + len(data) * 3}\r\n\r\n").encode()
    writer.write(request + head + data + b"\r\n" + head + data[: len(data) // 2])
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: staging_empty(stack))
    async with httpx.AsyncClient(base_url=stack.edge_url) as api:
        r = await api.get(f"{DW}/studies", params={"StudyInstanceUID": study.study_uid}, headers=tech)
        assert r.json() == []


async def test_ohif_replay(api: httpx.AsyncClient, staff: dict[str, Person], tech: dict[str, str],
                           stack: Stack) -> None:
    """The requests OHIF v3 sends (imaging.md §7), as it sends them, with its CORS preflight."""
    study = StudySpec(patient_name="Lê^Văn^Đức", study_date="20240315", accession="OHIF" + new_uid()[-6:])
    files = list(series_files(study, 3))
    assert (await stow(api, tech, files)).status_code == 200
    ds = dcmread(io.BytesIO(files[0]))
    phy = staff["physician"].headers
    origin = "http://localhost:3000"
    pre = await api.options(f"{DW}/studies", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "authorization,accept"})
    assert pre.status_code in (200, 204) and pre.headers["access-control-allow-origin"] == origin
    listing = (f"{DW}/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C"
               "00080090%2C00100030")
    hdrs = {**phy, "Accept": "application/dicom+json", "Origin": origin}
    r = await api.get(listing, headers=hdrs)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert "warning" in r.headers.get("access-control-expose-headers", "").lower()
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    for query in (f"00100020=*{study.patient_id[2:6]}*", f"00100020={study.patient_id}",
                  "PatientName=*L%C3%AA*", "PatientName=le*", f"AccessionNumber={study.accession}",
                  "StudyDate=20240301-20240331", "ModalitiesInStudy=CT", f"StudyInstanceUID={study.study_uid}"):
        r = await api.get(f"{listing}&{query}", headers=hdrs)
        assert r.status_code == 200, (query, r.text)
        assert study.study_uid in [d["0020000D"]["Value"][0] for d in r.json()], query
    for include in ("0008103E%2C00080021", "00080021%2C00080031%2C0008103E%2C00200011"):
        r = await api.get(f"{DW}/studies/{study.study_uid}/series?includefield={include}", headers=hdrs)
        assert r.status_code == 200 and r.json()[0]["0020000E"]["Value"] == [ds.SeriesInstanceUID]
        assert "0008103E" in r.json()[0]
    r = await api.get(f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/metadata",
                      headers={**hdrs, "Accept-Encoding": "gzip, deflate, br"})
    assert r.status_code == 200 and len(r.json()) == 3
    for accept in ("multipart/related; type=application/octet-stream; transfer-syntax=*",
                   'multipart/related; type="application/octet-stream"; transfer-syntax=*'):
        for data in files:
            one = dcmread(io.BytesIO(data))
            r = await api.get(f"{DW}/studies/{study.study_uid}/series/{one.SeriesInstanceUID}/instances/"
                              f"{one.SOPInstanceUID}/frames/1", headers={**hdrs, "Accept": accept})
            assert r.status_code == 200
            assert parse_multipart(r.content, r.headers["content-type"])[0][1] == one.PixelData


async def test_edge_caches_stay_true_and_audited(api: httpx.AsyncClient, tech: dict[str, str],
                                                 staff: dict[str, Person], admin: dict[str, str]) -> None:
    """Answers the edge keeps (instance locations, QIDO bodies, metadata references) are never
    stale after a change, and a read answered from them is audited like any other."""
    r = await api.post("/patients?allowDuplicate=true", json={"firstName": "Cache", "lastName": "Reader",
                       "dateOfBirth": "1970-01-01", "gender": "male"}, headers=staff["reception_staff"].headers)
    patient = r.json()
    study = StudySpec(patient_id=patient["mrn"])
    data = ct_instance(study)
    assert (await stow(api, tech, [data])).status_code == 200
    ds = dcmread(io.BytesIO(data))
    frame = (f"{DW}/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
             "/frames/1")
    assert (await api.get(frame, headers=tech)).status_code == 200  # the technician's read fills the cache
    rad = staff["radiologist"]
    assert (await api.get(frame, headers=rad.headers)).status_code == 200  # the radiologist's is a cache hit

    async def audited() -> bool:
        r = await api.get("/audit-events", params={"patientId": patient["id"], "action": "imaging.wado_frames",
                                                   "actorId": rad.id}, headers=admin)
        return r.status_code == 200 and r.json()["total"] >= 1

    assert await eventually(audited)
    qido = f"{DW}/studies?PatientID={patient['mrn']}"
    assert len((await api.get(qido, headers=tech)).json()) == 1
    assert len((await api.get(qido, headers=tech)).json()) == 1
    second = StudySpec(patient_id=patient["mrn"])
    assert (await stow(api, tech, [ct_instance(second)])).status_code == 200
    assert len((await api.get(qido, headers=tech)).json()) == 2  # a new generation: not the cached answer
    study_id = (await api.get("/studies", params={"studyInstanceUid": study.study_uid}, headers=tech)
                ).json()["items"][0]["id"]
    r = await api.request("DELETE", f"/studies/{study_id}", json={"reason": "cache test"}, headers=admin)
    assert r.status_code == 204
    assert (await api.get(frame, headers=rad.headers)).status_code == 404  # the cached location's bytes are gone
    assert (await api.get(frame, headers=rad.headers)).status_code == 404
    assert len((await api.get(qido, headers=tech)).json()) == 1
