"""DICOMweb benchmark (issue 5): our DICOMweb next to Orthanc's, in one run, on the same data, with
the same client and the same concurrency.

    python bench/dicomweb.py [--studies 4] [--batch 10] [--concurrency 4] [--samples 300] [--json [PATH]]
    python bench/dicomweb.py --studies 1 --skip-million                    # a quick development run
    python bench/dicomweb.py --instances 200000                             # a smaller index for phase 4

It boots a private stack (own Postgres database, RabbitMQ vhost and Redis db, BLOB_DIR in a temporary
directory; edge, relay and the four workers as subprocesses, tests/support.py; LOG_LEVEL=WARNING, no
rate limits, cheap argon2), creates an imaging technician through the API as the seeded admin, and
starts Orthanc (Debian packages `orthanc` and `orthanc-dicomweb`, .ci/bench-tools.sh) on loopback with a
generated configuration in a temporary directory: free HTTP port, DICOM server off, storage and SQLite
index in the temporary directory, remote access and authentication off, the DICOMweb plugin at
/dicom-web/, `SyncStorageArea: true` (every file fsync'd before it is indexed and acknowledged: the
default since 1.7.4, set explicitly), everything else at its defaults (HTTP keep-alive, 50 HTTP
threads, no storage compression). Without Orthanc (or with `--no-orthanc`) our server runs alone.
Everything runs on 127.0.0.1 and is stopped and removed at the end.

Data: `--studies` studies × 1 series × `--per-series` (100) instances of a 512×512 16-bit CT (~0.5 MB
each, tests/dicom_factory.py `ct_instance`), made once; the very same bytes go to both servers.

1. Ingest: STOW-RS `POST /dicom-web/studies`, `--batch` instances per request, `--concurrency`
   requests in flight (keep-alive connections of our own asyncio client: uvloop protocols, HTTP/1.1,
   the bodies built in advance, so the client only writes bytes), batches in series order
   (`--spread`: round-robin over the series, so concurrent requests hit different series).
   Instances/s over the whole load; every answer checked (200, every SOP instance referenced, none
   failed). One warm-up request (another study) first. CPU per process group and the disk's writes
   (/proc/diskstats) during each load; os.sync() and a pause before each.
2. Latency, sequential (c=1), warm (`--warmup` rounds of each request first; the first series
   metadata of each series, cold, is reported apart), `--samples` rounds; each round draws one target
   and asks both servers the same request, alternating which goes first:
     QIDO      GET /studies?PatientID=<id>            (Accept: application/dicom+json)
     metadata  GET /studies/{s}/series/{se}/metadata  (Accept: application/dicom+json)
     frames    GET …/instances/{i}/frames/1           (Accept: multipart/related;
               type=application/octet-stream; transfer-syntax=*), a random instance
   Every answer is checked so that a broken server cannot look fast: QIDO the one study with its
   UID, metadata all `--per-series` instances with their UIDs, frames one part of rows×columns×2
   bytes equal to the instance's pixel data (sha256). `--gzip` sends Accept-Encoding: gzip to both.
3. Ratios ours / Orthanc with the issue's targets.
4. QIDO at scale (Orthanc stopped first): `--instances` (1,000,000) instances COPYed straight into our
   index with bench/qido_sql.py's loader (10,000 studies of 100 instances in 2–6 series, ~3,000
   PatientIDs, dates over five years, names, ~1 KB DICOM JSON per instance, blob keys pointing
   nowhere: queries only), VACUUM (ANALYZE); then through the edge, c=1: `/studies?PatientID=<id>`
   and OHIF's study list, p50/p99 (answers checked); the same SQL alone (asyncpg prepared statement,
   as the worker runs it) and its EXPLAIN (ANALYZE, BUFFERS), custom and generic plan.
   `--skip-million` leaves it out.

CPU per process group is shown for each load and, per request, for each latency kind. `--profile DIR`
adds py-spy profiles (GIL-holding samples) of the edge and the imaging worker during one more STOW load
and `--profile-seconds` of each request kind, summarised by function.

Targets (issue 5, this 2-core machine): ingest ≥ 1.5× Orthanc's instances/s (every file fsync'd before
it is acknowledged); QIDO p50 ≤ 0.5× Orthanc's, and p99 ≤ 20 ms with 1M instances in the index;
series metadata p50 ≤ 0.3× Orthanc's; frames p50 no slower than Orthanc's (≤ 1×).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import math
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.roundtrip import (  # noqa: E402 - after the path set-up
    STACK_OVERRIDES,
    CpuMeter,
    _masked,
    _pids_named,
    machine_facts,
    percentile,
    sign_in,
)
from tests.dicom_factory import StudySpec, ct_instance, multipart_related, new_uid, parse_multipart  # noqa: E402

ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOMWEB_OVERRIDES = {
    "DICOMWEB_RATE_LIMIT_PER_MINUTE": "1000000000",  # the default 30,000/min/user would throttle the benchmark
    "INGEST_TIMEOUT": "120s",
}
DICOM_JSON = "application/dicom+json"
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_LIST = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"

TARGET_INGEST_RATIO = 1.5  # ours / Orthanc, at least
TARGET_QIDO_RATIO = 0.5  # p50 ours / Orthanc, at most
TARGET_METADATA_RATIO = 0.3
TARGET_FRAMES_RATIO = 1.0
TARGET_QIDO_P99_1M_MS = 20.0

KINDS = ("qido", "metadata", "frames")
KIND_LABELS = {"qido": "QIDO /studies?PatientID=X", "metadata": "series /metadata",
               "frames": "/frames/1 (one 512×512 frame)"}


# ----------------------------------------------------------------------------------- HTTP client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    ms: float

    def content(self) -> bytes:
        return gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body

    def json(self) -> Any:
        return json.loads(self.content())


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; the whole answer is kept (framed by
    Content-Length, chunked, or the connection's close)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes, float]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.length: int | None = None
        self.chunked = False
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if self.head_done and self.length is None and not self.chunked:  # framed by the close
            waiter.set_result((self.status, self.headers, bytes(self.body + self.buf), time.perf_counter()))
        else:
            waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    def send(self, chunks: Sequence[bytes]) -> asyncio.Future[tuple[int, dict[str, str], bytes, float]]:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        for chunk in chunks:
            self.transport.write(chunk)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._advance()

    def _advance(self) -> None:
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.head_done = True
            if self.status in (204, 304) or self.status < 200:
                self.length = 0
            elif "content-length" in self.headers:
                self.length = int(self.headers["content-length"])
            else:
                self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if self.length is not None:
            if len(self.buf) < self.length:
                return
            self.body = self.buf[: self.length]
            del self.buf[: self.length]
            self._done()
        elif self.chunked:
            while True:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                if size == 0:
                    end = self.buf.find(b"\r\n\r\n", eol)  # after the (usually absent) trailers
                    if end < 0:
                        return
                    del self.buf[: end + 4]
                    self._done()
                    return
                if len(self.buf) < eol + 2 + size + 2:
                    return
                self.body += self.buf[eol + 2 : eol + 2 + size]
                del self.buf[: eol + 2 + size + 2]

    def _done(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, self.headers, bytes(self.body), time.perf_counter()))
        if self.headers.get("connection", "").lower() == "close" and self.transport is not None:
            self.transport.close()


class Client:
    """Keep-alive HTTP/1.1 connections to one server (`slot` picks one; each is opened on first use
    and reopened after the server closed it)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.headers = dict(headers or {})
        self.conns: dict[int, _Connection] = {}

    async def _conn(self, slot: int) -> _Connection:
        conn = self.conns.get(slot)
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            self.conns[slot] = conn
        return conn

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
                   slot: int = 0, timeout: float = 60.0) -> Reply:
        reused = slot in self.conns and not self.conns[slot].closed
        conn = await self._conn(slot)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: dicomweb-bench\r\n"
        for name, value in {**self.headers, **(headers or {})}.items():
            head += f"{name}: {value}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        data = [(head + "\r\n").encode(), body] if body else [(head + "\r\n").encode()]
        started = time.perf_counter()
        try:
            status, reply_headers, answer, done = await asyncio.wait_for(conn.send(data), timeout)
        except ConnectionError:
            if not reused or method != "GET":
                raise
            # a keep-alive connection the server closed as the request left (Orthanc closes idle ones
            # after 1 s): once more on a new connection, timed from there
            conn = await self._conn(slot)
            started = time.perf_counter()
            status, reply_headers, answer, done = await asyncio.wait_for(conn.send(data), timeout)
        except (TimeoutError, asyncio.CancelledError):
            if conn.transport is not None:
                conn.transport.close()
            raise
        return Reply(status, reply_headers, answer, (done - started) * 1000)

    def close(self) -> None:
        for conn in self.conns.values():
            if conn.transport is not None:
                conn.transport.close()
        self.conns.clear()


