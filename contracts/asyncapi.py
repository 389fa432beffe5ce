"""The AsyncAPI 2.6 document, generated from the registered contracts (served at
`/api/asyncapi.json`, printed by `imagingctl asyncapi`)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from contracts.envelope import Actor, Envelope
from contracts.errors import ErrorBody
from contracts.registry import EVENTS, OPERATIONS, load_all
from contracts.topology import COMMANDS, DEAD_LETTER
from contracts.topology import EVENTS as EVENTS_EXCHANGE

_REF = "#/components/schemas/{name}"


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    load_all()
    ops = sorted(OPERATIONS.values(), key=lambda o: o.name)
    events = sorted(EVENTS.items())
    types: list[Any] = [Envelope, Actor, ErrorBody]
    types += [op.payload for op in ops]
    types += [op.result for op in ops if op.result is not None]
    types += [cls for _, cls in events]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))

    channels: dict[str, Any] = {}
    for op in ops:
        reply_ok = by_type[op.result] if op.result is not None else {"type": "null"}
        channels[op.name] = {
            "description": f"{op.kind}: {op.summary}".strip(),
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": COMMANDS, "type": "topic", "durable": True, "autoDelete": False},
            }},
            "publish": {
                "operationId": op.name,
                "summary": op.summary,
                "bindings": {"amqp": {"deliveryMode": 1 if op.transient else 2, "mandatory": True,
                                      "replyTo": "amq.rabbitmq.reply-to"}},
                "message": {
                    "name": op.name,
                    "contentType": "application/json",
                    "payload": by_type[op.payload],
                    "x-envelope": {"$ref": _REF.format(name="Envelope")},
                    "x-reply": {"oneOf": [
                        {"type": "object", "properties": {"ok": reply_ok}, "required": ["ok"]},
                        {"type": "object", "properties": {"error": {"$ref": _REF.format(name="ErrorBody")}},
                         "required": ["error"]},
                    ]},
                    "x-kind": op.kind,
                    "x-audited": op.audited,
                },
            },
        }
    for name, cls in events:
        channels[name] = {
            "description": f"event{'' if cls.RELAY else ' (never relayed to browsers)'}",
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": EVENTS_EXCHANGE, "type": "topic", "durable": True, "autoDelete": False},
            }},
            "subscribe": {
                "operationId": f"on.{name}",
                "message": {
                    "name": name,
                    "contentType": "application/json",
                    "payload": by_type[cls],
                    "x-envelope": {"$ref": _REF.format(name="Envelope")},
                    "x-relayed": cls.RELAY,
                },
            },
        }
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "Imaging backend messages",
            "version": "0.1.0",
            "description": (
                "Commands and queries go to the `commands` topic exchange with routing key "
                "`<domain>.<verb_noun>` and are answered over direct reply-to; every change is "
                "published on the `events` topic exchange as `<domain>.<entity>.<verb>`. Every "
                "message is an Envelope (messageId, type, correlationId, causationId, occurredAt, "
                "actor, payload), JSON, camelCase. Failed messages go to `<queue>.dlq` through "
                f"the `{DEAD_LETTER}` exchange."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"broker": {"url": "amqp://localhost:5672", "protocol": "amqp", "protocolVersion": "0-9-1"}},
        "channels": channels,
        "components": {"schemas": components},
    }
