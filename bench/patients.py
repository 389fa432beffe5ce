"""Patients benchmark (issue: patients at scale): name search over 1,000,000 synthetic patients,
and encounter creation with gap-free room queues.

    python bench/patients.py [--patients 1000000] [--duration 10] [--json [PATH]]
    python bench/patients.py --patients 50000 --duration 2                     # a quick development run
    python bench/patients.py --edge-url http://127.0.0.1:5000 --database-url postgresql://... [--token JWT]

Without `--edge-url` it boots a private stack (own Postgres database, RabbitMQ vhost, Redis db; edge,
relay and the four workers as subprocesses, tests/support.py; LOG_LEVEL=WARNING, no rate limit, cheap
argon2), and removes everything afterwards. With `--edge-url` it needs `--database-url` too: the
patients are loaded, the queries drawn and the queues checked straight in Postgres.

1. Load: `--patients` synthetic patients (seeded: Vietnamese names with the real skew of family names —
   Nguyễn ≈ 38 % — and of middle names — Văn, Thị —, 15 % international names with diacritics; valid
   unique Crockford MRNs, dates of birth, genders, phones, insurance numbers, addresses) COPYed with
   asyncpg's binary `copy_records_to_table`. Into an empty table the secondary indexes are dropped first
   and rebuilt from their own definitions afterwards (the usual bulk load); then VACUUM (ANALYZE).
2. Queries: a seeded sample of real rows, each asked six ways — the full name without accents, with
   accents, in upper case, with one typo (a letter substituted or deleted, accent-free), partial
   (family + given name, no middle name) and the MRN. Vietnamese names are typed in their own order
   (family middle given), as a receptionist says them; the columns hold given names in `firstName`.
3. Correctness: every query once through the edge; the hit rate per kind (is the intended person —
   or a namesake with the same accent- and case-free name, who cannot be told apart by name — on the
   first page; for MRNs: is the patient the first result).
4. Search through the edge: wrk (closed loop, a Lua script cycling through the query URLs) at 1 and
   `--connections` connections; then the open-loop paced generator of bench/roundtrip.py at
   `--search-rate` (latency from the scheduled send), per kind and overall.
5. The same searches straight against Postgres: the patients worker's own `list_patients` handler run
   in this process on one SQLAlchemy/asyncpg connection (identical SQL: the page and, when the page is
   full, the capped count), without edge, broker or audit. Baseline: the same handler, the same
   queries, inside a transaction that has dropped the search indexes (the trigram GiST and prefix
   btree of the name vocabulary, the GIN of the name sets' words, the btree of patients by name set)
   and is rolled back afterwards — the same tables, statistics and settings, only without the
   indexes (Postgres then scans, in parallel where it chooses to).
   EXPLAIN (ANALYZE, BUFFERS) of one typo query, with and without the indexes.
6. Encounters: a department, a service, 21 rooms and their service-room links made through the API as
   the admin; a receptionist creates the encounters. wrk at `--connections` for `--duration` s,
   POST /encounters spread over 20 rooms, then all into the 21st room; every request a distinct
   patient (one open encounter per patient, room and day). Afterwards, in Postgres: every room's queue
   numbers of the day are exactly 1..n (no gap, no duplicate) and match the counter row.

Targets (2-core machine): search p99 ≤ 30 ms (open loop, through the edge); ≥ 400 encounters/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.roundtrip import (  # noqa: E402 - after the path set-up
    STACK_OVERRIDES,
    CpuMeter,
    OpenLoopResult,
    WrkResult,
    _masked,
    _pids_named,
    machine_facts,
    open_loop,
    percentile,
    run_wrk,
    sign_in,
)

TARGET_SEARCH_P99_MS = 30.0
TARGET_ENCOUNTERS_PER_S = 400.0
ROOMS = 20
KINDS = ("plain", "accents", "upper", "typo", "partial", "mrn")
KIND_LABELS = {
    "plain": "full name, no accents", "accents": "full name, with accents", "upper": "full name, upper case",
    "typo": "one typo (no accents)", "partial": "family + given name", "mrn": "MRN",
}
SEARCH_INDEXES = ("ix_name_vocabulary_trgm", "ix_name_vocabulary_prefix", "ix_name_sets_words", "ix_patients_name_set")


# ----------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class Pool:
    """Values with relative weights, drawn with replacement."""

    values: tuple[str, ...]
    cum: tuple[float, ...]

    @classmethod
    def of(cls, weighted: Sequence[tuple[str, float]]) -> Pool:
        return cls(tuple(v for v, _ in weighted), tuple(itertools.accumulate(w for _, w in weighted)))

    @classmethod
    def zipf(cls, names: str | Sequence[str], s: float = 0.9) -> Pool:
        """Names (a space-separated string or a list), the first the most common (weight 1 / rank^s)."""
        items = names.split() if isinstance(names, str) else names
        return cls.of([(name, 1 / (rank + 1) ** s) for rank, name in enumerate(items)])

    def draw(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.values, cum_weights=self.cum, k=k)


# Family names of Vietnam, per cent of the population (Nguyễn alone is ~38 %).
VN_FAMILY = Pool.of([
    ("Nguyễn", 38.4), ("Trần", 12.1), ("Lê", 9.5), ("Phạm", 7.0), ("Hoàng", 3.1), ("Huỳnh", 2.0),
    ("Phan", 4.5), ("Vũ", 2.0), ("Võ", 1.9), ("Đặng", 2.1), ("Bùi", 2.0), ("Đỗ", 1.4), ("Hồ", 1.3),
    ("Ngô", 1.3), ("Dương", 1.0), ("Lý", 0.5), ("Đào", 0.6), ("Đoàn", 0.6), ("Trịnh", 0.5), ("Trương", 0.5),
    ("Đinh", 0.5), ("Lâm", 0.4), ("Mai", 0.4), ("Hà", 0.4), ("Lương", 0.4), ("Cao", 0.3), ("Tô", 0.2),
    ("Tạ", 0.2), ("Châu", 0.2), ("Thái", 0.2), ("Vương", 0.2), ("Lưu", 0.2), ("Quách", 0.1), ("Phùng", 0.2),
    ("Kiều", 0.1), ("Triệu", 0.1), ("Chu", 0.1), ("Tăng", 0.1), ("La", 0.1), ("Văn", 0.1), ("Khúc", 0.05),
])
VN_MIDDLE_MALE = Pool.of([
    ("Văn", 35), ("Đức", 8), ("Minh", 8), ("Hữu", 6), ("Quốc", 6), ("Thanh", 5), ("Công", 4), ("Đình", 4),
    ("Quang", 4), ("Xuân", 3), ("Hoàng", 3), ("Ngọc", 3), ("Gia", 3), ("Tuấn", 2), ("Anh", 2), ("Trọng", 2),
    ("Thành", 2), ("Duy", 2), ("Nhật", 2), ("Bảo", 2), ("Tiến", 2), ("Mạnh", 1), ("Khắc", 1), ("Thế", 2),
])
VN_MIDDLE_FEMALE = Pool.of([
    ("Thị", 45), ("Ngọc", 8), ("Thu", 5), ("Thanh", 5), ("Minh", 4), ("Kim", 4), ("Hồng", 4), ("Phương", 3),
    ("Bảo", 3), ("Thùy", 3), ("Mai", 2), ("Diệu", 2), ("Hoài", 2), ("Khánh", 2), ("Quỳnh", 2), ("Bích", 2),
    ("Mỹ", 2), ("Tường", 1), ("Hải", 1), ("Như", 1), ("Thảo", 1), ("Cẩm", 1),
])
VN_SECOND_MIDDLE = Pool.zipf("Minh Hoàng Gia Bảo Ngọc Anh Thanh Khánh Phương Thiên Hải Nhật", 0.6)
VN_GIVEN_MALE = Pool.zipf(  # ~7 % Anh, ~5 % Minh, ... (1 / rank^0.55)
    "Anh Minh Huy Hùng Dũng Tuấn Nam Long Hải Đức Phong Khoa Thành Quân Bảo Trung Tùng Hiếu Sơn Phúc Hoàng "
    "Khánh Thắng Vinh Tâm Thịnh Cường Bình Việt Lâm Kiên Tài Trí Nhân Toàn Hưng Quang Đạt Lộc Nghĩa Thiện "
    "Khang Duy Tú Lợi Hậu Phát Hào Thông An Khải Tín Vũ Hòa Thái Định Lực Nguyên Hiển Chiến Trường Tiến "
    "Thuận Sang Hiệp Đông Quý Luân Khôi Nhật Tấn Vương Hoà Ân Cảnh Toản Triều Thạch Điền Nghị", 0.55)
VN_GIVEN_FEMALE = Pool.zipf(
    "Linh Anh Trang Hương Ngọc Thảo Hà Huyền Phương Mai Lan Hằng Nhung Thủy Hạnh Yến Dung Vân Hoa Hiền "
    "Quỳnh My Nhi Thu Trâm Uyên Vy Ly Loan Giang Nga Ngân Châu Chi Diễm Duyên Oanh Tuyết Liên Hồng Thư "
    "Như Trinh Ánh Bích Diệp Thơ Tâm An Khánh Xuân Thanh Hậu Ngoan Lụa Nguyệt Quyên Thắm Thoa Nương Kiều "
    "Gấm Huệ Cúc Đào Sương Hân Tiên", 0.55)

# International patients: (given male, given female, family) per origin, with their diacritics.
INTERNATIONAL = [
    ("Jean Pierre François Michel Frédéric Jérôme Stéphane Rémi Benoît Léon Théo Gaël",
     "Marie Hélène Zoé Léa Chloé Élodie Camille Anaïs Céline Amélie Noémie Françoise",
     "Martin Bernard Dubois Thomas Robert Richard Petit Durand Lefèvre Girard Bonnet Dupré Lemaître "
     "Chevalier Mercier Rousseau Fontaine Gauthier Boucher Bélanger Lefrançois Béranger"),
    ("Jürgen Günther Jörg Matthias Lukas Stefan Florian Andreas Björn Uwe Maximilian",
     "Anna Käthe Sophie Lena Anja Ursula Birgit Sabine Mareike Hanna Jördis",
     "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schäfer Schröder Köhler Krüger Hoffmann "
     "Groß Weiß Böhm Jäger Zöllner"),
    ("José Juan Andrés Martín Sebastián Nicolás Raúl Jesús Rubén Iván Álvaro Joaquín",
     "María Lucía Sofía Inés Ángela Mónica Verónica Beatriz Raquel Begoña Ximena Itziar",
     "García Fernández González Rodríguez López Martínez Sánchez Pérez Gómez Jiménez Núñez Muñoz Peña "
     "Ibáñez Domínguez Castañeda Ordóñez"),
    ("João António Gonçalo Tomás Luís Sérgio Vítor",
     "Conceição Inês Beatriz Leonor Mariana Luísa Lúcia",
     "Gonçalves Magalhães Simões Guimarães Araújo Fernandes Sousa Falcão Brandão Assunção"),
    ("Søren Bjørn Øystein Åke Lars Mikael Jørgen Håkon",
     "Åsa Ingrid Sigrid Märta Malin Ødny Britt",
     "Jørgensen Sørensen Ødegård Åberg Lindström Bergström Nyström Johansson Ångström Løvås"),
    ("Łukasz Paweł Michał Jiří Tomáš Zbigniew Wojciech Bořivoj",
     "Małgorzata Zofia Agnieszka Kateřina Lucie Żaneta Jadwiga",
     "Kowalski Wiśniewski Wójcik Dvořák Novák Černý Łukasiewicz Kołodziej Růžička Dąbrowski"),
    ("Ömer Mustafa Çağrı Emre Oğuz Ağa",
     "Ayşe Şule Gülşen Elif Özlem Büşra",
     "Yılmaz Öztürk Şahin Çelik Doğan Kılıç Aydın Güneş"),
    ("James John David Michael Kenji Hiroshi Wei Jun-ho Rahul Arjun",
     "Emily Sarah Yuki Mei Seo-yeon Priya Aiko Hana",
     "Smith Johnson Brown Tanaka Suzuki Watanabe Wang Zhang Chen Kim Park Sharma Patel Nakamura"),
]
INTL_WEIGHTS = (3, 2, 3, 1, 1, 1, 1, 4)
INTL_POOLS = [(Pool.zipf(m, 0.5), Pool.zipf(f, 0.5), Pool.zipf(fam, 0.6)) for m, f, fam in INTERNATIONAL]
VN_FAMILIES = frozenset(VN_FAMILY.values)

STREETS = Pool.zipf(["Lê Lợi", "Nguyễn Huệ", "Trần Hưng Đạo", "Hai Bà Trưng", "Lý Thường Kiệt", "Điện Biên Phủ",
                     "Cách Mạng Tháng Tám", "Võ Văn Tần", "Phan Đình Phùng", "Nguyễn Trãi", "Lê Duẩn", "Hoàng Văn Thụ",
                     "Pasteur", "Bạch Đằng", "Quang Trung"], 0.3)
CITIES = Pool.of([("TP. Hồ Chí Minh", 30), ("Hà Nội", 25), ("Đà Nẵng", 8), ("Hải Phòng", 6), ("Cần Thơ", 6),
                  ("Huế", 4), ("Nha Trang", 4), ("Biên Hòa", 4), ("Vũng Tàu", 3), ("Quy Nhơn", 3)])
BLOOD = Pool.of([("unknown", 35), ("O+", 27), ("B+", 19.5), ("A+", 13.5), ("AB+", 4), ("O-", 0.4), ("B-", 0.2),
                 ("A-", 0.3), ("AB-", 0.1)])
GENDER = Pool.of([("female", 50.5), ("male", 49), ("other", 0.2), ("unknown", 0.3)])
PHONE_PREFIXES = Pool.zipf("09 03 08 07 05", 0.5)
INSURANCE_PREFIXES = Pool.zipf("GD DN HT TE HS CN HN CB XK SV", 0.7)

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in CROCKFORD for b in CROCKFORD]  # 10 bits → 2 symbols
COLUMNS = ("id", "mrn", "first_name", "last_name", "date_of_birth", "gender", "phone", "address", "blood_type",
           "insurance_number", "is_active", "created_at", "updated_at", "deleted_at")


def mrn_of(n: int) -> str:
    """The 8-symbol Crockford base-32 code of n < 32⁸."""
    return _PAIRS[n >> 30] + _PAIRS[(n >> 20) & 1023] + _PAIRS[(n >> 10) & 1023] + _PAIRS[n & 1023]


_FOLD = str.maketrans({"đ": "d", "Đ": "D", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ı": "i", "ß": "ss",
                       "æ": "ae", "Æ": "AE"})


def strip_accents(text: str) -> str:
    """`Nguyễn Đức` → `Nguyen Duc` (what someone types on a keyboard without Vietnamese input)."""
    decomposed = unicodedata.normalize("NFD", text.translate(_FOLD))
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def fold(text: str) -> str:
    return strip_accents(text).lower()


def unique_mrns(seed: int, n: int) -> list[int]:
    """n distinct codes out of 32⁸ (a sample without replacement), seeded."""
    return random.Random(f"{seed}:mrn").sample(range(32**8), n)


def generate_patients(seed: int, index: int, mrns: list[int], now: datetime) -> list[tuple[Any, ...]]:
    """Chunk `index` of the synthetic patients, one COPY record (COLUMNS order) per MRN given; seeded by
    (seed, index), so chunks can be made in any order and in other processes."""
    rng = random.Random(f"{seed}:{index}")
    n = len(mrns)
    genders = GENDER.draw(rng, n)
    family = VN_FAMILY.draw(rng, n)
    mid_m, mid_f = VN_MIDDLE_MALE.draw(rng, n), VN_MIDDLE_FEMALE.draw(rng, n)
    giv_m, giv_f = VN_GIVEN_MALE.draw(rng, n), VN_GIVEN_FEMALE.draw(rng, n)
    second = VN_SECOND_MIDDLE.draw(rng, n)
    origins = rng.choices(range(len(INTL_POOLS)), weights=INTL_WEIGHTS, k=n)
    streets, cities = STREETS.draw(rng, n), CITIES.draw(rng, n)
    blood = BLOOD.draw(rng, n)
    phone_prefix, ins_prefix = PHONE_PREFIXES.draw(rng, n), INSURANCE_PREFIXES.draw(rng, n)
    today = now.date().toordinal()
    span = 6 * 365 * 86400
    rand, randrange = rng.random, rng.randrange
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        gender = genders[i]
        female = gender == "female" or (gender not in ("male", "female") and rand() < 0.5)
        if rand() < 0.15:  # international
            male_pool, female_pool, family_pool = INTL_POOLS[origins[i]]
            first = (female_pool if female else male_pool).draw(rng, 1)[0]
            last = family_pool.draw(rng, 1)[0]
        else:
            middle = mid_f[i] if female else mid_m[i]
            roll = rand()
            if roll < 0.1 and second[i] != middle:  # two middle names (Văn / Thị rarely combine)
                middle = f"{middle} {second[i]}" if middle not in ("Văn", "Thị") else second[i]
            elif roll < 0.13:
                middle = ""
            middle = " ".join(w for w in middle.split() if w != family[i])  # a name does not repeat a word
            given = giv_f[i] if female else giv_m[i]
            while given in middle.split() or given == family[i]:
                given = (VN_GIVEN_FEMALE if female else VN_GIVEN_MALE).draw(rng, 1)[0]
            first = f"{middle} {given}" if middle else given
            last = family[i]
        age_days = int(rng.triangular(0, 34_700, 12_800))  # 0–95 years, most around 35
        created = now - timedelta(seconds=rand() * span)
        deleted = created + timedelta(days=rand() * 30) if rand() < 0.005 else None
        phone = None if rand() < 0.05 else f"{phone_prefix[i]}{randrange(10**8):08d}"
        insurance = (None if rand() < 0.2 else
                     f"{ins_prefix[i]}{randrange(1, 6)}{randrange(1, 97):02d}{randrange(10**10):010d}")
        address = None if rand() < 0.1 else f"{randrange(1, 400)} {streets[i]}, Phường {randrange(1, 28)}, {cities[i]}"
        rows.append((
            uuid.UUID(int=rng.getrandbits(128), version=4), mrn_of(mrns[i]), first, last,
            date.fromordinal(today - age_days), gender, phone, address, blood[i], insurance,
            rand() >= 0.02, created, created, deleted,
        ))
    return rows


# ------------------------------------------------------------------------------------ loading


@dataclass
class LoadReport:
    patients: int = 0
    existing: int = 0
    rebuilt_indexes: dict[str, float] = field(default_factory=dict)
    copy_s: float = 0.0
    index_s: float = 0.0
    vacuum_s: float = 0.0
    total_s: float = 0.0
    table_mb: float = 0.0
    index_mb: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"patients": self.patients, "existingBefore": self.existing, "copySeconds": self.copy_s,
                "indexSeconds": self.index_s, "indexBuildSeconds": self.rebuilt_indexes,
                "vacuumAnalyzeSeconds": self.vacuum_s, "totalSeconds": self.total_s, "tableMb": self.table_mb,
                "indexMb": self.index_mb}


async def load_patients(dsn: str, n: int, seed: int, chunk: int = 50_000) -> LoadReport:
    """COPY `n` synthetic patients into patients.patients; into an empty table with its secondary
    indexes dropped and rebuilt from their own definitions (pg_get_indexdef) afterwards."""
    report = LoadReport(patients=n)
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        report.existing = await conn.fetchval("SELECT count(*) FROM patients.patients")
        secondary: list[tuple[str, str]] = []
        if report.existing == 0:
            secondary = [(r["name"], r["def"]) for r in await conn.fetch(
                """SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                   WHERE x.indrelid = 'patients.patients'::regclass
                     AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
                   ORDER BY i.relname""")]
            for name, _ in secondary:
                await conn.execute(f"DROP INDEX patients.{name}")
        try:
            now = datetime.now(UTC)
            mrns = unique_mrns(seed, n)
            t = time.perf_counter()
            for index, begin in enumerate(range(0, n, chunk)):
                rows = generate_patients(seed, index, mrns[begin:begin + chunk], now)
                await conn.copy_records_to_table("patients", schema_name="patients", columns=COLUMNS, records=rows)
                done = begin + len(rows)
                if done % (chunk * 4) == 0 or done == n:
                    print(f"  {done:>9,} patients copied ({time.perf_counter() - t:.0f} s)", flush=True)
            report.copy_s = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            await conn.execute("SET maintenance_work_mem = '1GB'")
            for name, definition in secondary:
                started_index = time.perf_counter()
                await conn.execute(definition)
                report.rebuilt_indexes[name] = time.perf_counter() - started_index
            report.index_s = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) patients.patients")
        report.vacuum_s = time.perf_counter() - t
        report.table_mb = await conn.fetchval("SELECT pg_table_size('patients.patients') / 1048576.0")
        for r in await conn.fetch(
                """SELECT i.relname AS name, pg_relation_size(x.indexrelid) / 1048576.0 AS mb
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                   WHERE x.indrelid = 'patients.patients'::regclass ORDER BY 1"""):
            report.index_mb[r["name"]] = float(r["mb"])
    finally:
        await conn.close()
    report.total_s = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------ queries


@dataclass
class Query:
    kind: str
    text: str
    patient_id: str
    name_key: str  # the intended person's accent- and case-free "first last" (the column)
    family: str
    given: str

    @property
    def path(self) -> str:
        return "/patients?q=" + quote(self.text, safe="")


def _typo(rng: random.Random, name: str) -> str:
    """One letter of the longest word substituted or deleted (not the first letter)."""
    words = name.split()
    w = max(range(len(words)), key=lambda i: (len(words[i]), -i))
    word = words[w]
    pos = rng.randrange(1, len(word))
    if rng.random() < 0.5:
        letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[pos].lower()]
        word = word[:pos] + rng.choice(letters) + word[pos + 1:]
    else:
        word = word[:pos] + word[pos + 1:]
    words[w] = word
    return " ".join(words)


async def draw_queries(conn: asyncpg.Connection, per_kind: int, seed: int) -> list[Query]:
    """`per_kind` live patients drawn (seeded) from the table, each asked the six ways."""
    rows = await conn.fetch(
        "SELECT id::text AS id, mrn, first_name, last_name, name_key FROM patients.patients "
        "WHERE deleted_at IS NULL ORDER BY md5(id::text || $1) LIMIT $2", f"q{seed}", per_kind * len(KINDS))
    rng = random.Random(f"{seed}:queries")
    queries: list[Query] = []
    for i, r in enumerate(rows):
        kind = KINDS[i % len(KINDS)]
        first, last = r["first_name"], r["last_name"]
        vietnamese = last in VN_FAMILIES
        spoken = f"{last} {first}" if vietnamese else f"{first} {last}"  # how a receptionist types it
        given = first.split()[-1]
        if kind == "plain":
            text = strip_accents(spoken)
        elif kind == "accents":
            text = spoken
        elif kind == "upper":
            text = spoken.upper()
        elif kind == "typo":
            text = _typo(rng, strip_accents(spoken))
        elif kind == "partial":
            text = f"{last} {given}"
        else:
            text = r["mrn"]
        queries.append(Query(kind, text, r["id"], r["name_key"], last, given))
    return queries


async def namesakes(conn: asyncpg.Connection, queries: list[Query]) -> dict[str, set[str]]:
    """name_key → ids of the live patients with exactly that name (who a name cannot tell apart)."""
    keys = sorted({q.name_key for q in queries})
    rows = await conn.fetch("SELECT name_key, array_agg(id::text) AS ids FROM patients.patients "
                            "WHERE name_key = ANY($1::text[]) AND deleted_at IS NULL GROUP BY name_key", keys)
    return {r["name_key"]: set(r["ids"]) for r in rows}


@dataclass
class HitReport:
    asked: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    self_on_page: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    totals: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    namesakes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def rate(self, kind: str) -> float:
        return self.hits[kind] / self.asked[kind] if self.asked[kind] else math.nan

    def summary(self) -> dict[str, Any]:
        return {kind: {"asked": self.asked[kind], "hits": self.hits[kind], "hitRate": self.rate(kind),
                       "intendedPatientOnFirstPage": self.self_on_page[kind],
                       "medianTotal": percentile([float(x) for x in self.totals[kind]], 50),
                       "medianNamesakes": percentile([float(x) for x in self.namesakes[kind]], 50)}
                for kind in KINDS} | {"statuses": {str(k): v for k, v in self.statuses.items()},
                                      "misses": self.misses[:30]}


async def check_hits(edge_url: str, token: str, queries: list[Query], same_name: dict[str, set[str]]) -> HitReport:
    """Every query once through the edge: is the intended person (or a namesake) on the first page?"""
    report = HitReport()
    async with httpx.AsyncClient(base_url=edge_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as api:
        for q in queries:
            r = await api.get("/patients", params={"q": q.text})
            report.statuses[r.status_code] += 1
            report.asked[q.kind] += 1
            if r.status_code != 200:
                report.misses.append((q.kind, q.text, [f"HTTP {r.status_code}"]))
                continue
            page = r.json()
            items = page["items"]
            ids = [item["id"] for item in items]
            report.totals[q.kind].append(page["total"])
            report.namesakes[q.kind].append(len(same_name.get(q.name_key, ())))
            if q.kind == "mrn":
                hit = bool(ids) and ids[0] == q.patient_id
            elif q.kind == "partial":  # someone with this family and given name
                hit = any(fold(item["lastName"]) == fold(q.family) and fold(item["firstName"]).split()[-1:]
                          == [fold(q.given)] for item in items)
            else:
                hit = bool(same_name.get(q.name_key, set()) & set(ids))
            report.hits[q.kind] += hit
            report.self_on_page[q.kind] += q.patient_id in ids
            if not hit:
                report.misses.append((q.kind, q.text, [item["displayName"] for item in items[:3]]))
    return report


# ------------------------------------------------------------------- the handler, without the edge


class _ReadOnlyUow:
    """What `list_patients` needs of a UnitOfWork: the connection. The audit record is dropped."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def audit_read(self, *args: Any, **kwargs: Any) -> None:
        return None


