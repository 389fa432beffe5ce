"""RabbitMQ topology (design.md), declared the same way by every process.

| exchange      | type   | routing key                 | bound queues                                        |
| `commands`    | topic  | `<domain>.<verb_noun>`      | `<domain>.commands` (quorum): the domain's commands |
|               |        |                             | `<domain>.queries` (classic): the domain's queries  |
| `events`      | topic  | `<domain>.<entity>.<verb>`  | `<domain>.events` (quorum), relays, edges, others   |
| `dead-letter` | direct | the source queue's name     | `<queue>.dlq`                                       |

Commands change state, so they are persistent messages on a quorum queue with publisher confirms,
a delivery limit and a dead-letter queue. Queries change nothing: they ride a classic queue as
transient messages (a broker crash loses only reads the caller will time out and retry), which
spares each read the quorum log write. Each queue is bound to exactly the operations its worker
handles, so a message nobody handles is returned to its sender at once (`mandatory`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiormq.abc import AbstractChannel

COMMANDS = "commands"
EVENTS = "events"
DEAD_LETTER = "dead-letter"
QUERY_TTL_MS = 60_000  # a query nobody took within a minute has long been given up by its caller
QUERY_MAX_LENGTH = 10_000


def commands_queue(domain: str) -> str:
    return f"{domain}.commands"


def queries_queue(domain: str) -> str:
    return f"{domain}.queries"


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


async def declare_exchanges(channel: AbstractChannel) -> None:
    await channel.exchange_declare(COMMANDS, exchange_type="topic", durable=True)
    await channel.exchange_declare(EVENTS, exchange_type="topic", durable=True)
    await channel.exchange_declare(DEAD_LETTER, exchange_type="direct", durable=True)


async def declare_quorum_queue(channel: AbstractChannel, name: str, delivery_limit: int,
                               bindings: Iterable[tuple[str, str]]) -> str:
    """A durable quorum queue with its DLQ; `bindings` are (exchange, routing key) pairs."""
    dlq = f"{name}.dlq"
    await channel.queue_declare(dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.queue_bind(dlq, DEAD_LETTER, routing_key=name)
    await channel.queue_declare(name, durable=True, arguments=quorum_arguments(name, delivery_limit))
    for exchange, key in bindings:
        await channel.queue_bind(name, exchange, routing_key=key)
    return name


async def declare_query_queue(channel: AbstractChannel, name: str, keys: Iterable[str]) -> str:
    """A durable classic queue for transient query messages, bounded, with stale ones expiring."""
    await channel.queue_declare(name, durable=True, arguments={
        "x-queue-type": "classic",
        "x-message-ttl": QUERY_TTL_MS,
        "x-max-length": QUERY_MAX_LENGTH,
        "x-overflow": "reject-publish",
    })
    for key in keys:
        await channel.queue_bind(name, COMMANDS, routing_key=key)
    return name


async def declare_transient_queue(channel: AbstractChannel, name: str, keys: Iterable[str]) -> str:
    """A non-durable classic queue for transient messages that must never touch the broker's disk
    (a PIN): nothing is written when the broker restarts, the sender just sees a timeout."""
    await channel.queue_declare(name, durable=False, auto_delete=False, arguments={
        "x-queue-type": "classic",
        "x-message-ttl": QUERY_TTL_MS,
        "x-max-length": QUERY_MAX_LENGTH,
        "x-overflow": "reject-publish",
    })
    for key in keys:
        await channel.queue_bind(name, COMMANDS, routing_key=key)
    return name
