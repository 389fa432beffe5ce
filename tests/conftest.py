"""The test stack: a private Postgres database, RabbitMQ vhost and Redis db for this run, the
migrations applied, and the real processes (edge, relay, four workers) started as subprocesses.
Everything is removed at the end. Tests speak HTTP to the edge and SSE/WebSocket to the relay."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from tests.support import Stack

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
REDIS_HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def _redis_db() -> int:
    """A Redis logical database no other run is using (marked by a key with a TTL)."""
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=6379, db=db)
        if client.set("test-run:lock", "1", nx=True, ex=3600):
            client.flushdb()
            client.set("test-run:lock", "1", ex=3600)
            return db
    raise RuntimeError("no free Redis database for the test run")


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    suffix = secrets.token_hex(4)
    db_name = f"imaging_test_{suffix}"
    vhost = f"imaging_test_{suffix}"

    async def create_db() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            await conn.close()

    asyncio.run(create_db())
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    redis_db = _redis_db()
    logs = tmp_path_factory.mktemp("logs")
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}",
        "AMQP_URL": f"{AMQP_BASE}/{vhost}",
        "REDIS_URL": f"redis://{REDIS_HOST}:6379/{redis_db}",
        "EDGE_PORT": str(free_port()),
        "RELAY_PORT": str(free_port()),
        "RETRY_BACKOFF": "50ms,100ms,200ms",
        "DELIVERY_LIMIT": "3",
        "OUTBOX_LEASE": "1s",
        "OUTBOX_SWEEP_INTERVAL": "500ms",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "8192",
        "RELAY_HEARTBEAT": "1s",
        "RELAY_QUEUE_MAX": "50",
        "SHUTDOWN_GRACE": "10s",
        "COMMAND_TIMEOUT": "10s",
        "API_RATE_LIMIT_PER_MINUTE": "100000",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "ADMIN_EMAIL": "admin@test.local",
        "ADMIN_PASSWORD": "Seed-Secret-For-Tests-1",
        "TEST_LOG_DIR": str(logs),
        "PYTHONPATH": str(ROOT),
    }
    try:
        yield env
    finally:
        async def drop_db() -> None:
            conn = await asyncpg.connect(PG_ADMIN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop_db())
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=120)
        client = redis.Redis(host=REDIS_HOST, port=6379, db=redis_db)
        client.flushdb()
        if os.environ.get("KEEP_TEST_LOGS"):
            shutil.copytree(logs, ROOT / "var" / "test-logs" / suffix, dirs_exist_ok=True)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"imagingctl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    _cli(stack_env, "migrate")
    _cli(stack_env, "seed-admin")
    s = Stack(stack_env, ROOT)
    for name, args in (("users", ["worker", "users"]), ("patients", ["worker", "patients"]),
                       ("imaging", ["worker", "imaging"]), ("system", ["worker", "system"]),
                       ("edge", ["edge"]), ("relay", ["relay"])):
        s.start(name, args)
    try:
        s.wait_ready(timeout=60)
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="session")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.edge_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def admin(stack: Stack, api: httpx.AsyncClient) -> dict[str, str]:
    """Headers of a signed-in system administrator (the seeded one)."""
    started = time.monotonic()
    while True:
        r = await api.post("/auth/login", json={"email": stack.env["ADMIN_EMAIL"],
                                                "password": stack.env["ADMIN_PASSWORD"]})
        if r.status_code == 200 or time.monotonic() - started > 20:
            break
        await asyncio.sleep(0.2)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}
