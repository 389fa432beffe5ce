"""Real and hostile files through the real stack: every file pydicom ships goes through the upload
and comes back byte-identical with metadata equal to pydicom's own DICOM JSON; frames of native, RLE
and JPEG files equal pydicom's frames; mutated files never produce a 5xx or an orphan blob."""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.dicom_factory import multipart_related, new_uid, parse_multipart
from tests.e2e.test_dicomweb import blob_files, staging_empty, stow
from tests.imaging.test_dicom_file import (
    ALL_FILES,
    DATA_ROOT,
    EXPECTED_REJECTIONS,
    parse,
    pydicom_json,
)
from tests.support import Person, Stack, eventually, make_user
from workers.imaging.dicom_file import InstanceRejected

DW = "/dicom-web"
ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
STORAGE_CODES = {"not_dicom", "malformed", "missing_attribute", "invalid_uid"}


@pytest.fixture(scope="module")
async def tech(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    person: Person = await make_user(api, admin, "imaging_technician")
    return person.headers


@dataclass
class Expected:
    status: str  # stored | already_stored | failed
    code: str | None = None


def expectations() -> dict[str, Expected]:
    """What the index must answer for each file, in upload order: the parser's verdict, then the
    business rules against what was stored before (pydicom's samples reuse UIDs across variants)."""
    sops: dict[str, str] = {}
    studies: dict[str, str] = {}
    series: dict[str, str] = {}
    out: dict[str, Expected] = {}
    for name in ALL_FILES:
        data = (DATA_ROOT / name).read_bytes()
        result = parse(DATA_ROOT / name)
        if isinstance(result, InstanceRejected):
            out[name] = Expected("failed", result.code)
            continue
        sha = hashlib.sha256(data).hexdigest()
        pid = (result.study.get("patient_id_in_file") or "").strip()
        if result.sop_instance_uid in sops:
            out[name] = Expected("already_stored") if sops[result.sop_instance_uid] == sha else \
                Expected("failed", "sop_instance_conflict")
            continue
        if result.study_instance_uid in studies and studies[result.study_instance_uid] != pid:
            out[name] = Expected("failed", "study_patient_mismatch")
            continue
        if series.get(result.series_instance_uid, result.study_instance_uid) != result.study_instance_uid:
            out[name] = Expected("failed", "series_study_mismatch")
            continue
        sops[result.sop_instance_uid] = sha
        studies.setdefault(result.study_instance_uid, pid)
        series.setdefault(result.series_instance_uid, result.study_instance_uid)
        out[name] = Expected("stored")
    return out


async def upload_one(api: httpx.AsyncClient, tech: dict[str, str], name: str, data: bytes) -> dict:
    r = await api.post("/studies/upload", files=[("files", (Path(name).name, data, "application/dicom"))],
                       headers=tech)
    assert r.status_code in (200, 422), (name, r.status_code, r.text)
    (result,) = r.json()["results"]
    return result


async def test_every_pydicom_file(api: httpx.AsyncClient, tech: dict[str, str], stack: Stack) -> None:
    expected = expectations()
    assert {n for n, e in expected.items() if e.status == "failed" and e.code in STORAGE_CODES} == \
        set(EXPECTED_REJECTIONS), "the parser's verdicts changed: see tests/imaging/test_dicom_file.py"
    stored: dict[str, dict] = {}
    for name in ALL_FILES:
        data = (DATA_ROOT / name).read_bytes()
        result = await upload_one(api, tech, name, data)
        want = expected[name]
        assert (result["status"], result.get("code")) == (want.status, want.code), (name, result)
        if want.status == "stored":
            stored[name] = result
    assert len(stored) > 60
    for name, result in stored.items():
        data = (DATA_ROOT / name).read_bytes()
        url = (f"{DW}/studies/{result['studyInstanceUid']}/series/{result['seriesInstanceUid']}"
               f"/instances/{result['sopInstanceUid']}")
        r = await api.get(url, headers={**tech, "Accept": ANY})
        assert r.status_code == 200, (name, r.text)
        (_, body), = parse_multipart(r.content, r.headers["content-type"])
        assert body == data, f"{name} did not come back byte-identical"
        r = await api.get(f"{url}/metadata", headers=tech)
        assert r.status_code == 200, (name, r.text)
        (doc,) = r.json()
        parsed = parse(DATA_ROOT / name)
        assert not isinstance(parsed, InstanceRejected)
        prefix = f"{stack.env.get('PUBLIC_BASE_URL', 'http://localhost:5000')}{DW}/studies/" \
                 f"{parsed.study_instance_uid}/series/{parsed.series_instance_uid}/instances/" \
                 f"{parsed.sop_instance_uid}/bulkdata/"
        assert doc == pydicom_json(DATA_ROOT / name, prefix), f"{name}: metadata differs from pydicom's"
    await eventually(lambda: staging_empty(stack))


FRAME_FILES = [
    "test_files/CT_small.dcm",  # native
    "test_files/MR_small_RLE.dcm",  # RLE
    "test_files/JPEG2000.dcm",  # JPEG 2000
    "test_files/SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "test_files/JPGExtended.dcm",  # JPEG extended
    "test_files/SC_rgb_rle_2frame.dcm",  # multi-frame RLE
    "test_files/examples_ybr_color.dcm",  # multi-frame JPEG
]


@pytest.mark.parametrize("name", FRAME_FILES)
async def test_frames_equal_pydicoms(api: httpx.AsyncClient, tech: dict[str, str], name: str,
                                     tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    ds = dcmread(DATA_ROOT / name)
    # pydicom's variants of one image share their UIDs: give this copy its own, pixel data untouched.
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path = tmp_path / "copy.dcm"
    path.write_bytes(buf.getvalue())
    parsed = parse(path)
    assert not isinstance(parsed, InstanceRejected) and parsed.pixel is not None
    result = await upload_one(api, tech, name, path.read_bytes())
    assert result["status"] == "stored", result
    ds = dcmread(path)
    frames = parsed.pixel.number_of_frames
    if parsed.pixel.encapsulated:
        expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
    else:
        size = len(ds.PixelData) // frames
        expected = [ds.PixelData[i * size:(i + 1) * size] for i in range(frames)]
    wanted = ",".join(str(n) for n in range(1, frames + 1))
    url = (f"{DW}/studies/{parsed.study_instance_uid}/series/{parsed.series_instance_uid}/instances/"
           f"{parsed.sop_instance_uid}/frames/{wanted}")
    r = await api.get(url, headers={**tech, "Accept": FRAMES_ANY})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r.content, r.headers["content-type"])
    got = [body for _, body in parts]
    if parsed.pixel.encapsulated:  # a frame's last fragment may carry one padding byte
        assert [g.rstrip(b"\0") for g in got] == [e.rstrip(b"\0") for e in expected]
        assert all(f"transfer-syntax={parsed.transfer_syntax_uid}" in h["content-type"] for h, _ in parts)
    else:
        assert got == expected


def mutations(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data[:n] for n in sorted(rng.sample(range(1, len(data)), 8))]  # truncated
    for _ in range(8):  # bytes flipped
        buf = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            buf[rng.randrange(132, len(buf))] ^= 0xFF
        out.append(bytes(buf))
    for _ in range(8):  # a length inflated (a 4-byte little-endian field somewhere after the preamble)
        buf = bytearray(data)
        at = rng.randrange(132, len(buf) - 4)
        buf[at:at + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x40", b"\xfe\xff\xff\xff"])
        out.append(bytes(buf))
    out.append(data[:128] + b"DICN" + data[132:])  # wrong magic
    out.append(b"\0" * 128 + b"DICM" + rng.randbytes(2000))  # garbage after a right preamble
    return out


async def test_mutated_files_never_5xx(api: httpx.AsyncClient, tech: dict[str, str], stack: Stack) -> None:
    rng = random.Random(20261206)
    sources = ["test_files/CT_small.dcm", "test_files/MR_small_RLE.dcm", "test_files/JPEG2000.dcm",
               "test_files/SC_rgb.dcm", "test_files/emri_small_jpeg_2k_lossless.dcm"]
    files = [m for name in sources if (DATA_ROOT / name).exists()
             for m in mutations((DATA_ROOT / name).read_bytes(), rng)]
    objects_before = {p.name for p in blob_files(stack, "objects")}
    stored_digests: set[str] = set()
    for start in range(0, len(files), 15):
        batch = files[start:start + 15]
        r = await stow(api, tech, batch)
        assert r.status_code in (200, 202, 409), r.text
        for ref in r.json().get("00081199", {}).get("Value", []):
            sop = ref["00081155"]["Value"][0]
            for data in batch:
                if sop.encode() in data:
                    stored_digests.add(hashlib.sha256(data).hexdigest())
                    break
    await eventually(lambda: staging_empty(stack))
    new_objects = {p.name for p in blob_files(stack, "objects")} - objects_before
    assert new_objects <= stored_digests, "a failed instance left a blob behind"


async def test_duplicate_sop_in_one_request(api: httpx.AsyncClient, tech: dict[str, str]) -> None:
    from tests.dicom_factory import StudySpec, ct_instance

    study, sop, series = StudySpec(), new_uid(), new_uid()
    a = ct_instance(study, sop_uid=sop, series_uid=series, seed=1)
    b = ct_instance(study, sop_uid=sop, series_uid=series, seed=2)
    r = await stow(api, tech, [a, a, b])
    assert r.status_code == 202, r.text
    assert len(r.json()["00081199"]["Value"]) == 2
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0110]
    body, ctype = multipart_related([a])
    assert io.BytesIO(body).read(2) == b"--" and ctype.startswith("multipart/related")