def sqlalchemy_url(dsn: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix):]
    return dsn


@dataclass
class SqlTimings:
    label: str
    by_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statements: int = 0
    slowest: tuple[float, str] = (0.0, "")

    @property
    def all(self) -> list[float]:
        return [x for xs in self.by_kind.values() for x in xs]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"queries": len(self.all), "statements": self.statements}
        for kind, xs in [("all", self.all), *self.by_kind.items()]:
            out[kind] = {"n": len(xs), "p50Ms": percentile(xs, 50), "p90Ms": percentile(xs, 90),
                         "p99Ms": percentile(xs, 99), "maxMs": max(xs, default=math.nan)}
        return out


class HandlerSql:
    """The patients worker's `list_patients` on a SQLAlchemy connection of this process: the SQL the
    worker runs for a search (the page; the capped count when the page is full), without the edge, the
    broker and the audit."""

    def __init__(self, dsn: str) -> None:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine = create_async_engine(sqlalchemy_url(dsn), pool_size=1, max_overflow=0)
        self.captured: list[tuple[str, Any]] = []
        self.capture = False
        self.statements = 0

        @event.listens_for(self.engine.sync_engine, "before_cursor_execute")
        def _record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            self.statements += 1
            if self.capture:
                self.captured.append((statement, parameters))

    async def close(self) -> None:
        await self.engine.dispose()

    @staticmethod
    async def search(conn: Any, text: str) -> Any:
        from contracts.patients import ListPatients
        from workers.patients.handlers.patients import list_patients

        return await list_patients(ListPatients(q=text), cast(Any, _ReadOnlyUow(conn)))

    async def time_queries(self, conn: Any, queries: list[Query], label: str) -> SqlTimings:
        timings = SqlTimings(label)
        before = self.statements
        for q in queries:
            t = time.perf_counter()
            await self.search(conn, q.text)
            ms = (time.perf_counter() - t) * 1000
            timings.by_kind[q.kind].append(ms)
            timings.slowest = max(timings.slowest, (ms, q.text))
        timings.statements = self.statements - before
        return timings

    async def explain(self, conn: Any, text: str) -> list[str]:
        """EXPLAIN (ANALYZE, BUFFERS) of every statement the handler runs for `text`."""
        self.captured, self.capture = [], True
        try:
            await self.search(conn, text)
        finally:
            self.capture = False
        out: list[str] = []
        for statement, parameters in self.captured:
            result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            out.append("\n".join(row[0] for row in result))
        return out

    async def indexed(self, queries: list[Query], typo: str) -> tuple[SqlTimings, list[str], list[str]]:
        """One pass (the correctness pass through the edge ran the same queries and warmed the caches);
        the plans of the typo query and of the slowest query."""
        async with self.engine.connect() as conn:
            timings = await self.time_queries(conn, queries, "indexed")
            plans = await self.explain(conn, typo)
            slowest = await self.explain(conn, timings.slowest[1])
            await conn.rollback()
        return timings, plans, slowest

    async def unindexed(self, queries: list[Query], typo: str) -> tuple[SqlTimings, list[str]]:
        """The same searches in a transaction that dropped the search indexes; rolled back."""
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            for name in SEARCH_INDEXES:
                await conn.exec_driver_sql(f"DROP INDEX patients.{name}")
            try:
                plans = await self.explain(conn, typo)
                timings = await self.time_queries(conn, queries, "no search index")
            finally:
                await conn.rollback()
        return timings, plans