@dataclass
class Server:
    key: str  # "ours" / "orthanc"
    label: str
    client: Client
    root: str  # the DICOMweb root path, no trailing slash
    groups: dict[str, Callable[[], list[int]]]
    version: str = ""


# ------------------------------------------------------------------------------------------ data


@dataclass
class SeriesData:
    study_uid: str
    series_uid: str
    patient_id: str
    sops: list[str]


@dataclass
class Batch:
    body: bytes
    content_type: str
    sops: list[str]


@dataclass
class Data:
    series: list[SeriesData]
    batches: list[Batch]
    warm: Batch
    frame_sha: dict[str, str]  # SOP instance UID → sha256 of its (only) frame
    frame_bytes: int
    instance_bytes: int  # mean file size
    seconds: float


def make_data(args: argparse.Namespace, tag: str) -> Data:
    """`--studies` studies of one series of `--per-series` CT instances, cut into STOW bodies of
    `--batch` instances; plus one warm-up batch of another study."""
    started = time.perf_counter()
    frame_bytes = args.rows * args.columns * 2
    frame_sha: dict[str, str] = {}
    sizes: list[int] = []

    def one_series(n: int, count: int) -> tuple[SeriesData, list[Batch]]:
        spec = StudySpec(patient_id=f"DWB{tag}{n:03d}", patient_name=f"Bench^Dicomweb^{n}",
                         study_date=f"2026{1 + n % 12:02d}{1 + n % 28:02d}", description="CT CHEST BENCH")
        series_uid = new_uid()
        sops, batches, files = [], [], []
        for i in range(1, count + 1):
            sop = new_uid()
            data = ct_instance(spec, series_uid=series_uid, sop_uid=sop, instance_number=i, rows=args.rows,
                               columns=args.columns, seed=n * 100_003 + i)
            frame_sha[sop] = hashlib.sha256(data[-frame_bytes:]).hexdigest()  # PixelData is the file's last element
            sizes.append(len(data))
            sops.append(sop)
            files.append(data)
            if len(files) == args.batch or i == count:
                body, content_type = multipart_related(files, boundary=f"bench{secrets.token_hex(12)}")
                batches.append(Batch(body, content_type, sops[-len(files):]))
                files = []
        return SeriesData(spec.study_uid, series_uid, spec.patient_id, sops), batches

    series: list[SeriesData] = []
    per_series: list[list[Batch]] = []
    for n in range(args.studies):
        s, b = one_series(n, args.per_series)
        series.append(s)
        per_series.append(b)
    _, warm = one_series(999, args.batch)
    if args.spread:  # round-robin over the series
        longest = max(len(g) for g in per_series)
        batches = [g[i] for i in range(longest) for g in per_series if i < len(g)]
    else:
        batches = [b for group in per_series for b in group]
    return Data(series, batches, warm[0], frame_sha, frame_bytes, round(sum(sizes) / len(sizes)),
                time.perf_counter() - started)


# ----------------------------------------------------------------------------------------- checks


def check_stow(reply: Reply, batch: Batch) -> str | None:
    """None when every instance of the batch was stored, else what is wrong."""
    if reply.status != 200:
        return f"STOW answered {reply.status}: {reply.content()[:300]!r}"
    doc = reply.json()
    if doc.get("00081198", {}).get("Value"):
        return f"STOW failed instances: {json.dumps(doc['00081198'])[:300]}"
    referenced = {item.get("00081155", {}).get("Value", [None])[0]
                  for item in doc.get("00081199", {}).get("Value", [])}
    if referenced != set(batch.sops):
        return f"STOW referenced {len(referenced)} of {len(batch.sops)} instances"
    return None


