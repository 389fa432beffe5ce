"""The worker runtime against the real Postgres and RabbitMQ: one transaction per message, inbox
replay on redelivery, rollback without events, retries then dead-lettering, crash loops stopped by
the delivery limit, graceful shutdown, and the outbox sweeper."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import msgspec
import pytest

from contracts.envelope import Actor, encode, make_envelope
from contracts.rpc import RpcClient
from contracts.settings import Settings
from tests.runtime import rt_app
from tests.support import EventTap, Stack, eventually, unique
from workers.runtime.consumer import Worker

pytestmark = pytest.mark.asyncio
ACTOR = Actor(system="runtime-test")


@pytest.fixture(scope="module")
async def schema(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        for sql in rt_app.SCHEMA_SQL:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def worker(stack: Stack, schema: None) -> AsyncIterator[Worker]:
    w = rt_app.build_worker(Settings.from_env(stack.env))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture(scope="module")
async def bus(stack: Stack) -> AsyncIterator[RpcClient]:
    client = RpcClient(stack.env["AMQP_URL"], name="runtime-test", timeout=15)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def count(stack: Stack, name: str) -> int:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        return await conn.fetchval("SELECT count(*) FROM rttest.things WHERE name = $1", name)
    finally:
        await conn.close()


async def dlq_messages(stack: Stack, queue: str = "rttest.commands.dlq") -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Drain the dead-letter queue (the messages are taken off it)."""
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        found = []
        while (msg := await q.get(no_ack=True, fail=False)) is not None:
            found.append(msg)
        return found
    finally:
        await connection.close()


async def test_command_commits_its_change_and_event(stack: Stack, worker: Worker, bus: RpcClient) -> None:
    name = unique("ok-")
    async with EventTap(stack.env["AMQP_URL"], "rttest.#") as tap:
        reply = await bus.call_raw("rttest.make_thing", rt_app.MakeThing(name=name), ACTOR)
        assert reply.error is None
        thing = msgspec.json.decode(reply.ok)
        event = await tap.wait_for(lambda e: e["type"] == "rttest.thing.made" and e["payload"]["name"] == name)
        assert event["payload"]["thingId"] == thing["id"]
        assert event["causationId"] is not None and event["correlationId"]
        audit = await tap.wait_for(lambda e: e["type"] == "rttest.audit.recorded"
                                   and e["payload"]["targetId"] == thing["id"])
        assert audit["payload"]["outcome"] == "success" and audit["payload"]["action"] == "rttest.make_thing"
    assert await count(stack, name) == 1


async def test_redelivered_command_changes_nothing_twice(stack: Stack, worker: Worker, bus: RpcClient) -> None:
    name = unique("dup-")
    message_id = uuid.uuid4()
    async with EventTap(stack.env["AMQP_URL"], "rttest.thing.made") as tap:
        first = await bus.call_raw("rttest.make_thing", rt_app.MakeThing(name=name), ACTOR, message_id=message_id)
        second = await bus.call_raw("rttest.make_thing", rt_app.MakeThing(name=name), ACTOR, message_id=message_id)
        assert first.error is None and bytes(first.ok) == bytes(second.ok)
        await tap.wait_for(lambda e: e["payload"]["name"] == name)
        await tap.settle(1.0)
        assert len([e for e in tap.events if e["payload"]["name"] == name]) == 1
    assert await count(stack, name) == 1


async def test_domain_error_rolls_back_and_emits_nothing(stack: Stack, worker: Worker, bus: RpcClient) -> None:
    name = unique("no-")
    message_id = uuid.uuid4()
    async with EventTap(stack.env["AMQP_URL"], "rttest.#") as tap:
        reply = await bus.call_raw("rttest.refuse", rt_app.Refuse(name=name), ACTOR, message_id=message_id)
        assert reply.error is not None
        assert (reply.error.status, reply.error.code, reply.error.field) == (409, "refused", "name")
        again = await bus.call_raw("rttest.refuse", rt_app.Refuse(name=name), ACTOR, message_id=message_id)
        assert again.error is not None and again.error.code == "refused"
        audit = await tap.wait_for(lambda e: e["type"] == "rttest.audit.recorded"
                                   and e["payload"]["action"] == "rttest.refuse")
        assert audit["payload"]["outcome"] == "conflict" and audit["payload"]["details"]["code"] == "refused"
        await tap.settle(1.0)
        assert not [e for e in tap.of_type("rttest.thing.made") if e["payload"]["name"] == name]
        assert len([e for e in tap.of_type("rttest.audit.recorded") if e["payload"]["action"] == "rttest.refuse"
                    and e["correlationId"] == audit["correlationId"]]) == 1
    assert await count(stack, name) == 0


async def test_exception_is_retried_then_answered_500_and_dead_lettered(
    stack: Stack, worker: Worker, bus: RpcClient
) -> None:
    name = unique("boom-")
    await dlq_messages(stack)
    async with EventTap(stack.env["AMQP_URL"], "rttest.#") as tap:
        reply = await bus.call_raw("rttest.explode", rt_app.Explode(name=name), ACTOR)
        assert reply.error is not None and reply.error.status == 500 and reply.error.code == "internal_error"
        assert rt_app.attempts[name] == 1 + len(worker.settings.retry_backoff)
        audit = await tap.wait_for(lambda e: e["type"] == "rttest.audit.recorded"
                                   and e["payload"]["action"] == "rttest.explode")
        assert audit["payload"]["outcome"] == "error"
        await tap.settle(0.5)
        assert not [e for e in tap.of_type("rttest.thing.made") if e["payload"]["name"] == name]
    assert await count(stack, name) == 0
    dead = await eventually(lambda: dlq_messages(stack))
    bodies = [msgspec.json.decode(m.body) for m in dead]
    assert any(b["type"] == "rttest.explode" and msgspec.json.decode(msgspec.json.encode(b["payload"]))["name"]
               == name for b in bodies)
    assert all(m.headers.get("x-death") for m in dead)


