"""The test stack: a private Postgres database, RabbitMQ vhost and Redis db for this run, the
migrations applied, and the real processes (edge, relay, four workers) started as subprocesses.
Everything is removed at the end. Tests speak HTTP to the edge and SSE/WebSocket to the relay."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Mailbox, PrivateServices, Stack, login

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[dict[str, str]]:
    private = PrivateServices.create()
    logs = tmp_path_factory.mktemp("logs")
    env = private.env(
        ROOT,
        logs,
        RETRY_BACKOFF="50ms,100ms,200ms",
        DELIVERY_LIMIT="3",
        OUTBOX_LEASE="1s",
        OUTBOX_SWEEP_INTERVAL="500ms",
        ARGON2_TIME_COST="1",
        ARGON2_MEMORY_KIB="8192",
        RELAY_HEARTBEAT="1s",
        RELAY_QUEUE_MAX="50",
        SHUTDOWN_GRACE="10s",
        API_RATE_LIMIT_PER_MINUTE="100000",
        MAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(mailbox.port),
        SMTP_STARTTLS="never",
        DEMO_PASSWORD="Demo-Stack-Passw0rd-7",  # seed-demo (tests/e2e/test_seed_demo.py)
        BLOB_DIR=str(tmp_path_factory.mktemp("blobs")),
        IMAGING_STABLE_AFTER="1s",
        IMAGING_STABLE_JOB_INTERVAL="500ms",
        INGEST_TIMEOUT="60s",
    )
    try:
        yield env
    finally:
        private.destroy()
        if os.environ.get("KEEP_TEST_LOGS"):
            shutil.copytree(logs, ROOT / "var" / "test-logs" / private.suffix, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    s = Stack(stack_env, ROOT)
    try:
        s.boot()
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
        r = await login(api, stack.env["ADMIN_EMAIL"], stack.env["ADMIN_PASSWORD"])
        if r.status_code == 200 or time.monotonic() - started > 20:
            break
        await asyncio.sleep(0.2)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}
