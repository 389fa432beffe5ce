r"""QIDO-RS (imaging.md §7): `parse_qido` (edge) and `qido_search` (worker) against a real Postgres.

A private database of its own (migrated with `imagingctl migrate`, dropped at the end) holds a
small index inserted straight through the tables: five studies of four patients (accents, đ, an
apostrophe, case variants), their series and instances. Each matching rule of PS3.4 C.2.2.2 as the
spec narrows it is checked on its own, then the attributes returned, then the 400s of the parser,
then OHIF v3's requests replayed through both. No stack, no broker: the two functions directly.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contracts.errors import BadRequest
from contracts.imaging import QidoLevel, QidoMatch, QidoSearch
from contracts.settings import Settings
from edge.dicomweb.qido_params import parse_qido
from tests.support import PG_ADMIN
from workers.imaging.dicom_file import name_key
from workers.imaging.qido import plan_search, qido_search
from workers.imaging.tables import instances, series, studies

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://pacs.example.org"
DW = f"{BASE}/dicom-web"
SETTINGS = Settings()
STUDY, SERIES, INSTANCE = QidoLevel.STUDY, QidoLevel.SERIES, QidoLevel.INSTANCE

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SR_DOC = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

ROOT_UID = "1.2.826.0.1.3680043.8.498.7777"
UID_A, UID_B, UID_C, UID_D, UID_E = (f"{ROOT_UID}.{n}" for n in range(1, 6))


def pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


# ---------------------------------------------------------------- the index

STUDIES: list[dict[str, Any]] = [
    {  # A: newest of 2024-03-15, CT + SR, accents, UTF-8
        "uid": UID_A,
        "pid": "PID-001",
        "name": "Nguyễn^Văn^An",
        "birth": "19800101",
        "sex": "M",
        "accession": "ACC001",
        "study_id": "S1",
        "date": date(2024, 3, 15),
        "time": "101530.123",
        "description": "CT CHEST W CONTRAST",
        "referring": "Trần^Thị^Bình",
        "charset": "ISO_IR 192",
        "attributes": {
            "00100010": pn("Nguyễn^Văn^An"),
            "00101010": {"vr": "AS", "Value": ["044Y"]},
            "00100021": {"vr": "LO", "Value": ["HOSP-A"]},
            "00090010": {"vr": "LO", "Value": ["ACME 1.1"]},
            "00091001": {"vr": "LO", "Value": ["private value"]},
            "00091002": {"vr": "OB", "BulkDataURI": "/dicom-web/studies/x/bulk"},
            "00081030": {"vr": "LO", "Value": ["CT CHEST W CONTRAST"]},
        },
        "series": [
            {
                "uid": f"{UID_A}.1",
                "modality": "CT",
                "number": 1,
                "description": "Axial 5mm",
                "body": "CHEST",
                "sop_class": CT_IMAGE,
                "count": 3,
                "attributes": {"00200060": {"vr": "CS", "Value": ["L"]}},
            },
            {
                "uid": f"{UID_A}.2",
                "modality": "SR",
                "number": 2,
                "description": "Report",
                "body": None,
                "sop_class": SR_DOC,
                "count": 1,
                "attributes": {},
            },
        ],
    },
    {  # B: same patient, older, the name in upper case without accents
        "uid": UID_B,
        "pid": "PID-001",
        "name": "NGUYEN^VAN^AN",
        "birth": "19800101",
        "sex": "M",
        "accession": "ACC002",
        "study_id": "S2",
        "date": date(2023, 1, 10),
        "time": "0830",
        "description": "MR BRAIN",
        "referring": "Trần^Thị^Bình",
        "charset": "ISO_IR 100",
        "attributes": {},
        "series": [
            {
                "uid": f"{UID_B}.1",
                "modality": "MR",
                "number": 1,
                "description": "T1 SAG",
                "body": "HEAD",
                "sop_class": MR_IMAGE,
                "count": 2,
                "attributes": {},
            },
        ],
    },
    {  # C: the newest study
        "uid": UID_C,
        "pid": "PID-002",
        "name": "Doe^John",
        "birth": "19700202",
        "sex": "M",
        "accession": "XACC003",
        "study_id": "S3",
        "date": date(2024, 3, 16),
        "time": "235959",
        "description": "Chest PA",
        "referring": None,
        "charset": None,
        "attributes": {},
        "series": [
            {
                "uid": f"{UID_C}.1",
                "modality": "CR",
                "number": 1,
                "description": "PA",
                "body": "CHEST",
                "sop_class": CR_IMAGE,
                "count": 1,
                "attributes": {},
            },
        ],
    },
    {  # D: almost nothing known: no date, time, accession, description, charset
        "uid": UID_D,
        "pid": "PID-003",
        "name": "Lê^Thị^Đào",
        "birth": None,
        "sex": "F",
        "accession": None,
        "study_id": None,
        "date": None,
        "time": None,
        "description": None,
        "referring": None,
        "charset": None,
        "attributes": {},
        "series": [
            {
                "uid": f"{UID_D}.1",
                "modality": "US",
                "number": None,
                "description": None,
                "body": None,
                "sop_class": US_IMAGE,
                "count": 1,
                "attributes": {},
            },
        ],
    },
    {  # E: same day as A, earlier; a lower-case PatientID (PatientID matching is case-sensitive)
        "uid": UID_E,
        "pid": "pid-001",
        "name": "O'Brien^Seán",
        "birth": "19900303",
        "sex": "M",
        "accession": "ACC005",
        "study_id": "S5",
        "date": date(2024, 3, 15),
        "time": "0900",
        "description": "CT/MR follow-up",
        "referring": "Smith^Jane",
        "charset": None,
        "attributes": {},
        "series": [
            {
                "uid": f"{UID_E}.1",
                "modality": "CT",
                "number": 2,
                "description": "Late",
                "body": "ABDOMEN",
                "sop_class": CT_IMAGE,
                "count": 1,
                "attributes": {},
            },
            {
                "uid": f"{UID_E}.2",
                "modality": "MR",
                "number": 1,
                "description": "Early",
                "body": "ABDOMEN",
                "sop_class": MR_IMAGE,
                "count": 1,
                "attributes": {},
            },
        ],
    },
]
ORDER = [UID_C, UID_A, UID_E, UID_B, UID_D]  # StudyDate, StudyTime newest first, unknown date last


def instance_metadata(study: dict[str, Any], se: dict[str, Any], sop: str, number: int) -> str:
    doc = {
        "00080016": {"vr": "UI", "Value": [se["sop_class"]]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080060": {"vr": "CS", "Value": [se["modality"]]},
        "00100010": pn(study["name"]),
        "0020000D": {"vr": "UI", "Value": [study["uid"]]},
        "0020000E": {"vr": "UI", "Value": [se["uid"]]},
        "00200013": {"vr": "IS", "Value": [number]},
        "00200032": {"vr": "DS", "Value": [-125.0, -125.0, float(number) * 5]},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
        "7FE00010": {"vr": "OW", "BulkDataURI": f"/dicom-web/studies/{study['uid']}/bulk/7FE00010"},
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


async def load(conn: AsyncConnection) -> None:
    now = datetime(2024, 3, 17, 8, 0, tzinfo=UTC)
    for st in STUDIES:
        study_id = uuid.uuid4()
        n_instances = sum(se["count"] for se in st["series"])
        await conn.execute(
            studies.insert().values(
                id=study_id,
                study_instance_uid=st["uid"],
                match_status="unmatched",
                patient_id_in_file=st["pid"],
                patient_name_in_file=st["name"],
                patient_name_key=name_key(st["name"]),
                patient_birth_date=st["birth"],
                patient_sex=st["sex"],
                accession_number=st["accession"],
                study_id_tag=st["study_id"],
                study_date=st["date"],
                study_time=st["time"],
                study_description=st["description"],
                referring_physician_name=st["referring"],
                modalities_in_study=sorted({se["modality"] for se in st["series"]}),
                number_of_series=len(st["series"]),
                number_of_instances=n_instances,
                attributes=st["attributes"],
                specific_character_set=st["charset"],
                received_at=now,
                last_instance_at=now,
            )
        )
        for se in st["series"]:
            series_id = uuid.uuid4()
            await conn.execute(
                series.insert().values(
                    id=series_id,
                    study_id=study_id,
                    series_instance_uid=se["uid"],
                    modality=se["modality"],
                    series_number=se["number"],
                    series_description=se["description"],
                    body_part_examined=se["body"],
                    series_date=st["date"],
                    series_time=st["time"],
                    number_of_instances=se["count"],
                    attributes=se["attributes"],
                    specific_character_set=st["charset"],
                )
            )
            for n in range(1, se["count"] + 1):
                sop = f"{se['uid']}.{n}"
                await conn.execute(
                    instances.insert().values(
                        id=uuid.uuid4(),
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=sop,
                        sop_class_uid=se["sop_class"],
                        instance_number=n,
                        transfer_syntax_uid=EXPLICIT_LE,
                        number_of_frames=1,
                        rows=512 if se["modality"] != "SR" else None,
                        columns=512 if se["modality"] != "SR" else None,
                        bits_allocated=16 if se["modality"] != "SR" else None,
                        size_bytes=1000,
                        sha256="0" * 64,
                        file_name=f"{sop}.dcm",
                        source="upload",
                        blob_key=f"objects/{sop}",
                        metadata=instance_metadata(st, se, sop, n),
                        specific_character_set=st["charset"],
                        stored_at=now,
                    )
                )


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    name = f"imaging_qido_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("imagingctl")), "migrate"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "ENVIRONMENT": "test"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        eng = create_async_engine("postgresql+asyncpg://" + url.split("://", 1)[1], pool_size=2)
        async with eng.begin() as conn:
            await load(conn)
        try:
            yield eng
        finally:
            await eng.dispose()
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# ---------------------------------------------------------------- helpers


def parse(
    level: QidoLevel,
    query: str | list[tuple[str, str]],
    study: str | None = None,
    series_uid: str | None = None,
    settings: Settings = SETTINGS,
) -> QidoSearch:
    if isinstance(query, str):
        from urllib.parse import parse_qsl

        pairs = parse_qsl(query, keep_blank_values=True)
    else:
        pairs = query
    return parse_qido(level, pairs, study_instance_uid=study, series_instance_uid=series_uid, settings=settings)


async def run(engine: AsyncEngine, q: QidoSearch) -> tuple[list[dict[str, Any]], list[str]]:
    async with engine.connect() as conn:
        body, warnings = await qido_search(conn, q, base_url=BASE + "/")
    return msgspec.json.decode(body), warnings


async def search(
    engine: AsyncEngine,
    level: QidoLevel,
    query: str | list[tuple[str, str]] = "",
    study: str | None = None,
    series_uid: str | None = None,
) -> list[dict[str, Any]]:
    q = parse(level, query, study, series_uid)
    items, _ = await run(engine, q)
    return items


def value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value")
    return values[0] if values else None


def uids(items: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [value(o, tag) for o in items]


# ---------------------------------------------------------------- matching


async def test_study_list_order_and_defaults(engine: AsyncEngine) -> None:
    items = await search(engine, STUDY)
    assert uids(items) == ORDER
    a = items[ORDER.index(UID_A)]
    assert list(a) == sorted(a), "keys sorted by tag"
    assert a["00100010"] == pn("Nguyễn^Văn^An")
    assert a["00080020"] == {"vr": "DA", "Value": ["20240315"]}
    assert a["00080030"] == {"vr": "TM", "Value": ["101530.123"]}
    assert a["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert a["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert a["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert a["00080090"] == pn("Trần^Thị^Bình")
    assert a["00100030"] == {"vr": "DA", "Value": ["19800101"]}
    assert a["00100040"] == {"vr": "CS", "Value": ["M"]}
    assert a["00200010"] == {"vr": "SH", "Value": ["S1"]}
    assert a["00201206"] == {"vr": "IS", "Value": [2]}
    assert a["00201208"] == {"vr": "IS", "Value": [4]}
    assert a["00081190"] == {"vr": "UR", "Value": [f"{DW}/studies/{UID_A}"]}
    assert "00081030" not in a, "StudyDescription is not a default attribute"
    assert set(a) == {
        "00080005",
        "00080020",
        "00080030",
        "00080050",
        "00080056",
        "00080061",
        "00080090",
        "00081190",
        "00100010",
        "00100020",
        "00100030",
        "00100040",
        "0020000D",
        "00200010",
        "00201206",
        "00201208",
    }


async def test_defaults_without_data_are_returned_empty(engine: AsyncEngine) -> None:
    [d] = await search(engine, STUDY, f"StudyInstanceUID={UID_D}")
    assert d["00080020"] == {"vr": "DA"}
    assert d["00080030"] == {"vr": "TM"}
    assert d["00080050"] == {"vr": "SH"}
    assert d["00080090"] == {"vr": "PN"}
    assert d["00100030"] == {"vr": "DA"}
    assert d["00200010"] == {"vr": "SH"}
    assert "00080005" not in d, "SpecificCharacterSet is never sent empty (PS3.4 C.2.2.2)"
    assert d["00100010"] == pn("Lê^Thị^Đào")


async def test_single_value_is_case_sensitive_except_pn(engine: AsyncEngine) -> None:
    assert sorted(uids(await search(engine, STUDY, "PatientID=PID-001"))) == [UID_A, UID_B]
    assert uids(await search(engine, STUDY, "PatientID=pid-001")) == [UID_E]
    assert uids(await search(engine, STUDY, "00100020=PID-002")) == [UID_C]
    assert uids(await search(engine, STUDY, "AccessionNumber=acc001")) == []
    assert uids(await search(engine, STUDY, "StudyDescription=Chest PA")) == [UID_C]
    assert uids(await search(engine, STUDY, "StudyID=S2")) == [UID_B]
    # PN: case- and accent-insensitive (đ is d), the whole value
    assert uids(await search(engine, STUDY, "PatientName=doe^JOHN")) == [UID_C]
    assert uids(await search(engine, STUDY, "PatientName=nguyen^van^an")) == [UID_A, UID_B]
    assert uids(await search(engine, STUDY, "PatientName=NGUYỄN^VĂN^AN")) == [UID_A, UID_B]
    assert uids(await search(engine, STUDY, "PatientName=le^thi^dao")) == [UID_D]
    assert uids(await search(engine, STUDY, "PatientName=nguyen^van")) == [], "single value: the whole name"
    assert uids(await search(engine, STUDY, "ReferringPhysicianName=tran^thi^binh")) == [UID_A, UID_B]


async def test_tag_keys_in_either_case(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, f"0020000d={UID_C}")) == [UID_C]
    assert uids(await search(engine, SERIES, f"0020000e={UID_A}.2"), "0020000E") == [f"{UID_A}.2"]


async def test_uid_lists(engine: AsyncEngine) -> None:
    for query in (
        f"StudyInstanceUID={UID_A},{UID_C}",
        f"StudyInstanceUID={UID_A}\\{UID_C}",
        [("StudyInstanceUID", UID_A), ("0020000D", UID_C)],
        f"StudyInstanceUID={UID_A},{UID_C}\\{UID_A}",
    ):
        assert uids(await search(engine, STUDY, query)) == [UID_C, UID_A], query
    items = await search(engine, INSTANCE, f"SOPInstanceUID={UID_A}.1.2\\{UID_B}.1.1")
    assert sorted(uids(items, "00080018")) == [f"{UID_A}.1.2", f"{UID_B}.1.1"]
    items = await search(engine, INSTANCE, f"SOPClassUID={MR_IMAGE},{CR_IMAGE}")
    assert len(items) == 2 + 1 + 1  # B's two MR, E's one MR, C's CR


async def test_wildcards(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, "PatientID=PID-00?")) == [UID_C, UID_A, UID_B, UID_D]
    assert uids(await search(engine, STUDY, "AccessionNumber=*ACC00*")) == [UID_C, UID_A, UID_E, UID_B]
    assert uids(await search(engine, STUDY, "AccessionNumber=ACC*")) == [UID_A, UID_E, UID_B]
    assert uids(await search(engine, STUDY, "AccessionNumber=ACC00?")) == [UID_A, UID_E, UID_B]
    assert uids(await search(engine, STUDY, "StudyDescription=*chest*")) == [], "LO wildcards are case-sensitive"
    assert uids(await search(engine, STUDY, "StudyDescription=*CHEST*")) == [UID_A]
    # % and _ are not wildcards: they are escaped in LIKE
    assert uids(await search(engine, STUDY, "PatientID=PID%")) == []
    assert uids(await search(engine, STUDY, "PatientID=PID_00*")) == []
    assert uids(await search(engine, STUDY, "StudyDescription=CT/MR*")) == [UID_E]
    # PN wildcards: case- and accent-insensitive
    assert uids(await search(engine, STUDY, "PatientName=*DOE*")) == [UID_C]
    assert uids(await search(engine, STUDY, "PatientName=*dao")) == [UID_D]
    assert uids(await search(engine, STUDY, "PatientName=o'brien^sean")) == [UID_E]
    assert uids(await search(engine, STUDY, "PatientName=nguy*")) == [UID_A, UID_B]
    assert uids(await search(engine, STUDY, "PatientName=o'brien^se?n")) == [UID_E]
    # "*" alone is universal matching
    assert uids(await search(engine, STUDY, "PatientID=*")) == ORDER
    assert uids(await search(engine, SERIES, "Modality=C?", UID_A), "0020000E") == [f"{UID_A}.1"]


async def test_fuzzy_person_names(engine: AsyncEngine) -> None:
    async def fuzzy(name: str) -> list[str]:
        return uids(await search(engine, STUDY, [("PatientName", name), ("fuzzymatching", "true")]))

    assert await fuzzy("nguyen") == [UID_A, UID_B]
    assert await fuzzy("NGUYỄN") == [UID_A, UID_B]
    assert await fuzzy("van an") == [UID_A, UID_B]
    assert await fuzzy("An^Nguyen") == [UID_A, UID_B], "each word starts some component, in any order"
    assert await fuzzy("an") == [UID_A, UID_B]
    assert await fuzzy("guyen") == [], "start of a component only"
    assert await fuzzy("dao") == [UID_D], "d finds đ"
    assert await fuzzy("Đào") == [UID_D]
    assert await fuzzy("le thi") == [UID_D]
    assert await fuzzy("brien") == [UID_E]
    assert await fuzzy("sean") == [UID_E]
    assert await fuzzy("j") == [UID_C]
    assert await fuzzy("d*") == [UID_C, UID_D], "wildcards still work: doe and đào"
    assert await fuzzy("*") == ORDER
    # without fuzzymatching the same words match nothing
    assert uids(await search(engine, STUDY, "PatientName=nguyen&fuzzymatching=false")) == []


async def test_date_ranges(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, "StudyDate=20240315")) == [UID_A, UID_E]
    assert uids(await search(engine, STUDY, "StudyDate=20240315-20240316")) == [UID_C, UID_A, UID_E]
    assert uids(await search(engine, STUDY, "StudyDate=20240101-")) == [UID_C, UID_A, UID_E]
    assert uids(await search(engine, STUDY, "StudyDate=-20231231")) == [UID_B]
    assert uids(await search(engine, STUDY, "00080020=20230110-20230110")) == [UID_B]
    assert uids(await search(engine, STUDY, "StudyDate=20200101-20221231")) == []


async def test_time_ranges(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, "StudyTime=1000-1100")) == [UID_A]
    assert uids(await search(engine, STUDY, "StudyTime=-09")) == [UID_E, UID_B], "-09 covers 09:59:59"
    assert uids(await search(engine, STUDY, "StudyTime=-0859")) == [UID_B]
    assert uids(await search(engine, STUDY, "StudyTime=2359-")) == [UID_C]
    assert uids(await search(engine, STUDY, "StudyTime=10")) == [UID_A]
    assert uids(await search(engine, STUDY, "StudyTime=101530")) == [UID_A], "fraction ignored"
    assert uids(await search(engine, STUDY, "StudyTime=08:30")) == [UID_B], "ACR-NEMA colons accepted"
    assert uids(await search(engine, STUDY, "StudyDate=20240315&StudyTime=-0959")) == [UID_E]


async def test_universal_matching_returns_the_attribute(engine: AsyncEngine) -> None:
    items = await search(engine, STUDY, "StudyDescription=&PatientID=")
    assert uids(items) == ORDER
    by_uid = {value(o, "0020000D"): o for o in items}
    assert by_uid[UID_C]["00081030"] == {"vr": "LO", "Value": ["Chest PA"]}
    assert by_uid[UID_D]["00081030"] == {"vr": "LO"}, "a universal key is returned even when empty"
    items = await search(engine, SERIES, "BodyPartExamined=", UID_A)
    assert [o["00180015"] for o in items] == [{"vr": "CS", "Value": ["CHEST"]}, {"vr": "CS"}]


async def test_modalities_in_study(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, "ModalitiesInStudy=CT")) == [UID_A, UID_E]
    assert uids(await search(engine, STUDY, "ModalitiesInStudy=MR\\US")) == [UID_E, UID_B, UID_D]
    assert uids(await search(engine, STUDY, "ModalitiesInStudy=MR,SR")) == [UID_A, UID_E, UID_B]
    assert uids(await search(engine, STUDY, [("ModalitiesInStudy", "CR"), ("ModalitiesInStudy", "US")])) == [
        UID_C,
        UID_D,
    ]
    assert uids(await search(engine, STUDY, "ModalitiesInStudy=S*")) == [UID_A]
    assert uids(await search(engine, STUDY, "ModalitiesInStudy=XA")) == []


async def test_series_level(engine: AsyncEngine) -> None:
    items = await search(engine, SERIES, "", UID_A)
    assert uids(items, "0020000E") == [f"{UID_A}.1", f"{UID_A}.2"]
    first = items[0]
    assert list(first) == sorted(first)
    assert set(first) == {
        "00080005",
        "00080021",
        "00080031",
        "00080060",
        "0008103E",
        "00081190",
        "00180015",
        "0020000D",
        "0020000E",
        "00200011",
        "00201209",
    }
    assert first["0020000D"] == {"vr": "UI", "Value": [UID_A]}
    assert first["00201209"] == {"vr": "IS", "Value": [3]}
    assert first["00200011"] == {"vr": "IS", "Value": [1]}
    assert first["00080021"] == {"vr": "DA", "Value": ["20240315"]}
    assert first["00081190"] == {"vr": "UR", "Value": [f"{DW}/studies/{UID_A}/series/{UID_A}.1"]}
    # SeriesNumber orders the series, not their UIDs
    assert uids(await search(engine, SERIES, "", UID_E), "0020000E") == [f"{UID_E}.2", f"{UID_E}.1"]
    assert uids(await search(engine, SERIES, "SeriesNumber=2", UID_E), "0020000E") == [f"{UID_E}.1"]
    assert await search(engine, SERIES, "", "1.2.3.4.5") == []


async def test_all_series_add_the_study_attributes(engine: AsyncEngine) -> None:
    items = await search(engine, SERIES, "Modality=CT")
    assert uids(items, "0020000E") == [f"{UID_A}.1", f"{UID_E}.1"], "in study order"
    a1 = items[0]
    assert a1["00100010"] == pn("Nguyễn^Văn^An") and a1["00201208"] == {"vr": "IS", "Value": [4]}
    assert a1["00081190"]["Value"] == [f"{DW}/studies/{UID_A}/series/{UID_A}.1"], "the series' RetrieveURL wins"
    items = await search(engine, SERIES, "PatientID=PID-001&Modality=MR")
    assert uids(items, "0020000E") == [f"{UID_B}.1"]
    assert uids(await search(engine, SERIES, "PatientName=*o'brien*&SeriesDescription=Early"), "0020000E") == [
        f"{UID_E}.2"
    ]


async def test_instance_levels(engine: AsyncEngine) -> None:
    items = await search(engine, INSTANCE, "", UID_A, f"{UID_A}.1")
    assert uids(items, "00080018") == [f"{UID_A}.1.1", f"{UID_A}.1.2", f"{UID_A}.1.3"]
    one = items[1]
    assert set(one) == {
        "00080005",
        "00080016",
        "00080018",
        "00081190",
        "0020000D",
        "0020000E",
        "00200013",
        "00280008",
        "00280010",
        "00280011",
        "00280100",
    }
    assert one["00280010"] == {"vr": "US", "Value": [512]}
    assert one["00280008"] == {"vr": "IS", "Value": [1]}
    assert one["00200013"] == {"vr": "IS", "Value": [2]}
    assert one["00081190"]["Value"] == [f"{DW}/studies/{UID_A}/series/{UID_A}.1/instances/{UID_A}.1.2"]
    # study's instances: the series attributes come too, series by number then instance number
    items = await search(engine, INSTANCE, "", UID_E)
    assert uids(items, "00080018") == [f"{UID_E}.2.1", f"{UID_E}.1.1"]
    assert items[0]["00080060"] == {"vr": "CS", "Value": ["MR"]} and "00100010" not in items[0]
    # SR without pixels: Rows/Columns/BitsAllocated empty
    [sr] = await search(engine, INSTANCE, "Modality=SR", UID_A)
    assert sr["00280010"] == {"vr": "US"} and sr["00080016"]["Value"] == [SR_DOC]
    assert uids(await search(engine, INSTANCE, "InstanceNumber=3", UID_A, f"{UID_A}.1"), "00080018") == [f"{UID_A}.1.3"]


async def test_cross_level_instances_with_study_keys(engine: AsyncEngine) -> None:
    items = await search(engine, INSTANCE, "PatientID=PID-002")
    assert uids(items, "00080018") == [f"{UID_C}.1.1"]
    [c] = items
    assert c["00100010"] == pn("Doe^John") and c["00080020"]["Value"] == ["20240316"], "study defaults"
    assert c["00080060"]["Value"] == ["CR"] and c["0020000E"]["Value"] == [f"{UID_C}.1"], "series defaults"
    items = await search(engine, INSTANCE, "PatientName=nguy*&Modality=CT&StudyDate=20240101-")
    assert uids(items, "00080018") == [f"{UID_A}.1.1", f"{UID_A}.1.2", f"{UID_A}.1.3"]
    items = await search(engine, INSTANCE, "ModalitiesInStudy=MR&limit=3")
    assert uids(items, "00080018") == [f"{UID_E}.2.1", f"{UID_E}.1.1", f"{UID_B}.1.1"]


async def test_limit_offset_and_clamp(engine: AsyncEngine) -> None:
    assert uids(await search(engine, STUDY, "limit=2")) == ORDER[:2]
    assert uids(await search(engine, STUDY, "limit=2&offset=2")) == ORDER[2:4]
    assert uids(await search(engine, STUDY, "offset=4")) == ORDER[4:]
    assert await search(engine, STUDY, "offset=5") == []
    assert await search(engine, STUDY, "limit=0") == []
    q = parse(STUDY, "limit=5000")
    assert q.limit == SETTINGS.qido_max_limit
    assert q.warnings and "5000" in q.warnings[0] and str(SETTINGS.qido_max_limit) in q.warnings[0]
    items, warnings = await run(engine, q)
    assert uids(items) == ORDER and warnings == [], "the worker does not repeat the edge's warnings"
    small = msgspec.structs.replace(SETTINGS, qido_max_limit=3, qido_default_limit=2)
    assert parse(STUDY, "", settings=small).limit == 2
    q = parse(STUDY, "limit=4", settings=small)
    assert q.limit == 3 and len(q.warnings) == 1
    assert len((await run(engine, q))[0]) == 3
    # a search that bypassed the edge is clamped by the worker, with its own warning
    items, warnings = await run(engine, QidoSearch(level=STUDY, limit=10**6))
    assert len(items) == 5 and len(warnings) == 1 and "1000000" in warnings[0]


async def test_unsupported_keys_are_ignored_with_a_warning(engine: AsyncEngine) -> None:
    q = parse(STUDY, "Modality=CT&PatientBirthDate=19800101&PatientID=PID-002")
    assert len(q.warnings) == 2
    assert "Modality (00080060)" in q.warnings[0] and "study level" in q.warnings[0]
    assert "PatientBirthDate" in q.warnings[1]
    assert [m.tag for m in q.matches] == ["00100020"]
    assert uids((await run(engine, q))[0]) == [UID_C]
    q = parse(SERIES, f"StudyInstanceUID={UID_B}&PatientID=PID-002", UID_A)
    assert len(q.warnings) == 2 and all("fixed by the path" in w for w in q.warnings)
    assert len((await run(engine, q))[0]) == 2
    q = parse(INSTANCE, f"SeriesInstanceUID={UID_B}.1&Modality=MR", UID_A, f"{UID_A}.1")
    assert len(q.warnings) == 2 and q.matches == []
    q = parse(STUDY, "ReferencedStudySequence.StudyInstanceUID=1.2&00081110.0020000D=1.2")
    assert len(q.warnings) == 2 and "sequence" in q.warnings[0] and q.matches == []
    q = parse(STUDY, "emptyvaluematching=true&multiplevaluematching=false&_=1712345678")
    assert q.warnings == [
        "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed."
    ]
    # the worker ignores (and reports) a key of the wrong level it is sent directly
    items, warnings = await run(engine, QidoSearch(level=STUDY, matches=[QidoMatch(tag="00080060", value="CT")]))
    assert len(items) == 5 and len(warnings) == 1 and "Modality" in warnings[0]


async def test_includefield(engine: AsyncEngine) -> None:
    async def study_a(query: str) -> dict[str, Any]:
        [a] = await search(engine, STUDY, f"StudyInstanceUID={UID_A}&{query}")
        return a

    a = await study_a("includefield=PatientAge")
    assert a["00101010"] == {"vr": "AS", "Value": ["044Y"]}
    a = await study_a("includefield=00100021")
    assert a["00100021"] == {"vr": "LO", "Value": ["HOSP-A"]}
    a = await study_a("includefield=PatientAge,00100021,StudyDescription")
    assert {"00101010", "00100021", "00081030"} <= set(a)
    a = await study_a("includefield=PatientAge&includefield=00100021&includefield=00081030")
    assert {"00101010", "00100021", "00081030"} <= set(a)
    assert list(a) == sorted(a)
    a = await study_a("includefield=00091001")
    assert a["00091001"]["Value"] == ["private value"] and a["00090010"]["Value"] == ["ACME 1.1"], "+ its creator"
    a = await study_a("includefield=00091002&includefield=OtherPatientNames&includefield=00080060")
    assert not {"00091002", "00101001", "00080060"} & set(a), "bulk data, absent and lower-level: left out"
    a = await study_a("includefield=all")
    assert {"00101010", "00100021", "00091001", "00081030"} <= set(a) and "00091002" not in a
    assert a["00201208"] == {"vr": "IS", "Value": [4]}, "defaults still there"
    # D has no StudyDescription: an includefield attribute without a value is left out
    [d] = await search(engine, STUDY, f"StudyInstanceUID={UID_D}&includefield=00081030")
    assert "00081030" not in d
    # series level: series attributes, study attributes by includefield too
    items = await search(engine, SERIES, "includefield=Laterality&includefield=StudyDescription,PatientAge", UID_A)
    assert items[0]["00200060"]["Value"] == ["L"] and "00200060" not in items[1]
    assert items[0]["00081030"]["Value"] == ["CT CHEST W CONTRAST"] and items[0]["00101010"]["Value"] == ["044Y"]
    items = await search(engine, SERIES, "includefield=all", UID_A)
    assert items[0]["00200060"]["Value"] == ["L"] and "00101010" not in items[0]
    # instance level: from the stored metadata, never the bulk data
    items = await search(engine, INSTANCE, "includefield=PixelSpacing,00200032,PixelData", UID_A, f"{UID_A}.1")
    assert items[0]["00280030"] == {"vr": "DS", "Value": [0.5, 0.5]}
    assert items[2]["00200032"]["Value"] == [-125.0, -125.0, 15.0]
    assert "7FE00010" not in items[0]
    items = await search(engine, INSTANCE, "includefield=all", UID_A, f"{UID_A}.1")
    assert {"00280030", "00200032", "00100010"} <= set(items[0]) and "7FE00010" not in items[0]
    assert items[0]["00280010"] == {"vr": "US", "Value": [512]}, "columns still win"
    q = parse(STUDY, "includefield=all,PatientAge")
    assert q.include_all and q.include_fields == ["00101010"]


async def test_computed_counts_and_urls(engine: AsyncEngine) -> None:
    items = await search(engine, STUDY, "PatientID=PID-001")
    assert [(value(o, "00201206"), value(o, "00201208")) for o in items] == [(2, 4), (1, 2)]
    items = await search(engine, SERIES, "", UID_A)
    assert [value(o, "00201209") for o in items] == [3, 1]
    assert [value(o, "00081190") for o in items] == [f"{DW}/studies/{UID_A}/series/{UID_A}.{n}" for n in (1, 2)]
    items = await search(engine, INSTANCE, "SOPInstanceUID=" + f"{UID_B}.1.2")
    assert value(items[0], "00081190") == f"{DW}/studies/{UID_B}/series/{UID_B}.1/instances/{UID_B}.1.2"
    assert value(items[0], "00080005") == "ISO_IR 100"


# ---------------------------------------------------------------- 400s


@pytest.mark.parametrize(
    ("level", "query", "field"),
    [
        (STUDY, "PatientNam=x", "PatientNam"),
        (STUDY, "patientname=x", "patientname"),
        (STUDY, "0010002G=x", "0010002G"),
        (STUDY, "001000200=x", "001000200"),
        (STUDY, "foo=bar", "foo"),
        (STUDY, "limit=abc", "limit"),
        (STUDY, "limit=-1", "limit"),
        (STUDY, "limit=1.5", "limit"),
        (STUDY, "limit=", "limit"),
        (STUDY, "offset=-5", "offset"),
        (STUDY, "offset=100001", "offset"),
        (STUDY, "limit=10&limit=20", "limit"),
        (STUDY, "fuzzymatching=yes", "fuzzymatching"),
        (STUDY, "emptyvaluematching=1", "emptyvaluematching"),
        (STUDY, "StudyDate=2024-01", "StudyDate"),
        (STUDY, "StudyDate=20240230", "StudyDate"),
        (STUDY, "StudyDate=20240301-20240201", "StudyDate"),
        (STUDY, "StudyDate=2024*", "StudyDate"),
        (STUDY, "StudyDate=-", "StudyDate"),
        (STUDY, "00080020=20240101-20240102-20240103", "00080020"),
        (STUDY, "StudyTime=25", "StudyTime"),
        (STUDY, "StudyTime=1261", "StudyTime"),
        (STUDY, "StudyTime=12-11", "StudyTime"),
        (STUDY, "StudyInstanceUID=abc", "StudyInstanceUID"),
        (STUDY, "StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        (STUDY, "PatientID=a\\b", "PatientID"),
        (STUDY, "PatientID=a&00100020=b", "00100020"),
        (STUDY, "includefield=PatientAgee", "includefield"),
        (STUDY, "includefield=0010101", "includefield"),
        (STUDY, "Foo.PatientID=1", "Foo.PatientID"),
        (SERIES, "SeriesNumber=one", "SeriesNumber"),
        (INSTANCE, "InstanceNumber=1-3", "InstanceNumber"),
        (STUDY, "PatientID=" + "x" * 1025, "PatientID"),
    ],
)
def test_parse_rejects(level: QidoLevel, query: str, field: str) -> None:
    from urllib.parse import parse_qsl

    with pytest.raises(BadRequest) as caught:
        parse(level, parse_qsl(query, keep_blank_values=True))
    assert caught.value.field == field, caught.value.detail
    assert caught.value.status == 400 and caught.value.detail


def test_parse_hints_at_case() -> None:
    with pytest.raises(BadRequest, match="did you mean PatientName"):
        parse(STUDY, "patientname=x")


def test_parse_rejects_bad_path_uids() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(SERIES, "", "not-a-uid")
    assert caught.value.field == "StudyInstanceUID"


def test_parse_result() -> None:
    q = parse(
        INSTANCE,
        f"00100020=P1&StudyInstanceUID={UID_A}\\{UID_B}&StudyInstanceUID={UID_C}"
        "&fuzzymatching=TRUE&limit=7&offset=3&includefield=00280030,Rows&includefield=00280030",
    )
    assert q.level == INSTANCE and q.fuzzy and q.limit == 7 and q.offset == 3
    assert [(m.tag, m.value) for m in q.matches] == [("00100020", "P1"), ("0020000D", f"{UID_A}\\{UID_B}\\{UID_C}")]
    assert q.include_fields == ["00280030", "00280010"]
    assert parse(STUDY, "").limit == SETTINGS.qido_default_limit
    q = parse(STUDY, "PatientName=&StudyDate=*&StudyInstanceUID=")
    assert [m.value for m in q.matches] == ["", "", ""]
    # the QidoSearch crosses the bus as JSON
    assert msgspec.json.decode(msgspec.json.encode(q), type=QidoSearch) == q


async def test_worker_rejects_malformed_values_it_is_sent(engine: AsyncEngine) -> None:
    for tag, bad in (("00080020", "2024"), ("00080030", "99"), ("0020000D", "x.y"), ("00200011", "two")):
        level = SERIES if tag == "00200011" else STUDY
        with pytest.raises(BadRequest):
            await run(engine, QidoSearch(level=level, matches=[QidoMatch(tag=tag, value=bad)]))


# ---------------------------------------------------------------- plans


async def test_plans_use_the_indexes(engine: AsyncEngine) -> None:
    """On this tiny table Postgres would scan; with sequential scans off, each query of the study
    list must still be answerable from an index (no Sort of the whole table for the page)."""
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        for query, indexes in (
            ("limit=101&offset=0", ("ix_studies_qido_order",)),
            ("00100020=PID-001", ("ix_studies_patient_in_file",)),
            (f"StudyInstanceUID={UID_A}", ("uq_studies_uid", "ix_studies_uid_prefix")),
        ):
            plan, _, _, _ = plan_search(parse(STUDY, query))
            assert plan is not None
            rows = (await conn.exec_driver_sql("EXPLAIN " + plan.sql, tuple(plan.params))).all()
            text = "\n".join(r[0] for r in rows)
            assert any(index in text for index in indexes), f"{query}:\n{text}"


async def test_pattern_queries_plan_with_their_values_and_reset(engine: AsyncEngine) -> None:
    """A LIKE/regex search is planned with its values (never a generic plan of the prepared
    statement) and leaves the connection's plan_cache_mode as it found it, in autocommit (as the
    worker runs queries) and in a transaction."""
    for options in ({"isolation_level": "AUTOCOMMIT"}, {}):
        async with engine.connect() as conn:
            await conn.execution_options(**options)
            for _ in range(7):  # past the five custom plans after which Postgres may go generic
                body, _w = await qido_search(conn, parse(STUDY, "PatientName=*nguy*"), base_url=BASE)
                assert len(msgspec.json.decode(body)) == 2
            assert (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar() == "auto"


# ---------------------------------------------------------------- OHIF v3


async def test_ohif_requests(engine: AsyncEngine) -> None:
    """The requests OHIF v3 (3.13) sends (imaging.md §7), as their query strings arrive."""
    from urllib.parse import parse_qsl

    def pairs(query: str) -> list[tuple[str, str]]:
        return parse_qsl(query, keep_blank_values=True)

    # study list
    q = parse(
        STUDY, pairs("limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030")
    )
    assert q.limit == 101 and not q.fuzzy and q.warnings == []
    items, warnings = await run(engine, q)
    assert uids(items) == ORDER and warnings == []
    assert items[0]["00081030"]["Value"] == ["Chest PA"] and "00080060" not in items[0]
    # list filtered: tag-number keys and wildcards, names, accession, date range, modalities
    for query, expected in (
        (
            "00100020=*PID-00*&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060",
            [UID_C, UID_A, UID_B, UID_D],
        ),
        ("PatientName=*nguyen*&limit=101&offset=0&fuzzymatching=false", [UID_A, UID_B]),
        ("PatientName=*Nguy%E1%BB%85n*&limit=101&offset=0&fuzzymatching=false", [UID_A, UID_B]),
        ("PatientName=tran*&StudyDate=20240101-20240316", []),
        ("PatientName=doe*&StudyDate=20240101-20240316", [UID_C]),
        ("PatientName=nguyen&limit=101&offset=0&fuzzymatching=true", [UID_A, UID_B]),
        ("AccessionNumber=*ACC00*&limit=101&offset=0&fuzzymatching=false", [UID_C, UID_A, UID_E, UID_B]),
        ("StudyDescription=*CHEST*&limit=101&offset=0&fuzzymatching=false", [UID_A]),
        ("StudyDate=20240101-20240315&limit=101&offset=0&fuzzymatching=false", [UID_A, UID_E]),
        ("StudyDate=19700102-20231231&limit=101&offset=0&fuzzymatching=false", [UID_B]),
        ("ModalitiesInStudy=CT%5CMR&limit=101&offset=0&fuzzymatching=false", [UID_A, UID_E, UID_B]),
        ("ModalitiesInStudy=CT&limit=101&offset=0&fuzzymatching=false", [UID_A, UID_E]),
    ):
        items, warnings = await run(engine, parse(STUDY, pairs(query)))
        assert uids(items) == expected, query
        assert warnings == []
    # row selected: the study's series
    items, _ = await run(engine, parse(SERIES, pairs("includefield=0008103E%2C00080021"), UID_A))
    assert uids(items, "0020000E") == [f"{UID_A}.1", f"{UID_A}.2"]
    assert items[0]["0008103E"]["Value"] == ["Axial 5mm"] and items[0]["00080021"]["Value"] == ["20240315"]
    # viewer: the study by UID (OHIF joins several with backslashes), its series, the patient's other studies
    query = (
        f"limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
        f"&StudyInstanceUID={UID_A}"
    )
    items, _ = await run(engine, parse(STUDY, pairs(query)))
    assert uids(items) == [UID_A]
    items, _ = await run(engine, parse(STUDY, pairs(f"StudyInstanceUID={UID_A}%5C{UID_B}")))
    assert uids(items) == [UID_A, UID_B]
    items, _ = await run(engine, parse(SERIES, pairs("includefield=00080021%2C00080031%2C0008103E%2C00200011"), UID_E))
    assert uids(items, "0020000E") == [f"{UID_E}.2", f"{UID_E}.1"]
    assert items[0]["00080031"]["Value"] == ["0900"] and items[0]["00200011"]["Value"] == [1]
    query = "00100020=PID-001&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
    items, _ = await run(engine, parse(STUDY, pairs(query)))
    assert uids(items) == [UID_A, UID_B]