# ------------------------------------------------------------------------------------ wrk scripts


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


LUA_COMMON = """
local threads = {}
local created = 0
statuses = {}

function setup(thread)
  thread:set("tid", created)
  created = created + 1
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for code, count in pairs(counts or {}) do
      io.write(string.format("STATUS %d %d\\n", code, count))
    end
  end
end
"""


def search_lua(token: str, paths: list[str]) -> str:
    """GET each query URL in turn (threads start at different places)."""
    listed = ",\n".join(lua_string(p) for p in paths)
    return f"""wrk.headers["Authorization"] = "Bearer " .. {lua_string(token)}
{LUA_COMMON}
local paths = {{
{listed}
}}
local i = 0

function init(args)
  i = ((tid or 0) * 7919) % #paths
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def encounter_lua(token: str, patient_ids: list[str], links: list[str], threads: int) -> str:
    """POST /encounters, each request a patient of its own (thread t takes t, t+threads, ...), the
    service-room links in turn. Past the end of the list it wraps (answers 409: counted, reported)."""
    patients = ",".join(lua_string(p) for p in patient_ids)
    linked = ",".join(lua_string(x) for x in links)
    return f"""wrk.headers["Authorization"] = "Bearer " .. {lua_string(token)}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{LUA_COMMON}
local patients = {{{patients}}}
local links = {{{linked}}}
local nthreads = {threads}
local k = 0

