"""RabbitMQ topology (design.md): names and queue arguments, declared the same way by everyone.

| exchange      | type   | routing key                     | bound queues                          |
| `commands`    | topic  | `<domain>.<command>`            | `<domain>.commands` (quorum)          |
| `events`      | topic  | `<domain>.<entity>.<verb>`      | `<domain>.events` (quorum), relays    |
| `dead-letter` | direct | the source queue's name         | `<queue>.dlq`                         |
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

COMMANDS = "commands"
EVENTS = "events"
DEAD_LETTER = "dead-letter"


def commands_queue(domain: str) -> str:
    return f"{domain}.commands"


def events_queue(domain: str) -> str:
    return f"{domain}.events"


def transient_queue(domain: str) -> str:
    """Non-durable classic queue for messages that must never touch the broker's disk (PINs)."""
    return f"{domain}.signing"


def quorum_arguments(queue: str, delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER,
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    return {
        COMMANDS: await channel.declare_exchange(COMMANDS, aio_pika.ExchangeType.TOPIC, durable=True),
        EVENTS: await channel.declare_exchange(EVENTS, aio_pika.ExchangeType.TOPIC, durable=True),
        DEAD_LETTER: await channel.declare_exchange(DEAD_LETTER, aio_pika.ExchangeType.DIRECT, durable=True),
    }


async def declare_quorum_queue(channel: AbstractChannel, name: str, delivery_limit: int,
                               bindings: list[tuple[str, str]]) -> AbstractQueue:
    """A durable quorum queue with its DLQ; `bindings` are (exchange, routing key) pairs."""
    dlq = await channel.declare_queue(
        f"{name}.dlq", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(DEAD_LETTER, routing_key=name)
    queue = await channel.declare_queue(name, durable=True, arguments=quorum_arguments(name, delivery_limit))
    for exchange, key in bindings:
        await queue.bind(exchange, routing_key=key)
    return queue