def _uid(obj: dict[str, Any], tag: str) -> str | None:
    values = obj.get(tag, {}).get("Value") or [None]
    return values[0]


def check_qido(reply: Reply, series: SeriesData) -> str | None:
    if reply.status != 200:
        return f"QIDO answered {reply.status}"
    items = reply.json()
    if len(items) != 1 or _uid(items[0], "0020000D") != series.study_uid:
        return f"QIDO found {len(items)} studies, not exactly {series.study_uid}"
    return None


def check_metadata(reply: Reply, series: SeriesData) -> str | None:
    if reply.status != 200:
        return f"metadata answered {reply.status}"
    items = reply.json()
    found = {_uid(item, "00080018") for item in items}
    if len(items) != len(series.sops) or found != set(series.sops):
        return f"metadata holds {len(items)} instances ({len(found & set(series.sops))} of the series')"
    return None


def check_frame(reply: Reply, sop: str, data: Data) -> str | None:
    if reply.status != 200:
        return f"frames answered {reply.status}: {reply.content()[:200]!r}"
    content_type = reply.headers.get("content-type", "")
    if not content_type.startswith("multipart/related"):
        return f"frames answered {content_type!r}"
    parts = parse_multipart(reply.content(), content_type)
    if len(parts) != 1:
        return f"frames: {len(parts)} parts"
    frame = parts[0][1]
    if len(frame) != data.frame_bytes:
        return f"frames: {len(frame)} bytes, not {data.frame_bytes}"
    if hashlib.sha256(frame).hexdigest() != data.frame_sha[sop]:
        return "frames: the pixel data differ from the instance's"
    return None


# ----------------------------------------------------------------------------------------- phases


def _disk_device() -> str | None:
    """The block device (as in /proc/diskstats) holding the temporary directory."""
    dev = os.stat(tempfile.gettempdir()).st_dev
    name = f"{os.major(dev)}:{os.minor(dev)}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            fields = line.split()
            if f"{fields[0]}:{fields[1]}" == name:
                return fields[2]
    return None


def _disk_counters(device: str | None) -> tuple[int, int]:
    """(bytes written, flush requests) of the device so far."""
    if device is None:
        return 0, 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == device:
            flushes = int(fields[18]) if len(fields) > 18 else 0
            return int(fields[9]) * 512, flushes
    return 0, 0


@dataclass
class IngestResult:
    server: str
    instances: int = 0
    requests: int = 0
    seconds: float = math.nan
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    disk_written: int = 0
    disk_flushes: int = 0

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds and not self.errors else math.nan

    def summary(self) -> dict[str, Any]:
        return {"server": self.server, "instances": self.instances, "requests": self.requests,
                "seconds": self.seconds, "instancesPerSecond": self.rate,
                "requestP50Ms": percentile(self.latencies_ms, 50), "requestP99Ms": percentile(self.latencies_ms, 99),
                "errors": self.errors, "cpuPercentOfOneCore": self.cpu, "diskBytesWritten": self.disk_written,
                "diskFlushes": self.disk_flushes}


async def stow(server: Server, batch: Batch, slot: int, timeout: float) -> tuple[Reply | None, str | None]:
    try:
        reply = await server.client.call("POST", f"{server.root}/studies", body=batch.body, slot=slot,
                                         headers={"Content-Type": batch.content_type, "Accept": DICOM_JSON},
                                         timeout=timeout)
    except (OSError, TimeoutError) as exc:
        return None, f"STOW: {exc!r}"
    return reply, check_stow(reply, batch)


async def ingest(server: Server, batches: list[Batch], concurrency: int, timeout: float,
                 device: str | None) -> IngestResult:
    result = IngestResult(server.key)
    queue = iter(batches)
    meter = CpuMeter(server.groups)

    async def worker(slot: int) -> None:
        for batch in queue:
            reply, error = await stow(server, batch, slot, timeout)
            result.requests += 1
            if reply is not None:
                result.latencies_ms.append(reply.ms)
            if error is not None:
                result.errors.append(error)
            else:
                result.instances += len(batch.sops)

    await asyncio.to_thread(os.sync)
    await asyncio.sleep(2)
    for slot in range(concurrency):  # connections opened before the clock starts
        await server.client._conn(slot)
    disk_before = _disk_counters(device)
    before = meter.snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.cpu = meter.usage(before, meter.snapshot())
    disk_after = _disk_counters(device)
    result.disk_written, result.disk_flushes = disk_after[0] - disk_before[0], disk_after[1] - disk_before[1]
    return result


@dataclass
class Samples:
    ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per request, per process group

    def add(self, reply: Reply | None, error: str | None) -> None:
        if reply is not None:
            self.ms.append(reply.ms)
            self.size.append(len(reply.body))
        if error is not None:
            self.errors.append(error)

    def p(self, q: float) -> float:
        return percentile(self.ms, q) if not self.errors else math.nan

    def summary(self) -> dict[str, Any]:
        return {"n": len(self.ms), "p50Ms": percentile(self.ms, 50), "p90Ms": percentile(self.ms, 90),
                "p99Ms": percentile(self.ms, 99), "maxMs": max(self.ms, default=math.nan),
                "meanBytes": sum(self.size) / len(self.size) if self.size else 0, "errors": self.errors[:10],
                "errorCount": len(self.errors), "cpuMsPerRequest": self.cpu_ms}


Request = tuple[str, dict[str, str], Callable[[Reply], str | None]]  # path, headers, check


def request_of(kind: str, server: Server, data: Data, series: SeriesData, sop: str,
               extra: dict[str, str]) -> Request:
    root = server.root
    if kind == "qido":
        return (f"{root}/studies?PatientID={quote(series.patient_id)}", {"Accept": DICOM_JSON, **extra},
                lambda r: check_qido(r, series))
    if kind == "metadata":
        return (f"{root}/studies/{series.study_uid}/series/{series.series_uid}/metadata",
                {"Accept": DICOM_JSON, **extra}, lambda r: check_metadata(r, series))
    return (f"{root}/studies/{series.study_uid}/series/{series.series_uid}/instances/{sop}/frames/1",
            {"Accept": FRAMES_ACCEPT, **extra}, lambda r: check_frame(r, sop, data))


