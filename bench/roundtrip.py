"""Round-trip benchmark (issue 2): what the broker path costs, against a route of the same edge
that answers without it.

    python bench/roundtrip.py [--duration 10] [--json [PATH]]
    python bench/roundtrip.py --edge-url http://127.0.0.1:5000 --relay-url http://127.0.0.1:5006 --token JWT

Without `--edge-url` it boots a private stack (own Postgres database, RabbitMQ vhost, Redis db;
edge, relay and the four workers as subprocesses, tests/support.py), signs in as the seeded admin,
creates a user to read, measures, and removes everything. Routes, all authenticated as the admin:

  baseline  GET  /auth/token     answered by the edge alone (JWT check, no broker)
  read      GET  /users/{id}     edge → RabbitMQ → users worker (Postgres) → reply
  write     POST /departments    the same, plus a committed insert and an outbox event

Phases (each `--duration` seconds, the baseline next to the route it is compared with):

1. Throughput, closed loop: wrk at 1 and 32 connections, `--latency`; req/s and its ratio to the
   baseline. wrk's own latencies are closed-loop (each connection waits for its answer), shown for
   reference.
2. Latency, open loop at concurrency 1 and 32: our own paced generator (asyncio + uvloop protocols,
   HTTP/1.1 keep-alive). Each connection has a fixed schedule (wrk2 style: request k of connection
   i is due at t0 + (i + k·N)/rate). Latency is counted from the *scheduled* time whenever the
   connection was still busy with the previous request at that time (no coordinated omission);
   when it was idle, from the actual send, so the event loop's timer granularity (~1 ms) is not
   charged to the server. How late the generator itself sent ("gen lag") is reported separately.
   The rate is half the route's closed-loop throughput at the same concurrency (at concurrency 1
   also at most `--rate-c1`, 200/s); the baseline runs at the same rate right before the route, so
   "added p50" compares equal loads.
3. Commit → SSE delivery: one SSE stream as the admin (`topics=users.department.created`),
   departments created at `--sse-rate`/s; for each event, arrival time − `occurredAt`.

Every non-2xx answer and socket error is counted and printed. CPU use of the generator, the stack's
processes and the machine is shown for each phase (this machine is small and shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STACK_OVERRIDES = {
    "LOG_LEVEL": "WARNING",  # logging must not dominate what is measured
    "API_RATE_LIMIT_PER_MINUTE": "1000000000",  # the default 600/min/user would throttle the benchmark
    "ARGON2_TIME_COST": "1",  # only sign-in and user creation hash, and neither is measured
    "ARGON2_MEMORY_KIB": "8192",
}
TARGET_ADDED_P50_MS = 2.0
TARGET_GET_RPS = 1200.0
TARGET_SSE_P50_MS = 10.0


def b36(n: int) -> str:
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = B36[d] + digits
        if n == 0:
            return digits


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Codes:
    """Department codes unique across the run (and, with a random run tag, across runs):
    3-character run tag + 1-character phase + counter, all base 36, at most 10 characters."""

    def __init__(self) -> None:
        self.tag = "".join(secrets.choice(B36) for _ in range(3))
        self.phases = 0

    def prefix(self) -> str:
        if self.phases >= 36:
            raise RuntimeError("out of department-code phases")
        self.phases += 1
        return self.tag + B36[self.phases - 1]


# ----------------------------------------------------------------------------------------- CPU


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _pids_named(comm: str, cmdline_has: str | None = None) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm:
                continue
            if cmdline_has is not None and cmdline_has not in (entry / "cmdline").read_text(errors="replace"):
                continue
        except OSError:
            continue
        pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU used by named groups of processes over a phase, as % of one core."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, Any]:
        per_pid = {name: {pid: _proc_cpu(pid) for pid in pids()} for name, pids in self.groups.items()}
        return {"t": time.monotonic(), "pids": per_pid, "machine": _machine_ticks(),
                "self": time.process_time(), "children": _children_cpu()}

    @staticmethod
    def usage(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        wall = after["t"] - before["t"]
        out: dict[str, float] = {}
        for name, pids in after["pids"].items():
            total = 0.0
            for pid, cpu in pids.items():
                start = before["pids"].get(name, {}).get(pid)
                if cpu is not None and start is not None:
                    total += cpu - start
            out[name] = 100 * total / wall
        busy = after["machine"][0] - before["machine"][0]
        total_ticks = after["machine"][1] - before["machine"][1]
        out["machine"] = 100 * busy / total_ticks * (os.cpu_count() or 1) if total_ticks else math.nan
        out["generator"] = 100 * ((after["self"] - before["self"]) + (after["children"] - before["children"])) / wall
        out["rest"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------- open-loop generator

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; times each response's last byte."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # bytes of the current response once its head is parsed
        self.body_at = 0
        self.chunked = False
        self.status = 0
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, float]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        while self._complete():
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, now))

    def _complete(self) -> bool:
        """Whether a whole response is buffered (then it is consumed)."""
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            self.body_at = end + 4
            match = _CONTENT_LENGTH.search(head)
            self.chunked = match is None and b"\r\ntransfer-encoding: chunked" in head
            self.need = self.body_at + (int(match.group(1)) if match else 0)
        if self.chunked:
            pos = self.body_at
            while True:
                line_end = self.buf.find(b"\r\n", pos)
                if line_end < 0:
                    return False
                size = int(bytes(self.buf[pos:line_end]).split(b";")[0], 16)
                pos = line_end + 2 + size + 2
                if len(self.buf) < pos:
                    return False
                if size == 0:
                    self.need = pos
                    break
        if len(self.buf) < self.need:
            return False
        del self.buf[: self.need]
        self.need = -1
        return True


@dataclass
class OpenLoopResult:
    rate: float
    connections: int
    duration: float
    scheduled: int = 0
    completed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    unfinished: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    late_sends: int = 0  # requests queued behind a busy connection (latency counted from schedule)
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    def summary(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "connections": self.connections, "duration": self.duration,
            "scheduled": self.scheduled, "completed": self.completed,
            "achievedRps": self.completed / self.elapsed if self.elapsed else 0.0,
            "p50Ms": percentile(self.latencies_ms, 50), "p90Ms": percentile(self.latencies_ms, 90),
            "p99Ms": percentile(self.latencies_ms, 99), "maxMs": max(self.latencies_ms, default=math.nan),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "non2xx": self.non_2xx,
            "errors": self.errors, "unfinished": self.unfinished, "queuedBehindBusyConnection": self.late_sends,
            "genLagP50Ms": percentile(self.send_lag_ms, 50), "genLagP99Ms": percentile(self.send_lag_ms, 99),
            "cpuPercentOfOneCore": self.cpu,
        }


RequestFactory = Callable[[int], tuple[bytes, Any]]  # request number → (bytes, tag for on_response)


async def open_loop(host: str, port: int, make_request: RequestFactory, *, rate: float, connections: int,
                    duration: float, grace: float = 10.0,
                    on_response: Callable[[Any, int, float], None] | None = None) -> OpenLoopResult:
    """Paced load: `rate` requests/s in total over `connections` keep-alive connections."""
    loop = asyncio.get_running_loop()
    result = OpenLoopResult(rate, connections, duration)
    conns: list[_HttpConnection] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(_HttpConnection, host, port)
        conns.append(proto)
    counter = iter(range(1 << 62))
    t0 = time.perf_counter() + 0.05
    end = t0 + duration

    async def drive(index: int) -> None:
        conn = conns[index]
        k = 0
        previous_done = t0
        while True:
            scheduled = t0 + (index + k * connections) / rate
            if scheduled >= end:
                return
            k += 1
            result.scheduled += 1
            now = time.perf_counter()
            if now < scheduled:
                await asyncio.sleep(scheduled - now)
            busy = previous_done > scheduled  # still waiting for the previous answer when this was due
            if conn.closed:
                _, conn = await loop.create_connection(_HttpConnection, host, port)
                conns[index] = conn
            data, tag = make_request(next(counter))
            sent = time.perf_counter()
            result.send_lag_ms.append((sent - max(scheduled, previous_done)) * 1000)
            try:
                status, done = await conn.request(data)
            except ConnectionError:
                result.errors += 1
                previous_done = time.perf_counter()
                continue
            origin = scheduled if busy else sent
            result.late_sends += busy
            result.latencies_ms.append((done - origin) * 1000)
            result.statuses[status] += 1
            result.completed += 1
            previous_done = done
            if on_response is not None:
                on_response(tag, status, done)

    tasks = [asyncio.create_task(drive(i)) for i in range(connections)]
    finished, pending = await asyncio.wait(tasks, timeout=duration + 0.05 + grace)
    for task in pending:
        task.cancel()
    result.unfinished = len(pending)
    for task in finished:
        if task.exception() is not None:
            result.errors += 1
    result.elapsed = time.perf_counter() - t0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return result


# ----------------------------------------------------------------------------------------- wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    connections: int
    threads: int
    duration: float
    rps: float = math.nan
    requests: int = 0
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    output: str = ""

    def summary(self) -> dict[str, Any]:
        return {"connections": self.connections, "threads": self.threads, "duration": self.duration,
                "rps": self.rps, "requests": self.requests, "latencyPercentilesMs": self.percentiles_ms,
                "non2xx": self.non_2xx, "socketErrors": self.socket_errors, "cpuPercentOfOneCore": self.cpu}


def parse_wrk(text: str, result: WrkResult) -> WrkResult:
    result.output = text
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result.rps = float(m.group(1))
    if m := re.search(r"(\d+) requests in ", text):
        result.requests = int(m.group(1))
    for pct, value, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE):
        result.percentiles_ms[pct] = float(value) * _UNIT_MS[unit]
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        result.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    return result


def wrk_script(token: str, *, code_prefix: str | None = None) -> str:
    """wrk's Lua: the bearer header; for POST /departments a fresh body with a unique code per
    request (run+phase prefix, wrk thread id, base-36 counter)."""
    lua = f'wrk.headers["Authorization"] = "Bearer " .. {json.dumps(token)}\n'
    if code_prefix is None:
        return lua
    return lua + f"""