function request()
  local idx = ((tid or 0) + k * nthreads) % #patients + 1
  k = k + 1
  local link = links[(idx - 1) % #links + 1]
  local body = '{{"patientId":"' .. patients[idx] .. '","serviceRoomId":"' .. link ..
    '","type":"outpatient","priority":"routine","chiefComplaint":"Sốt, ho ba ngày"}}'
  return wrk.format(nil, nil, nil, body)
end
"""


def wrk_statuses(result: WrkResult) -> dict[int, int]:
    counts: Counter[int] = Counter()
    for line in result.output.splitlines():
        if line.startswith("STATUS "):
            _, code, count = line.split()
            counts[int(code)] += int(count)
    return dict(counts)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Clinic:
    """What the encounter phases need, made through the API as the admin."""

    receptionist_token: str
    spread_links: list[str]
    spread_rooms: list[str]
    single_link: str
    single_room: str


async def make_clinic(edge_url: str, admin_token: str) -> Clinic:
    from tests.support import make_user

    tag = uuid.uuid4().hex[:5].upper()
    admin = {"Authorization": f"Bearer {admin_token}"}

    async def created(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
        r = await api.post(path, json=body, headers=admin)
        if r.status_code != 201:
            raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text}")
        return str(r.json()["id"])

    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as api:
        department = await created(api, "/departments", {"code": f"BP{tag}", "name": f"Khoa khám bệnh {tag}"})
        service = await created(api, "/services", {"code": f"KB-{tag}", "name": "Khám bệnh tổng quát"})
        rooms, links = [], []
        for i in range(ROOMS + 1):
            room = await created(api, "/rooms", {"code": f"P{tag}-{i + 1:02d}", "departmentId": department,
                                                 "floor": 1 + i // 10})
            links.append(await created(api, "/service-rooms", {"serviceId": service, "roomId": room}))
            rooms.append(room)
        receptionist = await make_user(api, admin, "reception_staff")
    return Clinic(receptionist.token, links[:ROOMS], rooms[:ROOMS], links[ROOMS], rooms[ROOMS])


@dataclass
class Target:
    edge_url: str
    dsn: str
    admin_token: str
    cpu_groups: dict[str, Callable[[], list[int]]]

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.edge_url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class EncounterPhase:
    label: str
    rooms: int
    wrk: WrkResult
    statuses: dict[int, int]
    rows_added: int
    patients_prepared: int

    @property
    def ok_answers(self) -> int:
        return self.wrk.requests - self.wrk.non_2xx

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "rooms": self.rooms, **self.wrk.summary(), "non2xxStatuses": self.statuses,
                "encountersCommitted": self.rows_added, "patientsPrepared": self.patients_prepared}


class Bench:
    def __init__(self, args: argparse.Namespace, target: Target) -> None:
        self.args = args
        self.target = target
        self.cpu = CpuMeter(target.cpu_groups)
        self.host, self.port = target.host_port
        self.results: dict[str, Any] = {}
        self.rest_cpu: list[float] = []

    # ------------------------------------------------------------------ helpers

    def cpu_line(self, cpu: dict[str, float]) -> str:
        self.rest_cpu.append(cpu.get("rest", 0.0))
        order = ["generator", "edge", "patients", "users", "other-workers", "postgres", "rabbitmq", "redis", "rest"]
        parts = [f"{name} {cpu[name]:.0f}" for name in order if name in cpu]
        return (f"CPU % of one core: {', '.join(parts)}; machine {cpu.get('machine', math.nan):.0f} "
                f"of {100 * (os.cpu_count() or 1)}")

    async def wrk(self, url: str, script: str, connections: int, duration: float) -> WrkResult:
        before = self.cpu.snapshot()
        result = await run_wrk(url, script, connections=connections, threads=self.args.wrk_threads,
                               duration=duration)
        result.cpu = self.cpu.usage(before, self.cpu.snapshot())
        await self.drain()
        return result

    async def drain(self, timeout: float = 120) -> None:
        """Wait until the database has run no statement for two polls in a row: what wrk left queued
        (answers it stopped waiting for) must not be charged to the next phase."""
        conn = await asyncpg.connect(self.target.dsn)
        started = time.monotonic()
        try:
            quiet = 0
            while quiet < 2 and time.monotonic() - started < timeout:
                busy = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state = 'active'")
                quiet = quiet + 1 if busy == 0 else 0
                await asyncio.sleep(0.25)
        finally:
            await conn.close()
        waited = time.monotonic() - started
        if waited > 2:
            print(f"  (waited {waited:.1f} s for the server to finish what the last phase left queued)", flush=True)

    # ------------------------------------------------------------------ phases

    async def run(self) -> None:
        args = self.args
        conn = await asyncpg.connect(self.target.dsn)
        try:
            print(f"\ndrawing {args.queries_per_kind} patients per kind of query (seed {args.seed}) ...", flush=True)
            queries = await draw_queries(conn, args.queries_per_kind, args.seed)
            same_name = await namesakes(conn, queries)
            live = await conn.fetchval("SELECT count(*) FROM patients.patients WHERE deleted_at IS NULL")
            await conn.execute("SELECT word_similarity('a', 'b')")  # loads pg_trgm, so its settings show
            settings = {r["name"]: r["value"] for r in await conn.fetch(
                "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN ('server_version', "
                "'shared_buffers', 'work_mem', 'effective_cache_size', 'max_parallel_workers_per_gather', 'jit', "
                "'synchronous_commit', 'pg_trgm.word_similarity_threshold') ORDER BY name")}
        finally:
            await conn.close()
        self.results["postgres"] = settings
        print("  postgres: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
        print(f"  {len(queries)} queries over {live:,} live patients; e.g. "
              + "; ".join(f"{q.kind}: {q.text!r}" for q in queries[: len(KINDS)]))
        self.results["queries"] = [{"kind": q.kind, "q": q.text, "patientId": q.patient_id} for q in queries]

        print("\nsetting up: a department, a service, 21 rooms and their links, a receptionist (API) ...", flush=True)
        clinic = await make_clinic(self.target.edge_url, self.target.admin_token)
        token = clinic.receptionist_token

        if args.encounters_only:
            encounters = await self.encounter_phases(clinic)
            self.print_targets(None, None, None, encounters)
            return
        hits = await check_hits(self.target.edge_url, token, queries, same_name)
        self.results["correctness"] = hits.summary()
        self.print_hits(hits)

        closed = await self.search_closed(queries, token)
        opened, tags = await self.search_open(queries, token, closed)
        per_kind = self.print_open(opened, tags)

        sql = HandlerSql(self.target.dsn)
        try:
            typo = next(q.text for q in queries if q.kind == "typo")
            print(f"\nSQL straight against Postgres (the worker's handler in-process): {len(queries)} queries ...",
                  flush=True)
            indexed, plans, slowest = await sql.indexed(queries, typo)
            subset = [q for kind in KINDS for q in [x for x in queries if x.kind == kind][: args.baseline_per_kind]]
            print(f"baseline: the same handler without the search indexes (DROP INDEX in a transaction, rolled "
                  f"back), {len(subset)} queries ...", flush=True)
            unindexed, plans_unindexed = await sql.unindexed(subset, typo)
        finally:
            await sql.close()
        self.print_sql(opened, per_kind, indexed, unindexed)
        self.print_explain(typo, plans, plans_unindexed, indexed.slowest, slowest)

        encounters = await self.encounter_phases(clinic)
        self.print_targets(closed, opened, hits, encounters)

    async def search_closed(self, queries: list[Query], token: str) -> dict[int, WrkResult]:
        args = self.args
        script = search_lua(token, [q.path for q in queries])
        url = self.target.edge_url + "/patients"
        print(f"\nsearch warm-up: wrk {args.warmup:g} s at {args.connections} connections ...", flush=True)
        await self.wrk(url, script, args.connections, args.warmup)
        closed: dict[int, WrkResult] = {}
        for c in (1, args.connections):
            print(f"search closed loop: wrk, {c} connection(s), {args.duration:g} s ...", flush=True)
            closed[c] = await self.wrk(url, script, c, args.duration)
        print(f"\nSearch through the edge, closed loop (wrk, {args.wrk_threads} thread(s), {args.duration:g} s, "
              f"cycling through the {len(queries)} queries)")
        print(f"  {'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'requests':>10}{'non-2xx':>9}"
              f"{'sock err':>9}")
        for c, r in closed.items():
            p = r.percentiles_ms
            print(f"  {c:>6}{r.rps:>9.1f}{p.get('50', math.nan):>9.2f}{p.get('90', math.nan):>9.2f}"
                  f"{p.get('99', math.nan):>9.2f}{r.requests:>10}{r.non_2xx:>9}{sum(r.socket_errors.values()):>9}")
        for c, r in closed.items():
            print(f"    c={c:<4}{self.cpu_line(r.cpu)}")
        self.results["searchClosedLoop"] = {f"c{c}": r.summary() | {"non2xxStatuses": wrk_statuses(r)}
                                            for c, r in closed.items()}
        return closed

    async def search_open(self, queries: list[Query], token: str,
                          closed: dict[int, WrkResult]) -> tuple[OpenLoopResult, list[str]]:
        args = self.args
        rate = args.search_rate or max(0.5, min(50.0, math.floor(closed[args.connections].rps * 5) / 10))
        head = (f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
                "User-Agent: patients-bench\r\n\r\n")
        requests = [(f"GET {q.path} HTTP/1.1\r\n{head}".encode(), q.kind) for q in queries]
        tags: list[str] = []
        duration = args.duration * 2
        print(f"\nsearch open loop: {rate:g} req/s over {args.open_connections} connections for {duration:g} s ...",
              flush=True)
        before = self.cpu.snapshot()
        result = await open_loop(self.host, self.port, lambda n: requests[n % len(requests)], rate=rate,
                                 connections=args.open_connections, duration=duration,
                                 on_response=lambda tag, _status, _done: tags.append(tag))
        result.cpu = self.cpu.usage(before, self.cpu.snapshot())
        return result, tags

    def print_open(self, r: OpenLoopResult, tags: list[str]) -> dict[str, list[float]]:
        by_kind: dict[str, list[float]] = defaultdict(list)
        for kind, latency in zip(tags, r.latencies_ms, strict=True):
            by_kind[kind].append(latency)
        print(f"\nSearch through the edge, open loop (paced {r.rate:g} req/s over {r.connections} connections, "
              f"{r.duration:g} s): latency from the scheduled send")
        print(f"  {'query kind':<28}{'n':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for kind in (*KINDS, "all"):
            xs = r.latencies_ms if kind == "all" else by_kind[kind]
            label = "all kinds" if kind == "all" else KIND_LABELS[kind]
            print(f"  {label:<28}{len(xs):>6}{percentile(xs, 50):>9.2f}{percentile(xs, 90):>9.2f}"
                  f"{percentile(xs, 99):>9.2f}{max(xs, default=math.nan):>9.2f}")
        statuses = ", ".join(f"{k}×{v}" for k, v in sorted(r.statuses.items()))
        print(f"  done/scheduled {r.completed}/{r.scheduled}, statuses {statuses}, errors {r.errors + r.unfinished}, "
              f"{r.late_sends} queued behind a busy connection, "
              f"generator lag p99 {percentile(r.send_lag_ms, 99):.2f} ms")
        print(f"    {self.cpu_line(r.cpu)}")
        self.results["searchOpenLoop"] = r.summary() | {
            "byKind": {k: {"n": len(v), "p50Ms": percentile(v, 50), "p90Ms": percentile(v, 90),
                           "p99Ms": percentile(v, 99), "maxMs": max(v, default=math.nan)} for k, v in by_kind.items()}}
        return by_kind

    def print_hits(self, hits: HitReport) -> None:
        print("\nCorrectness: each query once through the edge, first page (20)")
        print(f"  {'query kind':<28}{'asked':>6}{'hits':>6}{'rate':>8}{'itself':>8}{'median total':>14}"
              f"{'median namesakes':>18}")
        for kind in KINDS:
            totals = [float(x) for x in hits.totals[kind]]
            same = [float(x) for x in hits.namesakes[kind]]
            print(f"  {KIND_LABELS[kind]:<28}{hits.asked[kind]:>6}{hits.hits[kind]:>6}{hits.rate(kind):>8.1%}"
                  f"{hits.self_on_page[kind]:>8}{percentile(totals, 50):>14,.0f}{percentile(same, 50):>18,.0f}")
        print("  (hit: the intended patient or a namesake — same accent- and case-free name — is on the first page;"
              " partial: someone\n   with that family and given name is; MRN: the patient is the first result."
              " itself: the intended patient is on it.\n   total: matches the API reports, capped at 10,001;"
              " namesakes: live patients with the intended name)")
        if hits.misses:
            print("  misses (kind, query → first results):")
            for kind, text, first in hits.misses[:12]:
                print(f"    {kind:<8}{text!r:<34}→ {', '.join(first) or '(nothing)'}")
        if set(hits.statuses) != {200}:
            print(f"  statuses: {dict(hits.statuses)}")

    def print_sql(self, opened: OpenLoopResult, edge: dict[str, list[float]], indexed: SqlTimings,
                  unindexed: SqlTimings) -> None:
        self.results["sqlIndexed"] = indexed.summary()
        self.results["sqlUnindexed"] = unindexed.summary()
        print("\nThe same searches: through the edge (open loop above) · the handler's SQL straight against "
              "Postgres (one connection,\nsequential) · the same SQL without the search indexes (baseline, "
              f"{self.args.baseline_per_kind} queries per kind)")
        print(f"  {'query kind':<24}{'edge p50':>9}{'p99':>8}{'sql p50':>9}{'p99':>8}{'base p50':>10}{'p99':>9}"
              f"{'edge/base p50':>15}{'p99':>7}")
        rows = [(k, edge[k], indexed.by_kind[k], unindexed.by_kind[k]) for k in KINDS]
        rows.append(("all", opened.latencies_ms, indexed.all, unindexed.all))
        ratios: dict[str, dict[str, float]] = {}
        for kind, e, s, b in rows:
            e50, e99, b50, b99 = percentile(e, 50), percentile(e, 99), percentile(b, 50), percentile(b, 99)
            ratios[kind] = {"p50": e50 / b50, "p99": e99 / b99}
            label = "all kinds" if kind == "all" else KIND_LABELS[kind]
            print(f"  {label[:23]:<24}{e50:>9.2f}{e99:>8.2f}{percentile(s, 50):>9.2f}{percentile(s, 99):>8.2f}"
                  f"{b50:>10.1f}{b99:>9.1f}{e50 / b50:>15.4f}{e99 / b99:>7.4f}")
        a = ratios["all"]
        print(f"  ratio edge(indexed) / baseline(unindexed): p50 {a['p50']:.4f} (×{1 / a['p50']:,.0f} faster), "
              f"p99 {a['p99']:.4f} (×{1 / a['p99']:,.0f} faster)")
        added = percentile(opened.latencies_ms, 50) - percentile(indexed.all, 50)
        print(f"  the edge's share: p50 edge − p50 sql = {added:+.2f} ms (HTTP, JWT, broker round trip, audit record;"
              " the SQL itself is the rest)")
        print(f"  statements per search (SQL): {indexed.statements / max(1, len(indexed.all)):.2f} "
              "(the page; the capped count when the page is full)")
        self.results["ratioEdgeOverBaseline"] = ratios

    def print_explain(self, typo: str, plans: list[str], plans_unindexed: list[str], slowest: tuple[float, str],
                      slowest_plans: list[str]) -> None:
        self.results["explain"] = {"query": typo, "indexed": plans, "unindexed": plans_unindexed,
                                   "slowestQuery": slowest[1], "slowestMs": slowest[0], "slowestPlans": slowest_plans}
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) of the typo query {typo!r}, every statement the handler runs")
        groups = [("with the search indexes", plans), ("without them (baseline)", plans_unindexed)]
        if slowest[1] != typo:
            groups.append((f"the slowest query of the SQL pass, {slowest[1]!r} ({slowest[0]:.0f} ms there)",
                           slowest_plans))
        for title, group in groups:
            for i, plan in enumerate(group, 1):
                print(f"  -- {title}, statement {i} of {len(group)}")
                for line in plan.splitlines():
                    print(f"  {line}")

    # ------------------------------------------------------------------ encounters

    async def encounter_phases(self, clinic: Clinic) -> list[EncounterPhase]:
        args = self.args
        per_phase = max(2000, int(args.duration * args.encounter_ids_per_s))
        warm = max(500, int(args.warmup * args.encounter_ids_per_s))
        conn = await asyncpg.connect(self.target.dsn)
        try:
            ids = [r["id"] for r in await conn.fetch(
                "SELECT id::text AS id FROM patients.patients WHERE deleted_at IS NULL AND is_active "
                "ORDER BY md5(id::text || $1) LIMIT $2", f"e{args.seed}", warm + 2 * per_phase)]
        finally:
            await conn.close()
        if len(ids) < warm + 2 * per_phase:
            per_phase = (len(ids) - warm) // 2
            print(f"  note: only {len(ids)} live active patients; {per_phase} per phase")
        url = self.target.edge_url + "/encounters"
        threads = args.wrk_threads
        c = args.connections
        print(f"\nencounters warm-up: wrk {args.warmup:g} s at {c} connections over {ROOMS} rooms ...", flush=True)
        await self.wrk(url, encounter_lua(clinic.receptionist_token, ids[:warm], clinic.spread_links, threads),
                       c, args.warmup)
        phases: list[EncounterPhase] = []
        plan = [(f"{ROOMS} rooms", ROOMS, clinic.spread_links, clinic.spread_rooms, ids[warm:warm + per_phase]),
                ("one room", 1, [clinic.single_link], [clinic.single_room], ids[warm + per_phase:])]
        for label, n_rooms, links, rooms, patient_ids in plan:
            print(f"encounters: wrk {args.duration:g} s at {c} connections, {label} ...", flush=True)
            before = await self.settled_count(rooms)  # the warm-up's last requests may still be in flight
            result = await self.wrk(url, encounter_lua(clinic.receptionist_token, patient_ids, links, threads),
                                    c, args.duration)
            added = await self.settled_count(rooms) - before
            phases.append(EncounterPhase(label, n_rooms, result, wrk_statuses(result), added, len(patient_ids)))
        queues = await self.verify_queues([*clinic.spread_rooms, clinic.single_room])
        self.print_encounters(phases, queues)
        self.results["encounters"] = {"phases": [p.summary() for p in phases], "queues": queues}
        return phases

    async def settled_count(self, rooms: list[str]) -> int:
        """Encounters in `rooms`, once the count has not changed for a second (requests still in flight when
        wrk stopped are answered and committed after it)."""
        conn = await asyncpg.connect(self.target.dsn)
        try:
            last, deadline = -1, time.monotonic() + 30
            while True:
                count = await conn.fetchval(
                    "SELECT count(*) FROM patients.encounters WHERE room_id = ANY($1::uuid[])", rooms)
                if count == last or time.monotonic() > deadline:
                    return count
                last = count
                await asyncio.sleep(1.0)
        finally:
            await conn.close()

    async def verify_queues(self, rooms: list[str]) -> dict[str, Any]:
        """Every room's numbers of each day exactly 1..n, matching the counter row."""
        conn = await asyncpg.connect(self.target.dsn)
        try:
            rows = await conn.fetch(
                """SELECT coalesce(e.room_id, c.room_id)::text AS room,
                          coalesce(e.business_date, c.business_date) AS day,
                          e.n, e.distinct_numbers, e.lowest, e.highest, c.last_number
                   FROM (SELECT room_id, business_date, count(*) AS n, count(DISTINCT queue_number) AS distinct_numbers,
                                min(queue_number) AS lowest, max(queue_number) AS highest
                         FROM patients.encounters WHERE room_id = ANY($1::uuid[]) GROUP BY 1, 2) e
                   FULL JOIN (SELECT * FROM patients.queue_counters WHERE room_id = ANY($1::uuid[])) c
                     ON c.room_id = e.room_id AND c.business_date = e.business_date""", rooms)
        finally:
            await conn.close()
        checked, bad = [], []
        for r in rows:
            n = r["n"] or 0
            ok = (n == r["distinct_numbers"] == r["highest"] == r["last_number"]) and r["lowest"] == 1
            entry = {"room": r["room"], "day": str(r["day"]), "encounters": n, "distinct": r["distinct_numbers"],
                     "lowest": r["lowest"], "highest": r["highest"], "counter": r["last_number"], "ok": ok}
            checked.append(entry)
            if not ok:
                bad.append(entry)
        sizes = [e["encounters"] for e in checked]
        return {"roomDays": len(checked), "bad": bad, "ok": not bad and len(checked) >= 1,
                "encounters": sum(sizes), "smallest": min(sizes, default=0), "largest": max(sizes, default=0),
                "rooms": checked}

    def print_encounters(self, phases: list[EncounterPhase], queues: dict[str, Any]) -> None:
        print(f"\nPOST /encounters, closed loop (wrk, {self.args.connections} connections, {self.args.duration:g} s; "
              "every request a distinct patient)")
        print(f"  {'rooms':<12}{'enc/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'2xx':>8}{'non-2xx':>9}"
              f"{'sock err':>9}{'rows added':>12}")
        for p in phases:
            q = p.wrk.percentiles_ms
            print(f"  {p.label:<12}{p.wrk.rps:>8.1f}{q.get('50', math.nan):>9.2f}{q.get('90', math.nan):>9.2f}"
                  f"{q.get('99', math.nan):>9.2f}{p.ok_answers:>8}{p.wrk.non_2xx:>9}"
                  f"{sum(p.wrk.socket_errors.values()):>9}{p.rows_added:>12}")
            if p.statuses:
                print(f"    non-2xx statuses: {p.statuses}")
            if p.wrk.requests > p.patients_prepared:
                print(f"    note: {p.wrk.requests} requests for {p.patients_prepared} prepared patients: the list "
                      "wrapped (raise --encounter-ids-per-s)")
        for p in phases:
            print(f"    {p.label:<12}{self.cpu_line(p.wrk.cpu)}")
        print("  (rows added: encounters committed in those rooms during the phase, counted in Postgres; more than "
              "2xx by the requests\n   still in flight when wrk stopped)")
        verdict = "every one exactly 1..n, matching its counter" if queues["ok"] else f"{len(queues['bad'])} WRONG"
        print(f"  queue numbers: {queues['roomDays']} room-days, {queues['encounters']} encounters "
              f"({queues['smallest']}–{queues['largest']} per room): {verdict}")
        for bad in queues["bad"][:5]:
            print(f"    {bad}")

    # ------------------------------------------------------------------ targets

    def print_targets(self, closed: dict[int, WrkResult] | None, opened: OpenLoopResult | None,
                      hits: HitReport | None, encounters: list[EncounterPhase]) -> None:
        checks: list[tuple[str, str, bool]] = []
        if opened is not None:
            p99 = percentile(opened.latencies_ms, 99)
            checks.append((f"search p99 ≤ {TARGET_SEARCH_P99_MS:g} ms (edge, open loop {opened.rate:g}/s, all kinds)",
                           f"{p99:.1f} ms", p99 <= TARGET_SEARCH_P99_MS))
        for p in encounters:
            checks.append((f"≥ {TARGET_ENCOUNTERS_PER_S:g} encounters/s at c={self.args.connections}, {p.label}",
                           f"{p.wrk.rps:.0f}/s", p.wrk.rps >= TARGET_ENCOUNTERS_PER_S))
        queues = self.results["encounters"]["queues"]
        checks.append(("queue numbers gap-free and unique (1..n per room and day)",
                       "yes" if queues["ok"] else "NO", queues["ok"]))
        for kind in ("plain", "accents", "upper", "mrn") if hits else ():
            checks.append((f"search finds the name: {KIND_LABELS[kind]}", f"{hits.rate(kind):.1%}",
                           hits.rate(kind) == 1.0))
        errors = sum(r.non_2xx + sum(r.socket_errors.values()) for r in (closed or {}).values())
        if opened is not None:
            errors += opened.non_2xx + opened.errors + opened.unfinished
        errors += sum(p.wrk.non_2xx + sum(p.wrk.socket_errors.values()) for p in encounters)
        if hits is not None:
            errors += sum(n for status, n in hits.statuses.items() if status != 200)
        checks.append(("no non-2xx answers or socket errors", str(errors), errors == 0))
        print("\nTargets")
        for name, value, ok in checks:
            print(f"  {'ok' if ok else 'MISSED':<7}{name:<70}{value:>12}")
        if hits is not None:
            print(f"  reported, no target: typo hit rate {hits.rate('typo'):.1%}, partial name hit rate "
                  f"{hits.rate('partial'):.1%}")
        if "edge" in self.target.cpu_groups and self.rest_cpu and max(self.rest_cpu) > 25:
            print(f"  note: other processes used {min(self.rest_cpu):.0f}–{max(self.rest_cpu):.0f} % of a core during "
                  f"the phases (median {percentile(self.rest_cpu, 50):.0f} %): the machine was shared; the numbers "
                  "are pessimistic")
        self.results["targets"] = [{"check": name, "value": value, "ok": ok} for name, value, ok in checks]


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=1_000_000, help="synthetic patients to load (default 1,000,000)")
    p.add_argument("--duration", type=float, default=10, help="seconds per measured wrk phase; the open loop runs "
                                                              "twice as long (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk before the search and encounter phases")
    p.add_argument("--seed", type=int, default=20240611, help="seed of the data and of the query sample")
    p.add_argument("--queries-per-kind", type=int, default=40, help="patients drawn per kind of query (default 40)")
    p.add_argument("--baseline-per-kind", type=int, default=5,
                   help="queries per kind run without the search indexes (each scans the table; default 5)")
    p.add_argument("--connections", type=int, default=32, help="concurrency of the closed-loop phases (default 32)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--search-rate", type=float, default=0,
                   help="open-loop search rate, req/s (default: ½ the closed-loop throughput at --connections, "
                        "at most 50)")
    p.add_argument("--open-connections", type=int, default=4, help="connections of the open loop (default 4)")
    p.add_argument("--encounter-ids-per-s", type=float, default=3000,
                   help="distinct patients prepared per second of an encounter phase (default 3000)")
    p.add_argument("--edge-url", help="target an already running edge (needs --database-url)")
    p.add_argument("--database-url", help="its Postgres database (postgresql://...)")
    p.add_argument("--token", help="a system administrator's access token for --edge-url "
                                   "(else signs in with ADMIN_EMAIL / ADMIN_PASSWORD from the environment)")
    p.add_argument("--skip-load", action="store_true", help="use the patients already in the database")
    p.add_argument("--encounters-only", action="store_true", help="skip the search phases")
    p.add_argument("--keep-database", action="store_true",
                   help="leave the private stack's database, vhost and Redis db for inspection (processes stop)")
    p.add_argument("--json", type=Path, nargs="?", const=ROOT / "bench" / "results" / "patients.json",
                   help="also write the results to this file (default bench/results/patients.json)")
    args = p.parse_args(argv)
    if args.edge_url and not args.database_url:
        p.error("--edge-url needs --database-url (the patients are loaded and the queues checked in Postgres)")
    return args


