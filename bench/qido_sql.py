"""QIDO-RS in the worker at scale: `parse_qido` + `qido_search` over a synthetic index of ~1,000,000
instances (10,000 studies of 100), straight against Postgres (no edge, broker or audit).

    python bench/qido_sql.py [--studies 10000] [--per-study 100] [--rounds 300] [--keep]
    python bench/qido_sql.py --database-url postgresql://postgres@127.0.0.1:5432/imaging_bench_x --skip-load

Without `--database-url` it creates a database of its own on the Postgres of TEST_PG_ADMIN_URL (like
the tests), runs the migrations (`imagingctl migrate`) and drops it at the end unless `--keep`.

1. Load (seeded): ~3,000 patients with Vietnamese and international names (accents, đ), 1–10
   studies each over five years (2 % without a date), 2–6 series per study of CT/MR/CR/DX/US/MG/PT,
   the instances shared among them; realistic study/series attribute subsets and a ~1 KB instance
   metadata document. COPYed with asyncpg's binary `copy_records_to_table`, then VACUUM (ANALYZE).
2. Queries, each run `--rounds` times (after a warm-up) on one autocommit connection (as the worker
   runs queries), timed from the query string to the JSON bytes (parse + SQL + rows + DICOM JSON): OHIF's
   study list, the
   patient's other studies (`00100020=<PatientID>`, a different patient every round), and for
   reference the other OHIF and common searches. p50 / p99 / max per query.
3. EXPLAIN (ANALYZE, BUFFERS) of the two target queries.

Target: p99 ≤ 20 ms for the study list and PatientID (no assertion: this prints figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contracts.imaging import QidoLevel  # noqa: E402 - after the path set-up
from contracts.settings import Settings  # noqa: E402
from edge.dicomweb.qido_params import parse_qido  # noqa: E402
from workers.imaging.dicom_file import name_key  # noqa: E402
from workers.imaging.qido import plan_search, qido_search  # noqa: E402

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT_UID = "1.2.826.0.1.3680043.8.498.4242"
FAMILY = ["Nguyễn"] * 38 + ["Trần"] * 11 + ["Lê"] * 9 + ["Phạm"] * 7 + ["Hoàng", "Huỳnh", "Phan", "Vũ", "Võ",
          "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"] * 2
MIDDLE = ["Văn", "Thị", "Hữu", "Đức", "Minh", "Ngọc", "Thanh", "Quốc"]
GIVEN = ["An", "Bình", "Châu", "Dũng", "Đạt", "Giang", "Hà", "Hải", "Hạnh", "Hùng", "Khánh", "Lan", "Linh",
         "Long", "Mai", "Nam", "Nga", "Phúc", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Vy", "Yến"]
WESTERN = [("Müller", "Jürgen"), ("O'Brien", "Seán"), ("García", "José"), ("Dupont", "Hélène"), ("Smith", "John"),
           ("Østergaard", "Søren"), ("Kowalski", "Łukasz"), ("Doe", "Jane")]
MODALITIES = {"CT": 0.3, "MR": 0.2, "CR": 0.15, "DX": 0.15, "US": 0.1, "MG": 0.05, "PT": 0.05}
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "CR": "1.2.840.10008.5.1.4.1.1.1",
             "DX": "1.2.840.10008.5.1.4.1.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1",
             "MG": "1.2.840.10008.5.1.4.1.1.1.2", "PT": "1.2.840.10008.5.1.4.1.1.128"}
BODY = ["CHEST", "HEAD", "ABDOMEN", "PELVIS", "SPINE", "KNEE", "BREAST", "NECK"]
DESCRIPTIONS = ["CT CHEST W CONTRAST", "MR BRAIN WO", "CHEST PA LAT", "ABDOMEN US", "MAMMO SCREENING",
                "PET CT WHOLE BODY", "CT HEAD WO", "KNEE MRI", "SPINE XR"]

STUDY_COLS = ["id", "study_instance_uid", "match_status", "patient_id_in_file", "patient_name_in_file",
              "patient_name_key", "patient_birth_date", "patient_sex", "accession_number", "study_id_tag", "study_date",
              "study_time", "study_description", "referring_physician_name", "modalities_in_study",
              "number_of_series", "number_of_instances", "status", "attributes", "specific_character_set",
              "received_at", "last_instance_at"]
SERIES_COLS = ["id", "study_id", "series_instance_uid", "modality", "series_number", "series_description",
               "body_part_examined", "series_date", "series_time", "protocol_name", "number_of_instances",
               "attributes", "specific_character_set"]
INSTANCE_COLS = ["id", "study_id", "series_id", "sop_instance_uid", "sop_class_uid", "instance_number",
                 "transfer_syntax_uid", "number_of_frames", "rows", "columns", "bits_allocated",
                 "photometric_interpretation", "size_bytes", "sha256", "file_name", "source", "blob_key", "metadata",
                 "specific_character_set", "stored_at"]


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def person(rng: random.Random) -> str:
    if rng.random() < 0.15:
        family, given = rng.choice(WESTERN)
        return f"{family}^{given}"
    return f"{rng.choice(FAMILY)}^{rng.choice(MIDDLE)}^{rng.choice(GIVEN)}"


class Generator:
    def __init__(self, studies: int, per_study: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.studies, self.per_study = studies, per_study
        self.patients = [(f"PID{n:07d}", person(self.rng), f"{self.rng.randint(1930, 2020)}0{self.rng.randint(1, 9)}15",
                          self.rng.choice("MF")) for n in range(max(1, studies * 3 // 10))]
        self.now = datetime.now(UTC)

    def study(self, n: int) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        rng = self.rng
        pid, name, birth, sex = rng.choice(self.patients)
        study_id, uid = uuid.uuid4(), f"{ROOT_UID}.{n + 1}"
        day = None if rng.random() < 0.02 else date(2021, 1, 1) + timedelta(days=rng.randrange(5 * 365))
        seconds = rng.randrange(86400)
        hhmmss = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        tm = None if day is None else f"{hhmmss}.{seconds % 997:03d}"
        n_series = rng.randint(2, 6)
        mods = rng.choices(list(MODALITIES), weights=list(MODALITIES.values()), k=n_series)
        counts = [1] * n_series
        for _ in range(self.per_study - n_series):
            counts[rng.randrange(n_series)] += 1
        accession = f"{n + 1:06d}{secrets.token_hex(3).upper()}"
        description = rng.choice(DESCRIPTIONS)
        referring = person(rng)
        attributes = {
            "00080020": el("DA", day.strftime("%Y%m%d")) if day else {"vr": "DA"},
            "00080030": el("TM", tm) if tm else {"vr": "TM"}, "00080050": el("SH", accession),
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": referring}]}, "00081030": el("LO", description),
            "00081032": {"vr": "SQ", "Value": [{"00080100": el("SH", "RPID17"), "00080102": el("SH", "RADLEX"),
                                                "00080104": el("LO", description)}]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}, "00100020": el("LO", pid),
            "00100021": el("LO", "HOSPITAL"), "00100030": el("DA", birth), "00100040": el("CS", sex),
            "00101010": el("AS", f"{rng.randint(1, 95):03d}Y"), "00101020": el("DS", 1.7),
            "00101030": el("DS", 65), "0020000D": el("UI", uid), "00200010": el("SH", str(n + 1)),
        }
        study = (study_id, uid, "unmatched", pid, name, name_key(name), birth, sex, accession, str(n + 1), day, tm,
                 description, referring, sorted(set(mods)), n_series, self.per_study, "scanned",
                 json.dumps(attributes, ensure_ascii=False), "ISO_IR 192", self.now, self.now)
        series_rows, instance_rows = [], []
        for s_no, (mod, count) in enumerate(zip(mods, counts, strict=True), start=1):
            series_id, se_uid = uuid.uuid4(), f"{uid}.{s_no}"
            body = rng.choice(BODY)
            se_attrs = {"00080060": el("CS", mod), "0008103E": el("LO", f"{mod} series {s_no}"),
                        "00180015": el("CS", body), "00181030": el("LO", f"{mod} protocol"),
                        "0020000E": el("UI", se_uid), "00200011": el("IS", s_no), "00200060": el("CS", "L")}
            series_rows.append((series_id, study_id, se_uid, mod, s_no, f"{mod} series {s_no}", body, day, tm,
                                f"{mod} protocol", count, json.dumps(se_attrs), "ISO_IR 192"))
            sop_class = SOP_CLASS[mod]
            for i_no in range(1, count + 1):
                sop = f"{se_uid}.{i_no}"
                metadata = msgspec.json.encode({
                    "00080005": el("CS", "ISO_IR 192"), "00080016": el("UI", sop_class), "00080018": el("UI", sop),
                    "00080060": el("CS", mod), "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
                    "00100020": el("LO", pid), "0020000D": el("UI", uid), "0020000E": el("UI", se_uid),
                    "00200013": el("IS", i_no), "00200032": {"vr": "DS", "Value": [-125.0, -125.0, i_no * 2.5]},
                    "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]}, "00280002": el("US", 1),
                    "00280004": el("CS", "MONOCHROME2"), "00280010": el("US", 512), "00280011": el("US", 512),
                    "00280030": {"vr": "DS", "Value": [0.7, 0.7]}, "00280100": el("US", 16),
                    "00280101": el("US", 12), "00281050": el("DS", 40), "00281051": el("DS", 400),
                    "7FE00010": {"vr": "OW", "BulkDataURI": f"/dicom-web/studies/{uid}/series/{se_uid}/instances/"
                                                           f"{sop}/bulkdata/7FE00010"},
                }).decode()
                instance_rows.append((uuid.uuid4(), study_id, series_id, sop, sop_class, i_no, "1.2.840.10008.1.2.1", 1,
                                      512, 512, 16, "MONOCHROME2", 524_288 + 1_000, "0" * 64, f"{sop}.dcm", "upload",
                                      f"objects/{sop}", metadata, "ISO_IR 192", self.now))
        return study, series_rows, instance_rows


async def load(dsn: str, studies: int, per_study: int, seed: int, chunk: int = 200) -> None:
    gen = Generator(studies, per_study, seed)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for begin in range(0, studies, chunk):
            s_rows, se_rows, i_rows = [], [], []
            for n in range(begin, min(begin + chunk, studies)):
                st, se, inst = gen.study(n)
                s_rows.append(st)
                se_rows += se
                i_rows += inst
            async with conn.transaction():
                await conn.copy_records_to_table("studies", schema_name="imaging", columns=STUDY_COLS, records=s_rows)
                await conn.copy_records_to_table("series", schema_name="imaging", columns=SERIES_COLS, records=se_rows)
                await conn.copy_records_to_table("instances", schema_name="imaging", columns=INSTANCE_COLS,
                                                 records=i_rows)
            done = min(begin + chunk, studies)
            if done % (chunk * 10) == 0 or done == studies:
                elapsed = time.perf_counter() - started
                print(f"  {done:>7,} studies, {done * per_study:>10,} instances ({elapsed:.0f} s)", flush=True)
        await conn.execute("VACUUM (ANALYZE) imaging.studies, imaging.series, imaging.instances")
        sizes = await conn.fetch(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size FROM pg_class "
            "WHERE relnamespace = 'imaging'::regnamespace AND relkind = 'r' AND relname IN "
            "('studies', 'series', 'instances') ORDER BY relname")
        print("  sizes: " + ", ".join(f"{r['relname']} {r['size']}" for r in sizes))
    finally:
        await conn.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(dsn: str, rounds: int, seed: int) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = Settings()
    # autocommit, as the worker runs its queries (workers/runtime/transactions.py run_query)
    engine = create_async_engine("postgresql+asyncpg://" + dsn.split("://", 1)[1], pool_size=1,
                                 isolation_level="AUTOCOMMIT")
    rng = random.Random(seed + 1)
    raw = await asyncpg.connect(dsn)
    try:
        pids = [r[0] for r in await raw.fetch("SELECT DISTINCT patient_id_in_file FROM imaging.studies")]
        sample = await raw.fetch("SELECT study_instance_uid FROM imaging.studies ORDER BY random() LIMIT 500")
        series_sample = await raw.fetch(
            "SELECT s.study_instance_uid, se.series_instance_uid FROM imaging.series se "
            "JOIN imaging.studies s ON s.id = se.study_id ORDER BY random() LIMIT 500")
    finally:
        await raw.close()
    ohif = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
    cases: list[tuple[str, QidoLevel, Callable[[], str], Callable[[], tuple[str | None, str | None]]]] = [
        ("OHIF study list", QidoLevel.STUDY, lambda: ohif, lambda: (None, None)),
        ("PatientID=X (other studies)", QidoLevel.STUDY, lambda: f"00100020={rng.choice(pids)}&{ohif}",
         lambda: (None, None)),
        ("StudyInstanceUID=X (viewer)", QidoLevel.STUDY,
         lambda: f"{ohif}&StudyInstanceUID={rng.choice(sample)[0]}", lambda: (None, None)),
        ("00100020=*X* (list filter)", QidoLevel.STUDY, lambda: f"00100020=*{rng.choice(pids)[-4:]}*&{ohif}",
         lambda: (None, None)),
        ("PatientName=*nguy* (filter)", QidoLevel.STUDY,
         lambda: f"PatientName=*{rng.choice(['nguy', 'tran', 'le'])}*&{ohif}", lambda: (None, None)),
        ("PatientName fuzzy", QidoLevel.STUDY,
         lambda: f"PatientName={rng.choice(GIVEN)}&limit=101&offset=0&fuzzymatching=true", lambda: (None, None)),
        ("StudyDate=a-b (a month)", QidoLevel.STUDY,
         lambda: f"StudyDate={(d := date(2021, 1, 1) + timedelta(days=rng.randrange(1800))):%Y%m%d}-"
                 f"{d + timedelta(days=30):%Y%m%d}&{ohif}", lambda: (None, None)),
        ("ModalitiesInStudy=MG", QidoLevel.STUDY, lambda: f"ModalitiesInStudy=MG&{ohif}", lambda: (None, None)),
        ("study's series (OHIF)", QidoLevel.SERIES,
         lambda: "includefield=00080021%2C00080031%2C0008103E%2C00200011", lambda: (rng.choice(sample)[0], None)),
        ("series' instances", QidoLevel.INSTANCE, lambda: "", lambda: tuple(rng.choice(series_sample))),  # type: ignore[return-value, arg-type]
        ("/instances?PatientID=X", QidoLevel.INSTANCE, lambda: f"PatientID={rng.choice(pids)}&limit=100",
         lambda: (None, None)),
        ("/series?Modality=MG", QidoLevel.SERIES, lambda: "Modality=MG&limit=100", lambda: (None, None)),
    ]
    print(f"\n{'query':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'rows':>6}")
    try:
        async with engine.connect() as conn:
            for label, level, query, path in cases:
                times: list[float] = []
                rows = 0
                for i in range(rounds + 20):
                    study, series = path()
                    qs = query()
                    t0 = time.perf_counter()
                    q = parse_qido(level, parse_qsl(qs, keep_blank_values=True), study_instance_uid=study,
                                   series_instance_uid=series, settings=settings)
                    body, _ = await qido_search(conn, q, base_url=settings.public_base_url)
                    elapsed = (time.perf_counter() - t0) * 1000
                    if i >= 20:
                        times.append(elapsed)
                        rows += body.count(b'"00081190"')
                print(f"{label:34} {statistics.median(times):8.2f} {pct(times, 99):8.2f} {max(times):8.2f} "
                      f"{rows / rounds:6.0f}", flush=True)
            for label, qs in (("OHIF study list", ohif), ("PatientID=X", f"00100020={pids[0]}&{ohif}")):
                plan, _, _, _ = plan_search(parse_qido(QidoLevel.STUDY, parse_qsl(qs), study_instance_uid=None,
                                                       series_instance_uid=None, settings=settings))
                assert plan is not None
                result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql, tuple(plan.params))
                print(f"\nEXPLAIN ANALYZE — {label}:\n  {plan.sql}\n" + "\n".join("  " + r[0] for r in result.all()))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--studies", type=int, default=10_000)
    p.add_argument("--per-study", type=int, default=100)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--database-url", help="use this database (migrated) instead of a private one")
    p.add_argument("--skip-load", action="store_true", help="the database is already loaded")
    p.add_argument("--keep", action="store_true", help="keep the private database (its URL is printed)")
    args = p.parse_args(argv)

    own = args.database_url is None
    dsn = args.database_url or PG_ADMIN.rsplit("/", 1)[0] + f"/imaging_bench_qido_{secrets.token_hex(4)}"
    try:
        if own:
            done = subprocess.run([str(Path(sys.executable).with_name("imagingctl")), "migrate"], cwd=ROOT,
                                  env={**os.environ, "DATABASE_URL": dsn, "ENVIRONMENT": "test"},
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            print(f"database {dsn} (migrated)")
        if not args.skip_load:
            print(f"loading {args.studies:,} studies × {args.per_study} instances (seed {args.seed}) ...", flush=True)
            asyncio.run(load(dsn, args.studies, args.per_study, args.seed))
        asyncio.run(measure(dsn, args.rounds, args.seed))
    finally:
        if own and not args.keep:
            async def drop() -> None:
                conn = await asyncpg.connect(PG_ADMIN)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
                finally:
                    await conn.close()

            asyncio.run(drop())
        elif own:
            print(f"kept: {dsn}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
