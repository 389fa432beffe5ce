"""A small domain, `rttest`, that exercises the worker runtime itself against the real Postgres and
RabbitMQ: its commands succeed, refuse, explode, block or crash the process on purpose."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated
from uuid import UUID

from msgspec import Meta
from sqlalchemy import Column, MetaData, Table, Text, func, select
from sqlalchemy.dialects.postgresql import UUID as PgUUID

from contracts.common import Struct, View
from contracts.envelope import Event
from contracts.errors import Conflict
from contracts.registry import OPERATIONS, command, event, query
from contracts.settings import Settings
from workers.runtime.consumer import Worker
from workers.runtime.registry import HandlerRegistry
from workers.runtime.unit_of_work import UnitOfWork

DOMAIN = "rttest"
SCHEMA_SQL = [
    f"CREATE SCHEMA IF NOT EXISTS {DOMAIN}",
    f"""CREATE TABLE IF NOT EXISTS {DOMAIN}.inbox (message_id uuid PRIMARY KEY, type text NOT NULL, reply bytea,
        processed_at timestamptz NOT NULL DEFAULT now())""",
    f"""CREATE TABLE IF NOT EXISTS {DOMAIN}.outbox (message_id uuid PRIMARY KEY, routing_key text NOT NULL,
        body bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
        available_at timestamptz NOT NULL DEFAULT now())""",
    f"""CREATE TABLE IF NOT EXISTS {DOMAIN}.things (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name text NOT NULL)""",
]

things = Table("things", MetaData(schema=DOMAIN), Column("id", PgUUID(as_uuid=True), primary_key=True,
               server_default=func.gen_random_uuid()), Column("name", Text, nullable=False))

Name = Annotated[str, Meta(min_length=1, max_length=50)]


class ThingView(View):
    id: UUID
    name: str


class CountView(View):
    count: int


def _register() -> None:
    """Register the rttest contracts once per process (module reloads must not re-register)."""
    if f"{DOMAIN}.make_thing" in OPERATIONS:
        return
    command(f"{DOMAIN}.make_thing", result=ThingView)(MakeThing)
    command(f"{DOMAIN}.refuse", result=ThingView)(Refuse)
    command(f"{DOMAIN}.explode", result=ThingView)(Explode)
    command(f"{DOMAIN}.block", result=ThingView)(Block)
    command(f"{DOMAIN}.crash", result=ThingView)(Crash)
    query(f"{DOMAIN}.count_things", result=CountView)(CountThings)
    command(f"{DOMAIN}.orphan", result=ThingView)(Orphan)  # registered, but no worker handles it
    event(f"{DOMAIN}.thing.made")(ThingMade)


class MakeThing(Struct):
    name: Name


class Refuse(Struct):
    name: Name


class Explode(Struct):
    name: Name


class Block(Struct):
    name: Name


class Crash(Struct):
    name: Name


class CountThings(Struct):
    name: Name


class Orphan(Struct):
    name: Name


class ThingMade(Event):
    thing_id: UUID
    name: str
    version: int = 1


_register()

# Test-controlled gates for `block`: the handler signals it has started, then waits to be released.
started: asyncio.Event | None = None
release: asyncio.Event | None = None
attempts: dict[str, int] = {}


def build_registry() -> HandlerRegistry:
    registry = HandlerRegistry(DOMAIN)

    async def insert(uow: UnitOfWork, name: str) -> ThingView:
        row = (await uow.conn.execute(things.insert().values(name=name).returning(things))).one()
        uow.emit(ThingMade(thing_id=row.id, name=row.name))
        return ThingView(id=row.id, name=row.name)

    @registry.handles(MakeThing)
    async def make_thing(cmd: MakeThing, uow: UnitOfWork) -> ThingView:
        return await insert(uow, cmd.name)

    @registry.handles(Refuse)
    async def refuse(cmd: Refuse, uow: UnitOfWork) -> ThingView:
        await insert(uow, cmd.name)
        raise Conflict("refused on purpose", code="refused", field="name")

    @registry.handles(Explode)
    async def explode(cmd: Explode, uow: UnitOfWork) -> ThingView:
        attempts[cmd.name] = attempts.get(cmd.name, 0) + 1
        await insert(uow, cmd.name)
        raise RuntimeError("exploded on purpose after writing")

    @registry.handles(Block)
    async def block(cmd: Block, uow: UnitOfWork) -> ThingView:
        view = await insert(uow, cmd.name)
        if started is not None:
            started.set()
        if release is not None:
            await release.wait()
        return view

    @registry.handles(Crash)
    async def crash(cmd: Crash, uow: UnitOfWork) -> ThingView:
        await insert(uow, cmd.name)
        os._exit(17)  # the process dies mid-handler, as with a fatal parser bug or the OOM killer

    @registry.handles(CountThings)
    async def count_things(q: CountThings, uow: UnitOfWork) -> CountView:
        n = (await uow.conn.execute(select(func.count()).select_from(things).where(things.c.name == q.name))).scalar()
        return CountView(count=int(n or 0))

    return registry


def build_worker(settings: Settings) -> Worker:
    return Worker(build_registry(), settings)