async def ask(server: Server, request: Request, timeout: float = 60.0) -> tuple[Reply | None, str | None]:
    path, headers, check = request
    try:
        reply = await server.client.call("GET", path, headers=headers, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        return None, f"{path}: {exc!r}"
    try:
        return reply, check(reply)
    except (ValueError, KeyError, AssertionError, StopIteration) as exc:
        return reply, f"{path}: unreadable answer ({exc!r})"


async def latency(servers: list[Server], data: Data, args: argparse.Namespace,
                  rng: random.Random) -> tuple[dict[str, dict[str, Samples]], dict[str, Samples]]:
    """Per kind and server: warm samples; and per server the first (cold) series metadata."""
    extra = {"Accept-Encoding": "gzip"} if args.gzip else {}
    cold = {s.key: Samples() for s in servers}
    for series in data.series:  # the first metadata of each series, both servers
        for server in servers:
            cold[server.key].add(*await ask(server, request_of("metadata", server, data, series, "", extra)))
    results: dict[str, dict[str, Samples]] = {}
    meter = CpuMeter({f"{s.key}:{name}": pids for s in servers for name, pids in s.groups.items()})
    for kind in KINDS:
        results[kind] = {s.key: Samples() for s in servers}
        before: dict[str, Any] = {}
        for i in range(args.warmup + args.samples):
            if i == args.warmup:
                before = meter.snapshot()
            series = rng.choice(data.series)
            sop = rng.choice(series.sops)
            order = servers if i % 2 == 0 else servers[::-1]
            for server in order:
                reply, error = await ask(server, request_of(kind, server, data, series, sop, extra))
                if i >= args.warmup:
                    results[kind][server.key].add(reply, error)
                elif error is not None:
                    results[kind][server.key].errors.append(f"warm-up: {error}")
        seconds = time.monotonic() - before["t"]
        for name, pct in meter.usage(before, meter.snapshot()).items():  # % of a core → CPU ms per request
            key, _, group = name.partition(":")
            for server in servers:
                if key == server.key or not group:
                    results[kind][server.key].cpu_ms[group or key] = pct / 100 * seconds * 1000 / args.samples
    return results, cold


# -------------------------------------------------------------------------------- 1M-instance QIDO


async def million(ours: Server, dsn: str, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    from bench.qido_sql import load
    from contracts.imaging import QidoLevel
    from contracts.settings import Settings
    from edge.dicomweb.qido_params import parse_qido
    from workers.imaging.qido import plan_search

    studies = max(1, args.instances // 100)
    print(f"\nQIDO at scale: loading {studies:,} studies × 100 instances into our index "
          "(bench/qido_sql.py's loader, COPY) ...", flush=True)
    started = time.perf_counter()
    await load(dsn, studies, 100, args.seed)
    load_seconds = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    try:
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM imaging.instances) AS instances, (SELECT count(*) FROM imaging.series) "
            "AS series, (SELECT count(*) FROM imaging.studies) AS studies")
        per_pid = {r["patient_id_in_file"]: r["n"] for r in await conn.fetch(
            "SELECT patient_id_in_file, count(*) AS n FROM imaging.studies WHERE patient_id_in_file LIKE 'PID%' "
            "GROUP BY patient_id_in_file")}
    finally:
        await conn.close()
    pids = sorted(per_pid)
    spread = sorted(per_pid.values())
    print(f"  index: {counts['instances']:,} instances, {counts['series']:,} series, {counts['studies']:,} studies; "
          f"{len(pids):,} PatientIDs, studies per PatientID p50 {percentile(spread, 50):.0f}, "
          f"p90 {percentile(spread, 90):.0f}, max {spread[-1]} (loaded in {load_seconds:.0f} s)", flush=True)

    def pid_check(pid: str) -> Callable[[Reply], str | None]:
        def check(reply: Reply) -> str | None:
            if reply.status != 200:
                return f"QIDO answered {reply.status}"
            items = reply.json()
            if len(items) != per_pid[pid] or any(_uid(item, "00100020") != pid for item in items):
                return f"QIDO PatientID={pid}: {len(items)} studies, expected {per_pid[pid]}"
            return None
        return check

    def list_check(reply: Reply) -> str | None:
        if reply.status != 200:
            return f"QIDO answered {reply.status}"
        n = len(reply.json())
        return None if n == 101 else f"study list: {n} studies, not 101"

    extra = {"Accept-Encoding": "gzip"} if args.gzip else {}

    def by_pid() -> Request:
        pid = rng.choice(pids)
        return f"{ours.root}/studies?PatientID={pid}", {"Accept": DICOM_JSON, **extra}, pid_check(pid)

    cases: dict[str, Callable[[], Request]] = {
        "PatientID": by_pid,
        "OHIF study list": lambda: (f"{ours.root}/studies?{OHIF_LIST}", {"Accept": DICOM_JSON, **extra}, list_check),
    }
    edge: dict[str, Samples] = {}
    for label, make in cases.items():
        samples = edge[label] = Samples()
        for i in range(args.warmup + args.samples):
            reply, error = await ask(ours, make())
            if i >= args.warmup:
                samples.add(reply, error)
            elif error is not None:
                samples.errors.append(f"warm-up: {error}")

    # The same statements alone, as the worker runs them (asyncpg prepared statements, autocommit).
    settings = Settings()
    queries = {"PatientID": lambda: f"PatientID={rng.choice(pids)}", "OHIF study list": lambda: OHIF_LIST}

    def plan_of(qs: str) -> Any:
        q = parse_qido(QidoLevel.STUDY, parse_qsl(qs, keep_blank_values=True), study_instance_uid=None,
                       series_instance_uid=None, settings=settings)
        plan, _, _, _ = plan_search(q, default_limit=settings.qido_default_limit, max_limit=settings.qido_max_limit)
        assert plan is not None
        return plan

    sql: dict[str, Samples] = {}
    explain: dict[str, dict[str, list[str]]] = {}
    conn = await asyncpg.connect(dsn)
    try:
        for label, make in queries.items():
            samples = sql[label] = Samples()
            for i in range(args.warmup + args.samples):
                plan = plan_of(make())
                started = time.perf_counter()
                await conn.fetch(plan.sql, *plan.params)
                if i >= args.warmup:
                    samples.ms.append((time.perf_counter() - started) * 1000)
            plan = plan_of(make())
            explain[label] = {"sql": [plan.sql]}
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql, *plan.params)
                explain[label][mode] = [r[0] for r in rows]
            await conn.execute("RESET plan_cache_mode")
    finally:
        await conn.close()
    return {"instances": counts["instances"], "series": counts["series"], "studies": counts["studies"],
            "patientIds": len(pids), "studiesPerPatientId": {"p50": percentile(spread, 50),
                                                             "p90": percentile(spread, 90), "max": spread[-1]},
            "loadSeconds": load_seconds, "edge": edge, "sql": sql, "explain": explain}


