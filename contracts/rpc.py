"""The bus client: send a command or query and await its reply over direct reply-to.

Used by the edge for every request and by workers for cross-domain queries. Each command is
published persistent, `mandatory`, with a publisher confirm, on the channel that consumes
`amq.rabbitmq.reply-to` (no-ack). The confirm and the reply are awaited together, so the confirm
costs no extra latency. If the connection drops, waiting calls fail at once with 503 and the
client reconnects in the background; `on_connect` hooks (re)declare what their owners need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import aiormq
import msgspec
from aiormq.abc import DeliveredMessage

from contracts.envelope import Actor, Reply, decode_envelope, decode_reply, encode, make_envelope
from contracts.errors import Timeout, Unavailable
from contracts.observability import log_fields
from contracts.registry import OPERATIONS
from contracts.topology import COMMANDS

log = logging.getLogger("bus")
REPLY_TO = "amq.rabbitmq.reply-to"

OnConnect = Callable[[aiormq.abc.AbstractChannel], Awaitable[None]]


class RpcClient:
    def __init__(self, amqp_url: str, *, name: str, timeout: float = 10.0) -> None:
        self.amqp_url = amqp_url
        self.name = name
        self.timeout = timeout
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._on_connect: list[OnConnect] = []
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    def on_connect(self, hook: OnConnect) -> None:
        self._on_connect.append(hook)

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, wait: float = 15.0) -> None:
        """Connect (retrying in the background) and wait up to `wait` seconds for the first link."""
        self._supervisor = asyncio.create_task(self._supervise(), name=f"bus-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def _connect(self) -> None:
        connection = await aiormq.connect(self.amqp_url, client_properties={"connection_name": self.name})
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.exchange_declare(COMMANDS, exchange_type="topic", durable=True)
        await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
        for hook in self._on_connect:
            await hook(channel)
        self.connection, self.channel = connection, channel
        self._ready.set()

    async def _supervise(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                await self._connect()
                delay = 0.2
                log.info("bus connected", extra=log_fields(client=self.name))
                assert self.connection is not None
                with contextlib.suppress(Exception):
                    await self.connection.closing
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus connection failed; retrying", extra=log_fields(error=repr(exc), delay=delay))
            self._ready.clear()
            self._fail_pending(Unavailable("the message broker connection was lost"))
            if self._closed:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        cid = message.header.properties.correlation_id
        fut = self._pending.pop(cid, None) if cid else None
        if fut is not None and not fut.done():
            fut.set_result(message.body)

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        self._fail_pending(Unavailable("the bus client is closed"))

    # ------------------------------------------------------------------ calls

    async def call_raw(self, name: str, payload: Any, actor: Actor, *, timeout: float | None = None,
                       correlation_id: UUID | None = None, message_id: UUID | None = None) -> Reply:
        """Send `payload` as operation `name`; return the decoded reply (ok raw, or error)."""
        channel = self.channel
        if channel is None or not self._ready.is_set() or channel.is_closed:
            raise Unavailable("the message broker is not reachable")
        op = OPERATIONS[name]
        envelope = make_envelope(name, payload, actor, correlation_id=correlation_id, message_id=message_id)
        key = str(envelope.message_id)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        limit = self.timeout if timeout is None else timeout
        confirmed = False
        try:
            async with asyncio.timeout(limit):  # one timer for confirm and reply, no extra task
                try:
                    await channel.basic_publish(
                        encode(envelope),
                        exchange=COMMANDS,
                        routing_key=name,
                        properties=aiormq.spec.Basic.Properties(
                            content_type="application/json",
                            delivery_mode=1 if op.transient or op.kind == "query" else 2,
                            message_id=key,
                            correlation_id=key,
                            reply_to=REPLY_TO,
                            message_type=name,
                        ),
                        mandatory=True,
                    )
                except aiormq.exceptions.PublishError as exc:
                    raise Unavailable(f"no worker queue takes {name}", commandId=key) from exc
                except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
                    raise Unavailable("the message broker refused the command", commandId=key) from exc
                confirmed = True
                body = await fut
        except TimeoutError as exc:
            if not confirmed:
                raise Timeout("the broker did not confirm the command in time", commandId=key) from exc
            raise Timeout(f"no reply within {limit:g} s; the command may still complete", commandId=key) from exc
        finally:
            self._pending.pop(key, None)
        return decode_reply(decode_envelope(body).payload)

    async def call(self, name: str, payload: Any, actor: Actor, *, result: Any = None,
                   timeout: float | None = None, correlation_id: UUID | None = None) -> Any:
        """Like `call_raw`, raising a domain error reply and decoding `ok` into `result`."""
        from contracts.errors import DomainError

        reply = await self.call_raw(name, payload, actor, timeout=timeout, correlation_id=correlation_id)
        if reply.error is not None:
            raise DomainError.from_body(reply.error)
        if result is None:
            return reply.ok
        return msgspec.json.decode(reply.ok, type=result)

    async def send(self, name: str, payload: Any, actor: Actor, *, correlation_id: UUID | None = None) -> UUID:
        """Fire and forget (with a publisher confirm): no reply is awaited."""
        channel = self.channel
        if channel is None or not self._ready.is_set():
            raise Unavailable("the message broker is not reachable")
        envelope = make_envelope(name, payload, actor, correlation_id=correlation_id)
        await channel.basic_publish(
            encode(envelope), exchange=COMMANDS, routing_key=name, mandatory=True,
            properties=aiormq.spec.Basic.Properties(
                content_type="application/json", delivery_mode=2, message_id=str(envelope.message_id),
                message_type=name,
            ),
        )
        return envelope.message_id