local prefix = {json.dumps(code_prefix)}
local digits = "{B36}"
local created = 0
local counter = 0
local tchar = "0"

function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

function init(args)
  local id = (tid or 0) % 36
  tchar = digits:sub(id + 1, id + 1)
end

local function b36(n)
  local s = ""
  repeat
    local d = n % 36
    s = digits:sub(d + 1, d + 1) .. s
    n = math.floor(n / 36)
  until n == 0
  return s
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local code = prefix .. tchar .. b36(counter)
  return wrk.format(nil, nil, nil, '{{"code":"' .. code .. '","name":"Bench ' .. code .. '"}}')
end
"""


async def run_wrk(url: str, script: str, *, connections: int, threads: int, duration: float) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "5s", "-s", path, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), duration + 60)
    finally:
        os.unlink(path)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    return parse_wrk(text, WrkResult(connections, threads, duration))


# ----------------------------------------------------------------------------------------- SSE


class _SseStream(asyncio.Protocol):
    """An SSE response (chunked or not); calls `on_event(name, data, arrival_wall_time)`."""

    def __init__(self, on_event: Callable[[str, bytes, float], None]) -> None:
        self.on_event = on_event
        self.raw = bytearray()
        self.text = bytearray()
        self.head_done = False
        self.chunked = False
        self.status = 0
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"SSE connection closed: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.raw += data
        if not self.head_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).lower()
            self.status = int(head[9:12])
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            del self.raw[: end + 4]
            self.head_done = True
            if self.status != 200:
                self.opened.set_exception(RuntimeError(f"SSE answered {self.status}: {data[-500:]!r}"))
                return
        if self.chunked:
            while True:
                line_end = self.raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(bytes(self.raw[:line_end]).split(b";")[0], 16)
                if len(self.raw) < line_end + 2 + size + 2:
                    break
                self.text += self.raw[line_end + 2 : line_end + 2 + size]
                del self.raw[: line_end + 2 + size + 2]
        else:
            self.text += self.raw
            self.raw.clear()
        while (end := self.text.find(b"\n\n")) >= 0:
            block = bytes(self.text[:end])
            del self.text[: end + 2]
            name, data = "message", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data += line[5:].strip()
            if not self.opened.done():
                self.opened.set_result(self.status)  # the first block (`retry:`): the stream is attached
            if data:
                self.on_event(name, data, now)


def _iso_epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------------------- run


@dataclass
class Target:
    edge_url: str
    relay_url: str
    token: str
    user_id: str
    cpu_groups: dict[str, Callable[[], list[int]]]

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.edge_url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class Route:
    key: str
    label: str
    method: str
    path: str

    @property
    def is_post(self) -> bool:
        return self.method == "POST"


class Bench:
    def __init__(self, args: argparse.Namespace, target: Target) -> None:
        self.args = args
        self.target = target
        self.codes = Codes()
        self.cpu = CpuMeter(target.cpu_groups)
        self.host, self.port = target.host_port
        self.results: dict[str, Any] = {"closedLoop": {}, "openLoop": {}, "sse": {}}
        self.routes = [
            Route("baseline", "GET /auth/token (baseline)", "GET", "/auth/token"),
            Route("get", "GET /users/{id}", "GET", f"/users/{target.user_id}"),
            Route("post", "POST /departments", "POST", "/departments"),
        ]

    # -------------------------------------------------------------------- request builders

    def request_factory(self, route: Route, code_prefix: str | None = None) -> RequestFactory:
        """Requests for `route`; a POST gets a fresh department code each (a new prefix unless given)."""
        head = (f"{route.method} {route.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.target.token}\r\nUser-Agent: roundtrip-bench\r\n")
        if not route.is_post:
            data = (head + "\r\n").encode()
            return lambda _n: (data, None)
        prefix = code_prefix or self.codes.prefix()
        post_head = head + "Content-Type: application/json\r\n"

        def make(n: int) -> tuple[bytes, Any]:
            code = prefix + b36(n)
            body = f'{{"code":"{code}","name":"Bench {code}"}}'.encode()
            return (post_head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body, code

        return make

    # -------------------------------------------------------------------- phases

    async def closed_loop(self, route: Route, duration: float, connections: int) -> WrkResult:
        script = wrk_script(self.target.token, code_prefix=self.codes.prefix() if route.is_post else None)
        before = self.cpu.snapshot()
        result = await run_wrk(self.target.edge_url + route.path, script, connections=connections,
                               threads=self.args.wrk_threads, duration=duration)
        result.cpu = self.cpu.usage(before, self.cpu.snapshot())
        return result

    async def paced(self, route: Route, rate: float, connections: int, duration: float, *,
                    factory: RequestFactory | None = None,
                    on_response: Callable[[Any, int, float], None] | None = None) -> OpenLoopResult:
        factory = factory or self.request_factory(route)
        before = self.cpu.snapshot()
        result = await open_loop(self.host, self.port, factory, rate=rate,
                                 connections=connections, duration=duration, on_response=on_response)
        result.cpu = self.cpu.usage(before, self.cpu.snapshot())
        return result

    async def run(self) -> None:
        args = self.args
        d = float(args.duration)
        base = self.routes[0]
        levels = [1, args.connections]

        print(f"\nwarming up ({args.warmup:g} s of wrk per route) ...", flush=True)
        for route in self.routes:
            await self.closed_loop(route, args.warmup, args.connections)

        closed: dict[int, dict[str, WrkResult]] = {}
        for c in levels:
            print(f"closed loop: wrk, {c} connection(s), {d:g} s per route ...", flush=True)
            closed[c] = {route.key: await self.closed_loop(route, d, c) for route in self.routes}
            self.results["closedLoop"][f"c{c}"] = {k: r.summary() for k, r in closed[c].items()}
        self.print_closed(closed)

        opened: dict[int, list[tuple[Route, OpenLoopResult]]] = {}
        for c in levels:
            rates = {route.key: self.paced_rate(c, closed[c][route.key].rps) for route in self.routes[1:]}
            print(f"\nopen loop, {c} connection(s), {d:g} s per run; rates "
                  + ", ".join(f"{k} {v:g} req/s" for k, v in rates.items()) + "; baseline at each rate ...",
                  flush=True)
            rows: list[tuple[Route, OpenLoopResult]] = []
            for route in self.routes[1:]:
                rows.append((base, await self.paced(base, rates[route.key], c, d)))
                rows.append((route, await self.paced(route, rates[route.key], c, d)))
            opened[c] = rows
            self.results["openLoop"][f"c{c}"] = [{"route": r.key, **res.summary()} for r, res in rows]
            how = f"≤ {args.rate_c1:g} req/s and ≤ ½" if c == 1 else "½"
            if c != 1 and args.rate_c32:
                how = "fixed by --rate-c32, not"
            self.print_open(f"Open loop (paced), {c} connection(s), rate {how} the route's closed-loop req/s "
                            f"at c={c}", rows)

        print(f"\ncommit → SSE: {args.sse_rate:g} departments/s for {d:g} s ...", flush=True)
        sse = await self.sse_phase(self.routes[2], d)
        self.results["sse"] = sse
        self.print_sse(sse)
        self.print_targets(closed, opened, sse)

    def paced_rate(self, connections: int, closed_rps: float) -> float:
        """The open-loop rate: well below saturation (half the closed-loop throughput at the same
        concurrency), capped by --rate-c1 at concurrency 1; --rate-c32 fixes the other one."""
        if connections == 1:
            return min(self.args.rate_c1, self.half_rate(closed_rps))
        return self.args.rate_c32 or self.half_rate(closed_rps)

    @staticmethod
    def half_rate(rps: float) -> float:
        """Half the closed-loop throughput, rounded down to two significant digits."""
        half = max(10.0, rps / 2)
        scale = 10 ** (math.floor(math.log10(half)) - 1)
        return math.floor(half / scale) * scale

    async def sse_phase(self, post: Route, duration: float) -> dict[str, Any]:
        args = self.args
        relay = urlsplit(self.target.relay_url)
        arrivals: dict[str, tuple[float, float]] = {}  # code → (arrival wall, occurredAt epoch)
        answered: dict[str, float] = {}  # code → wall time of its 201
        other_events = Counter[str]()
        wall_minus_perf = time.time() - time.perf_counter()
        prefix = self.codes.prefix()

        def on_event(name: str, data: bytes, arrived: float) -> None:
            if name != "users.department.created":
                other_events[name] += 1
                return
            message = json.loads(data)
            code = message["payload"]["code"]
            if code.startswith(prefix) and code not in arrivals:
                arrivals[code] = (arrived, _iso_epoch(message["occurredAt"]))

        def on_response(code: Any, status: int, done: float) -> None:
            if 200 <= status < 300:
                answered[code] = done + wall_minus_perf

        loop = asyncio.get_running_loop()
        relay_host, relay_port = relay.hostname or "127.0.0.1", relay.port or 80
        transport, stream = await loop.create_connection(lambda: _SseStream(on_event), relay_host, relay_port)
        query = f"access_token={self.target.token}&topics=users.department.created"
        transport.write(f"GET /events/stream?{query} HTTP/1.1\r\nHost: {relay_host}:{relay_port}\r\n"
                        f"Accept: text/event-stream\r\nUser-Agent: roundtrip-bench\r\n\r\n".encode())
        try:
            await asyncio.wait_for(stream.opened, 10)
            posted = await self.paced(post, args.sse_rate, args.sse_connections, duration,
                                      factory=self.request_factory(post, prefix), on_response=on_response)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not set(answered) <= set(arrivals):
                await asyncio.sleep(0.05)
        finally:
            transport.close()
        delivery = [(arrived - occurred) * 1000 for arrived, occurred in arrivals.values()]
        after_201 = [(arrivals[c][0] - t) * 1000 for c, t in answered.items() if c in arrivals]
        return {
            "rate": args.sse_rate, "sentOk": len(answered), "scheduled": posted.scheduled,
            "non2xx": posted.non_2xx, "statuses": {str(k): v for k, v in sorted(posted.statuses.items())},
            "errors": posted.errors, "received": len(arrivals),
            "missing": len(set(answered) - set(arrivals)), "otherEvents": dict(other_events),
            "p50Ms": percentile(delivery, 50), "p90Ms": percentile(delivery, 90),
            "p99Ms": percentile(delivery, 99), "maxMs": max(delivery, default=math.nan),
            "after201P50Ms": percentile(after_201, 50), "after201P99Ms": percentile(after_201, 99),
            "postP50Ms": percentile(posted.latencies_ms, 50), "postP99Ms": percentile(posted.latencies_ms, 99),
            "cpuPercentOfOneCore": posted.cpu,
        }

    # -------------------------------------------------------------------- printing

    def cpu_line(self, cpu: dict[str, float]) -> str:
        order = ["generator", "edge", "users", "relay", "other-workers", "postgres", "rabbitmq", "redis", "rest"]
        parts = [f"{name} {cpu[name]:.0f}" for name in order if name in cpu]  # rest: anything else on the machine
        return "CPU % of one core: " + ", ".join(parts) + f"; machine {cpu.get('machine', math.nan):.0f} " \
               f"of {100 * (os.cpu_count() or 1)}"

    def print_closed(self, closed: dict[int, dict[str, WrkResult]]) -> None:
        print(f"\nClosed loop (wrk, {self.args.wrk_threads} thread(s), {self.args.duration:g} s per route): "
              "throughput; ratios against the baseline at the same concurrency")
        print(f"  {'route':<28}{'conns':>6}{'req/s':>9}{'× base':>8}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}"
              f"{'requests':>10}{'non-2xx':>9}{'sock err':>9}")
        for c, results in closed.items():
            base = results["baseline"]
            for route in self.routes:
                r = results[route.key]
                p50, p99 = r.percentiles_ms.get("50", math.nan), r.percentiles_ms.get("99", math.nan)
                added = "" if route.key == "baseline" else f"{p50 - base.percentiles_ms.get('50', math.nan):+.2f}"
                print(f"  {route.label:<28}{c:>6}{r.rps:>9.0f}{r.rps / base.rps:>8.3f}{p50:>9.2f}{p99:>9.2f}"
                      f"{added:>9}{r.requests:>10}{r.non_2xx:>9}{sum(r.socket_errors.values()):>9}")
        print("  (wrk's latencies are closed-loop: each connection waits for its answer, so at c>1 they hide"
              " queueing; see the open-loop tables)")
        for c, results in closed.items():
            for route in self.routes:
                print(f"    c={c:<3}{route.key:<9}{self.cpu_line(results[route.key].cpu)}")

    def print_open(self, title: str, rows: list[tuple[Route, OpenLoopResult]]) -> None:
        print(f"\n{title}: latency from the scheduled send")
        print(f"  {'route':<28}{'rate':>7}{'done/sched':>13}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
              f"{'+p50 ms':>9}{'p99 ×':>7}{'non-2xx':>9}{'errors':>8}{'gen lag p99':>13}")
        base: OpenLoopResult | None = None
        for route, r in rows:
            p50, p99 = percentile(r.latencies_ms, 50), percentile(r.latencies_ms, 99)
            if route.key == "baseline":
                base = r
                added, ratio = "", ""
            else:
                assert base is not None
                added = f"{p50 - percentile(base.latencies_ms, 50):+.2f}"
                ratio = f"{p99 / percentile(base.latencies_ms, 99):.2f}"
            print(f"  {route.label:<28}{r.rate:>7g}{f'{r.completed}/{r.scheduled}':>13}{p50:>9.2f}"
                  f"{percentile(r.latencies_ms, 90):>9.2f}{p99:>9.2f}{added:>9}{ratio:>7}{r.non_2xx:>9}"
                  f"{r.errors + r.unfinished:>8}{percentile(r.send_lag_ms, 99):>13.2f}")
        print("  (+p50 = p50(route) − p50(baseline at the same rate); p99 × = p99(route) / p99(baseline);"
              " gen lag = how late the generator sent)")
        for route, r in rows:
            statuses = ", ".join(f"{k}×{v}" for k, v in sorted(r.statuses.items()))
            print(f"    {route.key:<9}{self.cpu_line(r.cpu)}; statuses {statuses}"
                  + (f"; {r.late_sends} queued behind a busy connection" if r.late_sends else ""))

    def print_sse(self, sse: dict[str, Any]) -> None:
        print(f"\nCommit → SSE delivery ({sse['rate']:g} POST /departments per s, one SSE stream as the admin)")
        print(f"  sent (2xx) {sse['sentOk']} of {sse['scheduled']} scheduled, non-2xx {sse['non2xx']}, "
              f"errors {sse['errors']}; events received {sse['received']}, missing {sse['missing']}")
        print(f"  arrival − occurredAt: p50 {sse['p50Ms']:.2f} ms, p90 {sse['p90Ms']:.2f} ms, "
              f"p99 {sse['p99Ms']:.2f} ms, max {sse['maxMs']:.2f} ms")
        print(f"  arrival − the POST's 201 at the client: p50 {sse['after201P50Ms']:.2f} ms, "
              f"p99 {sse['after201P99Ms']:.2f} ms (POST latency p50 {sse['postP50Ms']:.2f} ms, "
              f"p99 {sse['postP99Ms']:.2f} ms)")
        print(f"    {self.cpu_line(sse['cpuPercentOfOneCore'])}")

    def print_targets(self, closed: dict[int, dict[str, WrkResult]],
                      opened: dict[int, list[tuple[Route, OpenLoopResult]]], sse: dict[str, Any]) -> None:
        def added(rows: list[tuple[Route, OpenLoopResult]], key: str) -> float:
            base = None
            for route, r in rows:
                if route.key == "baseline":
                    base = r
                elif route.key == key and base is not None:
                    return percentile(r.latencies_ms, 50) - percentile(base.latencies_ms, 50)
            return math.nan

        checks: list[tuple[str, str, bool]] = []
        for key, label in (("get", "GET /users/{id}"), ("post", "POST /departments")):
            for c, rows in opened.items():
                value = added(rows, key)
                checks.append((f"{label}: broker path adds ≤ {TARGET_ADDED_P50_MS:g} ms p50 (open loop, c={c})",
                               f"{value:+.2f} ms", value <= TARGET_ADDED_P50_MS))
        n = self.args.connections
        rps = closed[n]["get"].rps
        checks.append((f"GET /users/{{id}} ≥ {TARGET_GET_RPS:,.0f} req/s at c={n}", f"{rps:,.0f} req/s",
                       rps >= TARGET_GET_RPS))
        checks.append((f"commit → SSE p50 ≤ {TARGET_SSE_P50_MS:g} ms", f"{sse['p50Ms']:.2f} ms",
                       sse["p50Ms"] <= TARGET_SSE_P50_MS))
        errors = sum(r.non_2xx + sum(r.socket_errors.values()) for rs in closed.values() for r in rs.values())
        errors += sum(r.non_2xx + r.errors + r.unfinished for rows in opened.values() for _, r in rows)
        errors += sse["non2xx"] + sse["errors"] + sse["missing"]
        checks.append(("no non-2xx answers, socket errors or missing events", str(errors), errors == 0))
        print("\nTargets (issue 2)")
        for name, value, ok in checks:
            print(f"  {'ok' if ok else 'MISSED':<7}{name:<66}{value:>14}")
        rest = [r.cpu.get("rest", 0.0) for rs in closed.values() for r in rs.values()]
        rest += [r.cpu.get("rest", 0.0) for rows in opened.values() for _, r in rows]
        rest.append(sse["cpuPercentOfOneCore"].get("rest", 0.0))
        if "edge" in self.target.cpu_groups and max(rest) > 25:  # with --edge-url, `rest` holds the stack itself
            print(f"  note: other processes used {min(rest):.0f}–{max(rest):.0f} % of a core during the phases "
                  f"(median {percentile(rest, 50):.0f} %): the machine was shared; the numbers are pessimistic")
        self.results["targets"] = [{"check": name, "value": value, "ok": ok} for name, value, ok in checks]


# ---------------------------------------------------------------------------------------- setup


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = "missing"
    if shutil.which("wrk"):
        import subprocess

        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        wrk_version = out.splitlines()[0].strip() if out else "unknown"
    return {"nproc": len(os.sched_getaffinity(0)), "cpus": os.cpu_count(), "cpuModel": model,
            "kernel": platform.release(), "loadAverage": os.getloadavg(), "python": platform.python_version(),
            "wrk": wrk_version}


async def sign_in(edge_url: str, email: str, password: str) -> str:
    from tests.support import login

    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as api:
        started = time.monotonic()
        while True:
            r = await login(api, email, password)
            if r.status_code == 200 or time.monotonic() - started > 30:
                break
            await asyncio.sleep(0.3)
    if r.status_code != 200:
        raise RuntimeError(f"sign-in as {email} failed: {r.status_code} {r.text}")
    return r.json()["accessToken"]


async def prepare(edge_url: str, token: str, user_id: str | None) -> str:
    """The user to read: `user_id`, or a new staff account created for the run."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=edge_url, timeout=30, headers=headers) as api:
        r = await api.get("/auth/token")
        if r.status_code != 200:
            raise RuntimeError(f"GET /auth/token with the token answered {r.status_code}: {r.text}")
        if r.json().get("role") != "system_admin":
            raise RuntimeError("the token must be a system administrator's (POST /departments, POST /users)")
        if user_id:
            return user_id
        name = f"bench{secrets.token_hex(4)}"
        r = await api.post("/users", json={
            "username": name, "email": f"{name}@bench.local", "password": "Bench-Initial-Pass-123!",
            "firstName": "Bench", "lastName": "Reader", "role": "physician"})
        if r.status_code != 201:
            raise RuntimeError(f"POST /users answered {r.status_code}: {r.text}")
        return r.json()["id"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured phase (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk per route before measuring (default 2)")
    p.add_argument("--edge-url", help="target an already running edge instead of booting a private stack")
    p.add_argument("--relay-url", help="its relay (default: the edge's host, port 5006)")
    p.add_argument("--token", help="a system administrator's access token for --edge-url "
                                   "(else signs in with ADMIN_EMAIL / ADMIN_PASSWORD from the environment)")
    p.add_argument("--user-id", help="the user GET /users/{id} reads (default: one created for the run)")
    p.add_argument("--connections", type=int, default=32, help="concurrency of the concurrent phases (default 32)")
    p.add_argument("--wrk-threads", type=int, default=1,
                   help="wrk threads (default 1: it is far from saturated and leaves the cores to the stack)")
    p.add_argument("--rate-c1", type=float, default=200,
                   help="cap of the paced rate at concurrency 1, req/s (default 200; also ≤ ½ the c=1 throughput)")
    p.add_argument("--rate-c32", type=float, default=0,
                   help="paced rate at the high concurrency, req/s (default: half the closed-loop req/s of the route)")
    p.add_argument("--sse-rate", type=float, default=50, help="departments created per second in the SSE phase")
    p.add_argument("--sse-connections", type=int, default=4, help="connections that create them (default 4)")
    p.add_argument("--json", type=Path, nargs="?", const=ROOT / "bench" / "results" / "roundtrip.json",
                   help="also write the results to this file (default bench/results/roundtrip.json)")
    return p.parse_args(argv)


def _masked(argv: list[str]) -> list[str]:
    """The command line with the value of --token hidden."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--token":
            out.append("***")
        elif arg.startswith("--token="):
            out.append("--token=***")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: run .ci/bench-tools.sh (apt-get install wrk)", file=sys.stderr)
        return 2
    facts = machine_facts()
    command = shlex.join(_masked(sys.orig_argv))
    print("Round-trip benchmark (issue 2)")
    print(f"  command : {command}")
    print(f"  machine : nproc {facts['nproc']} ({facts['cpus']} CPUs), {facts['cpuModel']}, Linux {facts['kernel']}, "
          f"load average at start {' '.join(f'{x:.2f}' for x in facts['loadAverage'])}")
    print(f"  tools   : Python {facts['python']} (uvloop) for the paced generator, {facts['wrk']}")

    services = stack = None
    logs_dir: str | None = None
    succeeded = False
    try:
        if args.edge_url:
            edge_url = args.edge_url.rstrip("/")
            host = urlsplit(edge_url).hostname or "127.0.0.1"
            relay_url = (args.relay_url or f"http://{host}:5006").rstrip("/")
            token = args.token or asyncio.run(sign_in(edge_url, os.environ.get("ADMIN_EMAIL", ""),
                                                      os.environ.get("ADMIN_PASSWORD", "")))
            groups: dict[str, Callable[[], list[int]]] = {}
            print(f"  target  : running stack at {edge_url} (relay {relay_url})")
        else:
            from tests.support import PrivateServices, Stack

            print("  target  : private stack booted by this script "
                  f"({', '.join(f'{k}={v}' for k, v in STACK_OVERRIDES.items())}); booting ...", flush=True)
            services = PrivateServices.create(prefix="imaging_bench")
            logs_dir = tempfile.mkdtemp(prefix="roundtrip-logs-")
            env = services.env(ROOT, Path(logs_dir), **STACK_OVERRIDES)
            stack = Stack(env, ROOT)
            stack.boot()
            edge_url, relay_url = stack.edge_url, stack.relay_url
            token = asyncio.run(sign_in(edge_url, env["ADMIN_EMAIL"], env["ADMIN_PASSWORD"]))
            procs = dict(stack.procs)
            others = [p.pid for name, p in procs.items() if name in ("patients", "imaging", "system")]
            db_name = services.db_name
            groups = {
                "edge": lambda: [procs["edge"].pid], "users": lambda: [procs["users"].pid],
                "relay": lambda: [procs["relay"].pid], "other-workers": lambda: others,
                "postgres": lambda: _pids_named("postgres", db_name),
            }
            print(f"  stack   : edge {edge_url}, relay {relay_url}, database {db_name}")
        groups["rabbitmq"] = lambda: _pids_named("beam.smp")
        groups["redis"] = lambda: _pids_named("redis-server")

        async def run() -> Bench:
            user_id = await prepare(edge_url, token, args.user_id)
            bench = Bench(args, Target(edge_url, relay_url, token, user_id, groups))
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
                                             "duration": args.duration, **bench.results}, indent=2, default=str))
            print(f"\nresults written to {args.json}")
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in facts['loadAverageEnd'])} "
              f"(on {facts['nproc']} CPUs; anything else running on the machine is in these numbers)")
        succeeded = True
        return 0
    finally:
        if stack is not None:
            stack.stop_all()
        if services is not None:
            services.destroy()
        if logs_dir is not None:
            if succeeded:
                shutil.rmtree(logs_dir, ignore_errors=True)
            else:
                print(f"the stack's logs are kept in {logs_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