# ----------------------------------------------------------------------------------------- profile


async def profile(ours: Server, data: Data, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """py-spy (250 Hz, samples of the thread holding the GIL: Python's own CPU, not hashing or I/O in
    threads that released it) on the edge and the imaging worker: during a STOW load of fresh instances
    (as many as the measured load), then during `--profile-seconds` of each sequential request kind;
    raw stacks in `--profile DIR`, the heaviest functions printed."""
    out_dir: Path = args.profile
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("\nprofile: py-spy is missing")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    pids = {name: ours.groups[name]()[0] for name in ("edge", "imaging")}
    fresh = make_data(args, "PRF" + secrets.token_hex(2).upper())
    out: dict[str, Any] = {}
    for phase in ("ingest", *KINDS):
        spies = {name: await asyncio.create_subprocess_exec(
            py_spy, "record", "--gil", "--format", "raw", "--rate", "250", "--pid", str(pid),
            "--output", str(out_dir / f"{phase}-{name}.txt"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL) for name, pid in pids.items()}
        await asyncio.sleep(1.0)
        if phase == "ingest":
            result = await ingest(ours, fresh.batches, args.concurrency, args.timeout, None)
            units, what = result.instances, "instance"
            note = f"{result.rate:.0f} instances/s, {len(result.errors)} errors"
        else:
            units, errors = 0, 0
            deadline = time.monotonic() + args.profile_seconds
            while time.monotonic() < deadline:
                series = rng.choice(data.series)
                _, error = await ask(ours, request_of(phase, ours, data, series, rng.choice(series.sops), {}))
                units += 1
                errors += error is not None
            what = "request"
            note = f"{units} requests, {errors} errors"
        for proc in spies.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in spies.values():
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        print(f"\nprofile, {phase} ({note}; slowed down by the sampling); py-spy --gil 250 Hz:")
        out[phase] = {}
        for name in pids:
            path = out_dir / f"{phase}-{name}.txt"
            if not path.exists():
                print(f"  {name}: no profile written")
                continue
            summary = summarize_stacks(path.read_text(errors="replace"), units, args.profile_top)
            out[phase][name] = summary
            print(f"  {name} ({path}): {summary['samples']} samples = {summary['msPerUnit']:.2f} ms holding the GIL "
                  f"per {what}; by function, inclusive share (self share):")
            for func, inclusive, own in summary["functions"]:
                print(f"    {100 * inclusive:5.1f} % ({100 * own:4.1f} %)  {func}")
    return out


_GENERIC = ("<module>", "_run_code", "_run_module_as_main", "Runner.run ", "run_forever", "_run_once",
            "Handle._run", "Thread.", "_worker (concurrent", "asyncio_run ", "Server.run ", "run (uvicorn",
            "run_edge ", "run_worker ")


def summarize_stacks(raw: str, units: int, top: int) -> dict[str, Any]:
    """py-spy's raw format (`frame;frame;… count` per line), by function (line numbers dropped):
    the inclusive share (each function once per stack) and the self share (the innermost frame), the
    `top` functions by inclusive share, runtime scaffolding left out."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        funcs = [frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") else frame for frame in stack.split(";")]
        for func in set(funcs):
            inclusive[func] = inclusive.get(func, 0) + n
        own[funcs[-1]] = own.get(funcs[-1], 0) + n
    ranked = [(f, n) for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1]) if not f.startswith(_GENERIC)]
    return {"samples": total, "msPerUnit": 1000 * total / 250 / units if units else math.nan,
            "functions": [(f, n / total, own.get(f, 0) / total) for f, n in ranked[:top]] if total else []}


# ----------------------------------------------------------------------------------------- Orthanc


class Orthanc:
    """Orthanc with its DICOMweb plugin on loopback, configured and stored in a temporary directory."""

    def __init__(self, binary: str, plugin: str, workdir: Path) -> None:
        from tests.support import free_port

        self.binary, self.plugin, self.dir = binary, plugin, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = {
            "Name": "dicomweb-bench",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SyncStorageArea": True,  # fsync() each file before it is indexed and acknowledged
            "StorageCompression": False,
            "OverwriteInstances": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.port}", "Ssl": False},
        }

    def start(self, timeout: float = 60) -> str:
        """Starts it and waits for the REST API and the plugin; returns the versions."""
        (self.dir / "storage").mkdir(parents=True, exist_ok=True)
        (self.dir / "index").mkdir(parents=True, exist_ok=True)
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        log = open(self.dir / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([self.binary, str(path)], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                system = httpx.get(f"http://127.0.0.1:{self.port}/system", timeout=5)
                plugin = httpx.get(f"http://127.0.0.1:{self.port}/plugins/dicom-web", timeout=5)
                if system.status_code == 200 and plugin.status_code == 200:
                    return f"Orthanc {system.json()['Version']}, DICOMweb plugin {plugin.json()['Version']}"
                last = f"{system.status_code} {plugin.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise RuntimeError(f"Orthanc not ready: {last}\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.dir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------- printing


def cpu_line(cpu: dict[str, float], order: Sequence[str]) -> str:
    parts = [f"{name} {cpu[name]:.0f}" for name in ("generator", *order, "rest") if name in cpu]
    return "CPU % of one core: " + ", ".join(parts) + f"; machine {cpu.get('machine', math.nan):.0f} " \
           f"of {100 * (os.cpu_count() or 1)}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def print_ingest(results: list[IngestResult], servers: dict[str, Server], data: Data,
                 args: argparse.Namespace) -> None:
    n = len(data.batches)
    print(f"\nIngest: STOW-RS of {sum(len(b.sops) for b in data.batches)} instances ({data.instance_bytes:,} bytes "
          f"each) in {n} requests of {args.batch}, {args.concurrency} in flight, "
          f"{'round-robin over the series' if args.spread else 'in series order'}, same client")
    print(f"  {'server':<10}{'inst/s':>9}{'MB/s':>8}{'wall s':>8}{'req p50 ms':>12}{'req p99 ms':>12}"
          f"{'disk MB':>9}{'flushes/inst':>14}{'errors':>8}")
    for r in results:
        mb = r.instances * data.instance_bytes / 1e6
        print(f"  {servers[r.server].label:<10}{r.rate:>9.0f}{mb / r.seconds:>8.0f}{r.seconds:>8.2f}"
              f"{percentile(r.latencies_ms, 50):>12.1f}{percentile(r.latencies_ms, 99):>12.1f}"
              f"{r.disk_written / 1e6:>9.0f}{r.disk_flushes / max(r.instances, 1):>14.2f}{len(r.errors):>8}")
    for r in results:
        order = list(servers[r.server].groups)
        print(f"    {servers[r.server].label:<9}{cpu_line(r.cpu, order)}")
        per = {k: v / 100 * r.seconds * 1000 / max(r.instances, 1) for k, v in r.cpu.items()}
        print(f"    {'':<9}CPU ms per instance: " + ", ".join(f"{k} {per[k]:.2f}" for k in
                                                             ("generator", *order, "rest", "machine") if k in per))
        for error in r.errors[:5]:
            print(f"      error: {error}")
    print("  (disk MB, flushes/inst: writes and flush requests of the device during the load, /proc/diskstats; "
          "generator = this client)")


def print_latency(results: dict[str, dict[str, Samples]], cold: dict[str, Samples], servers: list[Server],
                  args: argparse.Namespace) -> None:
    print(f"\nLatency, sequential (c=1), warm: {args.samples} samples per request and server after {args.warmup} "
          f"warm-up rounds; both servers asked the same request in each round"
          + (" (Accept-Encoding: gzip)" if args.gzip else " (no Accept-Encoding)"))
    print(f"  {'request':<32}{'server':<10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'KB':>8}"
          f"{'errors':>8}")
    for kind in KINDS:
        for i, server in enumerate(servers):
            s = results[kind][server.key]
            label = KIND_LABELS[kind] if i == 0 else ""
            size = sum(s.size) / len(s.size) / 1024 if s.size else 0
            print(f"  {label:<32}{server.label:<10}{percentile(s.ms, 50):>9.2f}{percentile(s.ms, 90):>9.2f}"
                  f"{percentile(s.ms, 99):>9.2f}{max(s.ms, default=math.nan):>9.2f}{size:>8.0f}{len(s.errors):>8}")
    print("  CPU ms per request (both servers' rounds together for the shared rows: generator = this client, "
          "machine, rest):")
    for kind in KINDS:
        for server in servers:
            cpu = results[kind][server.key].cpu_ms
            own = [k for k in server.groups if k in cpu]
            shared = [k for k in ("generator", "machine", "rest") if k in cpu]
            print(f"    {kind:<9}{server.label:<9}" + ", ".join(f"{k} {cpu[k]:.2f}" for k in own)
                  + ("; " + ", ".join(f"{k} {cpu[k]:.2f}" for k in shared) if server is servers[0] else ""))
    line = ", ".join(f"{s.label} p50 {percentile(cold[s.key].ms, 50):.1f} ms (max {max(cold[s.key].ms):.1f})"
                     for s in servers if cold[s.key].ms)
    print(f"  first series /metadata of each series (cold, not in the table): {line}")
    for kind in KINDS:
        for server in servers:
            for error in results[kind][server.key].errors[:3]:
                print(f"    {server.label} {kind} error: {error}")
    for server in servers:
        for error in cold[server.key].errors[:3]:
            print(f"    {server.label} cold metadata error: {error}")


def print_million(m: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nQIDO with {m['instances']:,} instances in our index ({m['studies']:,} studies, {m['series']:,} series): "
          f"through the edge, c=1, {args.samples} samples each after {args.warmup} warm-up")
    print(f"  {'query':<34}{'where':<8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'KB':>8}{'errors':>8}")
    for label in m["edge"]:
        for where in ("edge", "sql"):
            s: Samples = m[where][label]
            size = f"{sum(s.size) / len(s.size) / 1024:.0f}" if s.size else ""
            print(f"  {label if where == 'edge' else '':<34}{where:<8}{percentile(s.ms, 50):>9.2f}"
                  f"{percentile(s.ms, 90):>9.2f}{percentile(s.ms, 99):>9.2f}{max(s.ms, default=math.nan):>9.2f}"
                  f"{size:>8}{len(s.errors) if where == 'edge' else '':>8}")
            for error in s.errors[:3]:
                print(f"    error: {error}")
    print("  (sql: the worker's statement alone, asyncpg prepared statement on one connection, rows fetched, "
          "no JSON built)")
    for label, plans in m["explain"].items():
        print(f"\n  EXPLAIN (ANALYZE, BUFFERS) — {label}:\n    {plans['sql'][0]}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            print(f"    -- plan_cache_mode = {mode}")
            for line in plans[mode]:
                print("    " + line)


def targets(ingest_results: dict[str, IngestResult], lat: dict[str, dict[str, Samples]] | None,
            m: dict[str, Any] | None, have_orthanc: bool) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, at_least: bool, unit: str = "×") -> None:
        ok = (value >= target) if at_least else (value <= target)
        checks.append({"check": name, "value": value, "target": target, "unit": unit,
                       "status": "n/a" if math.isnan(value) else ("ok" if ok else "MISSED")})

    if have_orthanc and lat is not None:
        add("STOW ingest instances/s, ours / Orthanc", ratio(ingest_results["ours"].rate,
                                                            ingest_results["orthanc"].rate),
            TARGET_INGEST_RATIO, True)
        for kind, target in (("qido", TARGET_QIDO_RATIO), ("metadata", TARGET_METADATA_RATIO),
                             ("frames", TARGET_FRAMES_RATIO)):
            add(f"{KIND_LABELS[kind]} p50, ours / Orthanc", ratio(lat[kind]["ours"].p(50), lat[kind]["orthanc"].p(50)),
                target, False)
    if m is not None:
        for label in m["edge"]:
            s: Samples = m["edge"][label]
            add(f"QIDO {label} p99 at {m['instances'] / 1e6:.1f}M instances", s.p(99), TARGET_QIDO_P99_1M_MS,
                False, "ms")
    return checks


def print_targets(checks: list[dict[str, Any]]) -> None:
    print("\nTargets (issue 5)")
    for c in checks:
        sign = "≥" if c["check"].startswith("STOW") else "≤"
        value = f"{c['value']:.3f}{c['unit']}" if c["unit"] == "×" else f"{c['value']:.2f} {c['unit']}"
        target = f"{sign} {c['target']:g}{c['unit'] if c['unit'] == '×' else ' ' + c['unit']}"
        print(f"  {c['status']:<7}{c['check']:<58}{value:>12}   (target {target})")


# ---------------------------------------------------------------------------------------------- run


async def create_technician(edge_url: str, admin_token: str) -> str:
    """An imaging technician made through the API as the admin, signed in; returns the access token."""
    from tests.support import make_user

    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as api:
        person = await make_user(api, {"Authorization": f"Bearer {admin_token}"}, "imaging_technician")
    return person.token


async def run(args: argparse.Namespace, ours: Server, orthanc: Orthanc | None, orthanc_server: Server | None,
              data: Data, dsn: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    servers = [ours] + ([orthanc_server] if orthanc_server is not None else [])
    by_key = {s.key: s for s in servers}
    device = _disk_device()

    for server in servers:  # one request of another study first: connections, caches, code paths
        _, error = await stow(server, data.warm, 0, args.timeout)
        if error is not None:
            raise RuntimeError(f"{server.label}: the warm-up STOW failed: {error}")
    ingest_results: dict[str, IngestResult] = {}
    for server in servers:
        print(f"ingest into {server.label} ...", flush=True)
        ingest_results[server.key] = await ingest(server, data.batches, args.concurrency, args.timeout, device)
    print_ingest(list(ingest_results.values()), by_key, data, args)
    results["ingest"] = {k: r.summary() for k, r in ingest_results.items()}

    print("\nlatency ...", flush=True)
    lat, cold = await latency(servers, data, args, rng)
    print_latency(lat, cold, servers, args)
    results["latency"] = {kind: {k: s.summary() for k, s in per.items()} for kind, per in lat.items()}
    results["coldMetadata"] = {k: s.summary() for k, s in cold.items()}

    if orthanc_server is not None:
        print("\nRatios ours / Orthanc (p50; p99 in brackets)")
        ours_rate, theirs = ingest_results["ours"].rate, ingest_results["orthanc"].rate
        print(f"  {'STOW ingest instances/s':<36}{ratio(ours_rate, theirs):>8.3f}   ({ours_rate:.0f} vs {theirs:.0f})")
        for kind in KINDS:
            a, b = lat[kind]["ours"], lat[kind]["orthanc"]
            print(f"  {KIND_LABELS[kind]:<36}{ratio(a.p(50), b.p(50)):>8.3f}   "
                  f"({ratio(a.p(99), b.p(99)):.3f}; {a.p(50):.2f} vs {b.p(50):.2f} ms)")
    if args.profile:
        results["profile"] = await profile(ours, data, args, rng)
    m = None
    if not args.skip_million:
        if orthanc is not None:
            orthanc_server.client.close()  # type: ignore[union-attr]
            orthanc.stop()
        m = await million(ours, dsn, args, rng)
        print_million(m, args)
        results["million"] = {**{k: v for k, v in m.items() if k not in ("edge", "sql")},
                              "edge": {k: s.summary() for k, s in m["edge"].items()},
                              "sql": {k: s.summary() for k, s in m["sql"].items()}}
    checks = targets(ingest_results, lat, m, orthanc_server is not None)
    print_targets(checks)
    return checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=4, help="studies (one series each) sent to both servers (default 4)")
    p.add_argument("--per-series", type=int, default=100, help="instances per series (default 100)")
    p.add_argument("--rows", type=int, default=512, help="image rows (default 512)")
    p.add_argument("--columns", type=int, default=512, help="image columns (default 512)")
    p.add_argument("--batch", type=int, default=10, help="instances per STOW request (default 10)")
    p.add_argument("--concurrency", type=int, default=4, help="STOW requests in flight (default 4)")
    p.add_argument("--spread", action="store_true",
                   help="send the batches round-robin over the series (default: in series order)")
    p.add_argument("--samples", type=int, default=300, help="measured requests per kind and server (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up rounds per kind before measuring (default 30)")
    p.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip (to both servers)")
    p.add_argument("--instances", type=int, default=1_000_000,
                   help="instances in our index for the QIDO-at-scale phase (default 1,000,000)")
    p.add_argument("--skip-million", action="store_true", help="leave out the QIDO-at-scale phase")
    p.add_argument("--no-orthanc", action="store_true", help="measure our server alone")
    p.add_argument("--orthanc", default=ORTHANC_BIN, help=f"the Orthanc binary (default {ORTHANC_BIN})")
    p.add_argument("--orthanc-plugin", default=ORTHANC_PLUGIN, help=f"its DICOMweb plugin (default {ORTHANC_PLUGIN})")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="after the latency phase, py-spy the edge and the imaging worker during one more STOW load "
                        "(fresh instances) and each kind of request; raw stacks to DIR")
    p.add_argument("--profile-seconds", type=float, default=10, help="seconds per request kind when profiling")
    p.add_argument("--profile-top", type=int, default=25, help="frames printed per profile (default 25)")
    p.add_argument("--timeout", type=float, default=180, help="seconds per STOW request before it counts as failed")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, nargs="?", const=ROOT / "bench" / "results" / "dicomweb.json",
                   help="also write the results to this file (default bench/results/dicomweb.json)")
    args = p.parse_args(argv)
    if min(args.studies, args.per_series, args.batch, args.concurrency, args.samples) < 1 or args.warmup < 0:
        p.error("--studies, --per-series, --batch, --concurrency and --samples must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine_facts()
    command = shlex.join(_masked(sys.orig_argv))
    print("DICOMweb benchmark (issue 5): ours next to Orthanc")
    print(f"  command : {command}")
    print(f"  machine : nproc {facts['nproc']} ({facts['cpus']} CPUs), {facts['cpuModel']}, Linux {facts['kernel']}, "
          f"load average at start {' '.join(f'{x:.2f}' for x in facts['loadAverage'])}")
    have_orthanc = not args.no_orthanc and Path(args.orthanc).exists() and Path(args.orthanc_plugin).exists()
    if not args.no_orthanc and not have_orthanc:
        print(f"  Orthanc : not installed ({args.orthanc}, {args.orthanc_plugin}; .ci/bench-tools.sh installs it): "
              "our server is measured alone, no ratios")

    from tests.support import PrivateServices, Stack

    services = stack = orthanc = None
    work = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    succeeded = False
    results: dict[str, Any] = {}
    clients: list[Client] = []
    try:
        tag = secrets.token_hex(3).upper()
        print(f"  data    : {args.studies} studies × 1 series × {args.per_series} instances of {args.rows}×"
              f"{args.columns} 16-bit CT; making them ...", flush=True)
        data = make_data(args, tag)
        print(f"            {len(data.frame_sha) - args.batch} instances (+{args.batch} for the warm-up) of "
              f"{data.instance_bytes:,} bytes in {data.seconds:.1f} s; {len(data.batches)} STOW bodies of "
              f"{args.batch}", flush=True)
        overrides = {**STACK_OVERRIDES, **DICOMWEB_OVERRIDES, "BLOB_DIR": str(work / "blobs")}
        print("  ours    : private stack (" + ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "BLOB_DIR")
              + "; BLOB_DIR in a temporary directory); booting ...", flush=True)
        services = PrivateServices.create(prefix="imaging_bench")
        (work / "logs").mkdir()
        env = services.env(ROOT, work / "logs", **overrides)
        stack = Stack(env, ROOT)
        stack.boot()
        admin = asyncio.run(sign_in(stack.edge_url, env["ADMIN_EMAIL"], env["ADMIN_PASSWORD"]))
        token = asyncio.run(create_technician(stack.edge_url, admin))
        procs = dict(stack.procs)
        db_name = services.db_name
        others = [p.pid for name, p in procs.items() if name in ("users", "patients", "system", "relay")]
        groups: dict[str, Callable[[], list[int]]] = {
            "edge": lambda: [procs["edge"].pid], "imaging": lambda: [procs["imaging"].pid],
            "other-workers": lambda: others, "postgres": lambda: _pids_named("postgres", db_name),
            "pg-background": lambda: _pids_named("postgres", "writer") + _pids_named("postgres", "checkpointer"),
            "rabbitmq": lambda: _pids_named("beam.smp"), "redis": lambda: _pids_named("redis-server"),
        }
        ours_client = Client("127.0.0.1", int(env["EDGE_PORT"]), {"Authorization": f"Bearer {token}"})
        clients.append(ours_client)
        ours = Server("ours", "ours", ours_client, "/dicom-web", groups)
        print(f"            edge {stack.edge_url}, database {db_name}, signed in as an imaging technician made "
              "through the API", flush=True)

        orthanc_server = None
        if have_orthanc:
            orthanc = Orthanc(args.orthanc, args.orthanc_plugin, work / "orthanc")
            try:
                version = orthanc.start()
            except RuntimeError as exc:
                print(f"  Orthanc : failed to start, measuring ours alone:\n{exc}", flush=True)
                orthanc.stop()
                orthanc = None
            else:
                orthanc_client = Client("127.0.0.1", orthanc.port)
                clients.append(orthanc_client)
                pid = orthanc.proc.pid  # type: ignore[union-attr]
                orthanc_server = Server("orthanc", "Orthanc", orthanc_client, "/dicom-web",
                                        {"orthanc": lambda: [pid]}, version)
                print(f"  Orthanc : {version}, http://127.0.0.1:{orthanc.port}; storage and SQLite index in the "
                      "temporary directory; SyncStorageArea true (each file fsync'd before it is indexed), SQLite "
                      "WAL with synchronous=NORMAL (Orthanc's own), DICOM server off", flush=True)

        async def go() -> list[dict[str, Any]]:
            try:
                return await run(args, ours, orthanc, orthanc_server, data, env["DATABASE_URL"], results)
            finally:
                for client in clients:
                    client.close()

        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                checks = runner.run(go())
        except ImportError:
            checks = asyncio.run(go())
        facts["loadAverageEnd"] = os.getloadavg()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            settings = {k: v for k, v in overrides.items() if k != "BLOB_DIR"}
            args.json.write_text(json.dumps({
                "command": command, "machine": facts, "settings": settings,
                "orthanc": orthanc_server.version if orthanc_server else None,
                "orthancConfig": {k: v for k, v in orthanc.config.items() if "Directory" not in k} if orthanc else None,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                **results, "targets": checks}, indent=2, default=str))
            print(f"\nresults written to {args.json}")
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in facts['loadAverageEnd'])} "
              f"(on {facts['nproc']} CPUs; anything else running on the machine is in these numbers)")
        succeeded = True
        return 0
    finally:
        if orthanc is not None:
            orthanc.stop()
        if stack is not None:
            stack.stop_all()
        if services is not None:
            services.destroy()
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            kept = work / "kept-logs"
            with contextlib.suppress(OSError):
                kept.mkdir(exist_ok=True)
                for log in [*(work / "logs").glob("*.log"), work / "orthanc" / "orthanc.log"]:
                    if log.exists():
                        shutil.copy(log, kept / log.name)
            for sub in ("blobs", "orthanc", "logs"):
                shutil.rmtree(work / sub, ignore_errors=True)
            print(f"the logs are kept in {kept}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