async def test_invalid_payload_undecodable_message_and_unhandled_operation(
    stack: Stack, worker: Worker, bus: RpcClient
) -> None:
    reply = await bus.call_raw("rttest.make_thing", {"name": ""}, ACTOR)
    assert reply.error is not None and reply.error.status == 422
    assert reply.error.field == "name" and reply.error.errors and reply.error.errors[0].code == "too_short"

    await dlq_messages(stack)
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("commands")
        await exchange.publish(aio_pika.Message(b"\x00not json at all"), routing_key="rttest.make_thing")
    finally:
        await connection.close()
    dead = await eventually(lambda: dlq_messages(stack), timeout=10)
    assert any(m.body == b"\x00not json at all" for m in dead)

    # An operation no worker binds is returned by the broker at once: 503, not a timeout.
    from contracts.errors import Unavailable

    with pytest.raises(Unavailable) as refused:
        await bus.call_raw("rttest.orphan", rt_app.Orphan(name="x"), ACTOR)
    assert refused.value.extra and refused.value.extra.get("commandId")
    # The worker is still serving.
    ok = await bus.call_raw("rttest.make_thing", rt_app.MakeThing(name=unique("after-")), ACTOR)
    assert ok.error is None


async def test_graceful_stop_finishes_in_flight_work(stack: Stack, schema: None, bus: RpcClient) -> None:
    w = rt_app.build_worker(Settings.from_env(stack.env))
    await w.start()
    rt_app.started, rt_app.release = asyncio.Event(), asyncio.Event()
    name = unique("slow-")
    try:
        async with EventTap(stack.env["AMQP_URL"], "rttest.thing.made") as tap:
            call = asyncio.create_task(bus.call_raw("rttest.block", rt_app.Block(name=name), ACTOR))
            await asyncio.wait_for(rt_app.started.wait(), 10)
            stopping = asyncio.create_task(w.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done(), "stop() must wait for the message in flight"
            rt_app.release.set()
            await asyncio.wait_for(stopping, 20)
            reply = await asyncio.wait_for(call, 10)
            assert reply.error is None
            await tap.wait_for(lambda e: e["payload"]["name"] == name)
    finally:
        rt_app.started = rt_app.release = None
        await w.stop()
    assert await count(stack, name) == 1


async def test_outbox_rows_left_by_a_crash_are_swept(stack: Stack, worker: Worker) -> None:
    """Rows committed but never published (their process died) leave when their lease expires;
    rows written by another process with NOTIFY leave at once."""
    leased, notified = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    async with EventTap(stack.env["AMQP_URL"], "rttest.thing.made") as tap:
        try:
            for message_id, available in ((leased, "now() + interval '1 second'"), (notified, "now()")):
                event = rt_app.ThingMade(thing_id=uuid.uuid4(), name=str(message_id))
                envelope = make_envelope(rt_app.ThingMade.TYPE, event, ACTOR, message_id=message_id)
                await conn.execute(
                    f"INSERT INTO rttest.outbox (message_id, routing_key, body, available_at) "
                    f"VALUES ($1, $2, $3, {available})", message_id, rt_app.ThingMade.TYPE, encode(envelope))
            await conn.execute("NOTIFY outbox_rttest")
            for message_id in (notified, leased):
                await tap.wait_for(lambda e, m=message_id: e["messageId"] == str(m), timeout=15)
            left = await eventually(lambda: conn.fetchval(
                "SELECT count(*) = 0 FROM rttest.outbox WHERE message_id = ANY($1)", [leased, notified]))
            assert left
        finally:
            await conn.close()


async def test_a_poison_message_that_kills_workers_reaches_the_dlq(stack: Stack, schema: None, bus: RpcClient) -> None:
    """A message that crashes every worker taking it is dead-lettered after the delivery limit;
    then the next worker lives and serves."""
    await dlq_messages(stack)
    name = unique("poison-")
    await bus.send("rttest.crash", rt_app.Crash(name=name), ACTOR)
    limit = int(stack.env["DELIVERY_LIMIT"])
    crashes = 0
    for _ in range(limit + 3):
        proc = subprocess.Popen([sys.executable, "-m", "tests.runtime.rt_worker"], env=stack.env, cwd=stack.root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 8)
        except TimeoutError:
            code = None  # it did not crash: the message is gone from the queue
        if code == 17:
            crashes += 1
            continue
        try:
            reply = await bus.call_raw("rttest.make_thing", rt_app.MakeThing(name=unique("alive-")), ACTOR)
            assert reply.error is None
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait)
        break
    assert 1 <= crashes <= limit + 1, crashes
    dead = await dlq_messages(stack)
    assert any(msgspec.json.decode(m.body)["type"] == "rttest.crash" for m in dead)
    assert await count(stack, name) == 0  # every crashed attempt rolled back
