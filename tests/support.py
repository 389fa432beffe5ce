"""Helpers for tests: the process stack, signed-in users of each role, an event tap on the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import redis

ROLES = ("system_admin", "physician", "radiologist", "imaging_technician", "reception_staff")
PASSWORD = "Stable-Test-Passw0rd!"


PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
REDIS_HOST = "127.0.0.1"


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range, so that no outgoing connection can take
    it between this check and the server's bind."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = 10000 + secrets.randbelow(max(low - 10000, 1000))
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@dataclass
class PrivateServices:
    """A Postgres database, a RabbitMQ vhost and a Redis logical db of one's own, on the
    machine's real servers; `destroy()` removes all three. Used by the tests and the benches."""

    suffix: str
    db_name: str
    vhost: str
    redis_db: int

    @classmethod
    def create(cls, prefix: str = "imaging_test") -> PrivateServices:
        suffix = secrets.token_hex(4)
        db_name = vhost = f"{prefix}_{suffix}"

        async def create_db() -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'CREATE DATABASE "{db_name}"')
            finally:
                await conn.close()

        asyncio.run(create_db())
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return cls(suffix, db_name, vhost, cls._claim_redis_db())

    @staticmethod
    def _claim_redis_db() -> int:
        """A Redis logical database no other run is using (marked by a key with a TTL)."""
        for db in range(15, 0, -1):
            client = redis.Redis(host=REDIS_HOST, port=6379, db=db)
            if client.set("test-run:lock", "1", nx=True, ex=3600):
                client.flushdb()
                client.set("test-run:lock", "1", ex=3600)
                return db
        raise RuntimeError("no free Redis database for this run")

    def env(self, root: Path, logs: Path, **overrides: str) -> dict[str, str]:
        """The environment of every process of this private stack (free ports, quiet defaults)."""
        return {
            **os.environ,
            "ENVIRONMENT": "test",
            "DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db_name}",
            "AMQP_URL": f"{AMQP_BASE}/{self.vhost}",
            "REDIS_URL": f"redis://{REDIS_HOST}:6379/{self.redis_db}",
            "EDGE_PORT": str(free_port()),
            "RELAY_PORT": str(free_port()),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "ADMIN_EMAIL": "admin@test.local",
            "ADMIN_PASSWORD": "Seed-Secret-For-Tests-1",
            "TEST_LOG_DIR": str(logs),
            "PYTHONPATH": str(root),
            **overrides,
        }

    def destroy(self) -> None:
        async def drop_db() -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop_db())
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True, timeout=120)
        redis.Redis(host=REDIS_HOST, port=6379, db=self.redis_db).flushdb()


@dataclass
class Mail:
    to: list[str]
    text: str


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) standing in for the hospital's mail service: the
    users worker speaks SMTP to it with smtplib. Recipients containing `bounce` are refused."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Mail] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if "bounce" in address:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        from email import policy

        message = email.message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(("plain",))
        self.messages.append(Mail(list(envelope.rcpt_tos), body.get_content() if body else ""))
        return "250 Message accepted"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.messages if address in m.to]


class Stack:
    """The real processes of the system, as subprocesses with their logs in files."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env = env
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = Path(env["TEST_LOG_DIR"])

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.env['EDGE_PORT']}"

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.env['RELAY_PORT']}"

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *args], cwd=self.root,
                                env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def boot(self) -> None:
        """Migrate, seed the admin, start every process, wait until /ready says so."""
        for args in (["migrate"], ["seed-admin"]):
            done = subprocess.run([sys.executable, "-m", "workers.cli", *args], env=self.env, cwd=self.root,
                                  capture_output=True, text=True, timeout=180)
            if done.returncode != 0:
                raise RuntimeError(f"imagingctl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        for name, args in (("users", ["worker", "users"]), ("patients", ["worker", "patients"]),
                           ("imaging", ["worker", "imaging"]), ("system", ["worker", "system"]),
                           ("edge", ["edge"]), ("relay", ["relay"])):
            self.start(name, args)
        self.wait_ready(timeout=60)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_of(name)[-3000:]}")
            try:
                ready = httpx.get(f"{self.edge_url}/ready", timeout=5)
                relay = httpx.get(f"{self.relay_url}/health", timeout=5)
                if ready.status_code == 200 and relay.status_code == 200:
                    return
                last = ready.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise RuntimeError(f"stack not ready: {last}")

    def log_of(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def unique(prefix: str = "") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass
class Person:
    id: str
    role: str
    email: str
    password: str
    token: str
    refresh: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def loopback_address() -> str:
    """A random 127.x.y.z source address: every address of 127/8 reaches the edge on loopback, so
    helper sign-ins are spread over many client IPs and never trip the per-IP sign-in limit
    that a dedicated test exercises on purpose."""
    return f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"


async def login(api: httpx.AsyncClient, email: str, password: str, *, source: str | None = None) -> httpx.Response:
    """POST /auth/login from `source` (a fresh random loopback address unless given)."""
    transport = httpx.AsyncHTTPTransport(local_address=source or loopback_address())
    async with httpx.AsyncClient(base_url=api.base_url, transport=transport, timeout=30) as client:
        return await client.post("/auth/login", json={"email": email, "password": password})


async def make_user(api: httpx.AsyncClient, admin: dict[str, str], role: str, *, activate: bool = True,
                    **fields: Any) -> Person:
    """Create a staff account as the admin; with `activate`, sign in, set a new password and sign
    in again, so the returned token is a normal one (no pending password change)."""
    name = unique("u")
    body = {"username": name, "email": f"{name}@test.local", "password": "Initial-Pass-123!",
            "firstName": "Test", "lastName": name.title(), "role": role, **fields}
    r = await api.post("/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    user = r.json()
    r = await login(api, body["email"], body["password"])
    assert r.status_code == 200, r.text
    pair = r.json()
    password = body["password"]
    if activate:
        r = await api.post("/auth/me/password", json={"currentPassword": password, "newPassword": PASSWORD},
                           headers={"Authorization": f"Bearer {pair['accessToken']}"})
        assert r.status_code == 204, r.text
        password = PASSWORD
        r = await api.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
        assert r.status_code == 200, r.text
        pair = r.json()
    return Person(user["id"], role, body["email"], password, pair["accessToken"], pair["refreshToken"], user)


class EventTap:
    """A private queue bound to the `events` exchange: what was really published, and when."""

    def __init__(self, amqp_url: str, *keys: str) -> None:
        self.amqp_url = amqp_url
        self.keys = keys or ("#",)
        self.events: list[dict[str, Any]] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange("events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in self.keys:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.events.append(json.loads(message.body))
        self._arrived.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first event matching `predicate`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                types = [e["type"] for e in self.events]
                raise AssertionError(f"no matching event within {timeout}s; saw {types}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def settle(self, quiet: float = 0.5) -> None:
        """Wait until no event has arrived for `quiet` seconds."""
        while True:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), quiet)
            except TimeoutError:
                return


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async `check` until it returns a truthy value (eventual consistency, not timing)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def assert_clean(r: httpx.Response, *forbidden: str) -> None:
    """No password hash, no password-bearing member, none of the given secrets (passwords,
    other people's tokens). Field *names* in an error (`"field": "password"`) are fine."""
    text = r.text
    assert "$argon2" not in text
    if text:
        assert not _keys(r.json()) & {"password", "passwordHash", "password_hash", "currentPassword",
                                      "newPassword", "pin", "secret"}, text
    for secret in forbidden:
        assert secret not in text, f"a secret leaked into {r.request.method} {r.request.url}"