def print_load(report: LoadReport) -> None:
    print(f"\nLoad: {report.patients:,} patients in {report.total_s:.1f} s "
          f"({report.patients / report.total_s:,.0f}/s overall; table had {report.existing:,} rows before)")
    print(f"  generate + COPY (asyncpg copy_records_to_table, binary): {report.copy_s:.1f} s "
          f"({report.patients / max(report.copy_s, 1e-9):,.0f} rows/s)")
    if report.rebuilt_indexes:
        slowest = sorted(report.rebuilt_indexes.items(), key=lambda kv: -kv[1])
        print(f"  secondary indexes rebuilt: {report.index_s:.1f} s (" +
              ", ".join(f"{name} {s:.1f} s" for name, s in slowest) + ")")
    print(f"  VACUUM (ANALYZE): {report.vacuum_s:.1f} s")
    print(f"  sizes: table {report.table_mb:,.0f} MB; " +
          ", ".join(f"{name} {mb:,.0f} MB" for name, mb in report.index_mb.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: run .ci/bench-tools.sh (apt-get install wrk)", file=sys.stderr)
        return 2
    facts = machine_facts()
    command = shlex.join(_masked(sys.orig_argv))
    print("Patients benchmark: name search over synthetic patients, encounter creation")
    print(f"  command : {command}")
    print(f"  machine : nproc {facts['nproc']} ({facts['cpus']} CPUs), {facts['cpuModel']}, Linux {facts['kernel']}, "
          f"load average at start {' '.join(f'{x:.2f}' for x in facts['loadAverage'])}")
    print(f"  tools   : Python {facts['python']} (uvloop), {facts['wrk']}")

    services = stack = None
    logs_dir: str | None = None
    succeeded = False
    results: dict[str, Any] = {}
    try:
        groups: dict[str, Callable[[], list[int]]] = {}
        if args.edge_url:
            edge_url, dsn = args.edge_url.rstrip("/"), args.database_url
            token = args.token or asyncio.run(sign_in(edge_url, os.environ.get("ADMIN_EMAIL", ""),
                                                      os.environ.get("ADMIN_PASSWORD", "")))
            groups["postgres"] = lambda: _pids_named("postgres")
            print(f"  target  : running stack at {edge_url}")
        else:
            from tests.support import PrivateServices, Stack

            print("  target  : private stack booted by this script "
                  f"({', '.join(f'{k}={v}' for k, v in STACK_OVERRIDES.items())}); booting ...", flush=True)
            services = PrivateServices.create(prefix="imaging_bench")
            logs_dir = tempfile.mkdtemp(prefix="patients-bench-logs-")
            env = services.env(ROOT, Path(logs_dir), **STACK_OVERRIDES)
            stack = Stack(env, ROOT)
            stack.boot()
            edge_url, dsn = stack.edge_url, env["DATABASE_URL"]
            token = asyncio.run(sign_in(edge_url, env["ADMIN_EMAIL"], env["ADMIN_PASSWORD"]))
            procs = dict(stack.procs)
            others = [p.pid for name, p in procs.items() if name in ("imaging", "system", "relay")]
            db_name = services.db_name
            groups.update({
                "edge": lambda: [procs["edge"].pid], "patients": lambda: [procs["patients"].pid],
                "users": lambda: [procs["users"].pid], "other-workers": lambda: others,
                "postgres": lambda: _pids_named("postgres", db_name),
            })
            print(f"  stack   : edge {edge_url}, database {db_name}")
        groups["rabbitmq"] = lambda: _pids_named("beam.smp")
        groups["redis"] = lambda: _pids_named("redis-server")

        if not args.skip_load:
            print(f"\nloading {args.patients:,} synthetic patients (seed {args.seed}) ...", flush=True)
            report = asyncio.run(load_patients(dsn, args.patients, args.seed))
            results["load"] = report.summary()
            print_load(report)

        async def run() -> Bench:
            bench = Bench(args, Target(edge_url, dsn, token, groups))
            await bench.run()
            return bench

        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                bench = runner.run(run())
        except ImportError:
            bench = asyncio.run(run())
        facts["loadAverageEnd"] = os.getloadavg()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"command": command, "machine": facts, "edgeUrl": edge_url,
                                             "settings": STACK_OVERRIDES if stack else None,
                                             "duration": args.duration, **results, **bench.results},
                                            indent=2, default=str))
            print(f"\nresults written to {args.json}")
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in facts['loadAverageEnd'])} "
              f"(on {facts['nproc']} CPUs; anything else running on the machine is in these numbers)")
        succeeded = True
        return 0
    finally:
        if stack is not None:
            stack.stop_all()
        if services is not None:
            if args.keep_database:
                print(f"kept: database {services.db_name}, vhost {services.vhost}, Redis db {services.redis_db}",
                      file=sys.stderr)
            else:
                services.destroy()
        if logs_dir is not None:
            if succeeded:
                shutil.rmtree(logs_dir, ignore_errors=True)
            else:
                print(f"the stack's logs are kept in {logs_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
