"""The envelope every command, reply and event travels in (spec README §8).

On the wire: JSON, camelCase. The payload is kept as raw JSON until the receiver knows which type
to decode it into, so a message is parsed once and never re-encoded on the way through.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import msgspec

from contracts.errors import ErrorBody
from contracts.ids import uuid7


class Actor(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    """Who caused a message: a signed-in user (with the request's client facts) or a system job."""

    user_id: UUID | None = None
    role: str | None = None
    session_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    system: str | None = None

    @classmethod
    def system_actor(cls, name: str) -> Actor:
        return cls(system=name)

    @property
    def is_system(self) -> bool:
        return self.system is not None


class Envelope(msgspec.Struct, rename="camel", omit_defaults=True):
    message_id: UUID
    type: str
    correlation_id: UUID
    occurred_at: datetime
    actor: Actor
    payload: msgspec.Raw
    causation_id: UUID | None = None


class Reply(msgspec.Struct, omit_defaults=True):
    """A reply payload: exactly one of `ok` (the result, raw JSON) or `error`."""

    ok: msgspec.Raw = msgspec.Raw(b"")  # empty = absent (an error reply)
    error: ErrorBody | None = None


class Event(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=False):
    """Base of every domain event payload. Subclasses set TYPE via @event in contracts.registry."""

    TYPE: ClassVar[str] = ""
    RELAY: ClassVar[bool] = True


encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_reply_decoder = msgspec.json.Decoder(Reply)


def now_utc() -> datetime:
    return datetime.now(UTC)


def make_envelope(
    type_: str,
    payload: Any,
    actor: Actor,
    *,
    correlation_id: UUID | None = None,
    causation_id: UUID | None = None,
    message_id: UUID | None = None,
) -> Envelope:
    message_id = message_id or uuid7()
    raw = payload if isinstance(payload, msgspec.Raw) else msgspec.Raw(encoder.encode(payload))
    return Envelope(
        message_id=message_id,
        type=type_,
        correlation_id=correlation_id or message_id,
        causation_id=causation_id,
        occurred_at=now_utc(),
        actor=actor,
        payload=raw,
    )


def encode(obj: Any) -> bytes:
    return encoder.encode(obj)


def decode_envelope(body: bytes) -> Envelope:
    return _envelope_decoder.decode(body)


def decode_reply(body: bytes) -> Reply:
    return _reply_decoder.decode(body)
