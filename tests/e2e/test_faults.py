"""Faults on the real users worker: SIGTERM and SIGKILL in the middle of 1,000 creates lose
nothing and duplicate nothing; a redelivered command replays its reply; the CLI's outbox rows
leave on NOTIFY."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import aio_pika
import asyncpg
import msgspec
import pytest

from contracts.envelope import Actor, encode, make_envelope
from contracts.rpc import RpcClient
from contracts.users import CreateDepartment
from tests.support import EventTap, Stack, eventually, unique

pytestmark = pytest.mark.asyncio
ACTOR = Actor(system="fault-test")


async def _count(conn: asyncpg.Connection, prefix: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM users.departments WHERE name LIKE $1", f"{prefix}%")


async def test_sigterm_and_sigkill_mid_batch_lose_and_duplicate_nothing(stack: Stack) -> None:
    prefix = unique("batch-")
    total = 1000
    stack.stop("users")  # the batch waits in the queue until our own workers take it
    db = await asyncpg.connect(stack.env["DATABASE_URL"])
    async with EventTap(stack.env["AMQP_URL"], "users.department.created") as tap:
        try:
            ids = [uuid.uuid4() for _ in range(total)]
            connection = await aio_pika.connect(stack.env["AMQP_URL"])
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("commands")
            await asyncio.gather(*(
                exchange.publish(
                    aio_pika.Message(encode(make_envelope(
                        "users.create_department",
                        CreateDepartment(code=f"K{i:04d}{prefix[-4:]}".upper()[:10], name=f"{prefix}{i}"),
                        ACTOR, message_id=mid)), message_id=str(mid), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="users.create_department")
                for i, mid in enumerate(ids)
            ))
            await connection.close()

            first = stack.start("users-a", ["worker", "users"])
            await eventually(lambda: _progress(db, prefix, 150), timeout=60)
            first.send_signal(signal.SIGTERM)  # graceful: finish what is in flight, then exit 0
            assert await asyncio.to_thread(first.wait, 30) == 0
            after_term = await _count(db, prefix)
            assert after_term < total, "the batch finished before SIGTERM; nothing was tested"

            second = stack.start("users-b", ["worker", "users"])
            await eventually(lambda: _progress(db, prefix, after_term + 150), timeout=60)
            second.send_signal(signal.SIGKILL)  # no goodbye: in-flight work and unpublished events
            await asyncio.to_thread(second.wait, 30)
            after_kill = await _count(db, prefix)
            assert after_kill < total, "the batch finished before SIGKILL; nothing was tested"

            stack.procs.pop("users-a", None)
            stack.procs.pop("users-b", None)
            stack.start("users", ["worker", "users"])
            await eventually(lambda: _progress(db, prefix, total), timeout=120)

            rows = await db.fetch("SELECT id, name FROM users.departments WHERE name LIKE $1", f"{prefix}%")
            assert len(rows) == total and len({r["name"] for r in rows}) == total
            inbox = await db.fetch("SELECT reply FROM users.inbox WHERE message_id = ANY($1)", ids)
            assert len(inbox) == total
            assert all(msgspec.json.decode(r["reply"]).get("ok") for r in inbox), "a command was answered twice"
            department_ids = {str(r["id"]) for r in rows}

            def all_published(_: object) -> bool:
                seen = {e["payload"]["departmentId"] for e in tap.events}
                return department_ids <= seen

            await tap.wait_for(all_published, timeout=60)
            per_department: dict[str, set[str]] = {}
            for event in tap.events:
                per_department.setdefault(event["payload"]["departmentId"], set()).add(event["messageId"])
            assert all(len(per_department[d]) == 1 for d in department_ids), "one change, one event (by message id)"
            assert await db.fetchval("SELECT count(*) FROM users.outbox") == 0
        finally:
            if "users" not in stack.procs:
                stack.start("users", ["worker", "users"])
            await db.close()


async def _progress(db: asyncpg.Connection, prefix: str, at_least: int) -> bool:
    return await _count(db, prefix) >= at_least


async def test_redelivered_create_replays_the_same_reply(stack: Stack) -> None:
    bus = RpcClient(stack.env["AMQP_URL"], name="fault-test")
    await bus.start()
    try:
        message_id = uuid.uuid4()
        cmd = CreateDepartment(code=unique("R").upper()[:10], name="Replayed")
        first = await bus.call_raw("users.create_department", cmd, ACTOR, message_id=message_id)
        second = await bus.call_raw("users.create_department", cmd, ACTOR, message_id=message_id)
        assert first.error is None and bytes(first.ok) == bytes(second.ok)
        third = await bus.call_raw("users.create_department", cmd, ACTOR)  # a new message: a real conflict
        assert third.error is not None and third.error.code == "already_exists"
    finally:
        await bus.close()


async def test_cli_seed_admin_event_leaves_through_notify(stack: Stack) -> None:
    email = f"{unique('second-admin-')}@test.local"
    async with EventTap(stack.env["AMQP_URL"], "users.user.created") as tap:
        done = subprocess.run([sys.executable, "-m", "workers.cli", "seed-admin"], cwd=stack.root,
                              env={**stack.env, "ADMIN_EMAIL": email, "ADMIN_PASSWORD": ""},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "one-time password" in done.stdout
        event = await tap.wait_for(lambda e: e["actor"].get("system") == "seed-admin", timeout=15)
        assert event["payload"]["role"] == "system_admin"
        again = subprocess.run([sys.executable, "-m", "workers.cli", "seed-admin"], cwd=stack.root,
                               env={**stack.env, "ADMIN_EMAIL": email, "ADMIN_PASSWORD": ""},
                               capture_output=True, text=True, timeout=60)
        assert "nothing changed" in again.stdout
