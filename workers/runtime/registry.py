"""Which plain async function handles which command, query, event or timed job of a worker."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.envelope import Event
from contracts.registry import OPERATIONS, Operation
from workers.runtime.unit_of_work import UnitOfWork

Handler = Callable[[Any, UnitOfWork], Awaitable[Any]]
EventHandler = Callable[[Any, UnitOfWork], Awaitable[None]]


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more."""
    regex = "^" + re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\#", r".*") + "$"
    return re.match(regex, key) is not None


@dataclass(slots=True)
class EventSubscription:
    pattern: str  # the binding key on the events exchange
    event_type: type[Event]  # what the payload decodes into
    handler: EventHandler


@dataclass(slots=True)
class Job:
    name: str
    every: float  # seconds between runs
    handler: Callable[[UnitOfWork], Awaitable[None]]
    lock_key: int


@dataclass
class HandlerRegistry:
    domain: str
    operations: dict[str, tuple[Operation, Handler]] = field(default_factory=dict)
    subscriptions: list[EventSubscription] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def handles(self, payload_type: type) -> Callable[[Handler], Handler]:
        name = payload_type.OPERATION  # type: ignore[attr-defined]
        operation = OPERATIONS[name]
        if operation.domain != self.domain:
            raise ValueError(f"{name} is not a {self.domain} operation")

        def decorate(fn: Handler) -> Handler:
            if name in self.operations:
                raise ValueError(f"{name} has two handlers")
            self.operations[name] = (operation, fn)
            return fn

        return decorate

    def on_event(self, pattern: str, event_type: type[Event]) -> Callable[[EventHandler], EventHandler]:
        def decorate(fn: EventHandler) -> EventHandler:
            self.subscriptions.append(EventSubscription(pattern, event_type, fn))
            return fn

        return decorate

    def job(self, name: str, every: float, lock_key: int) -> Callable[[Any], Any]:
        def decorate(fn: Callable[[UnitOfWork], Awaitable[None]]) -> Callable[[UnitOfWork], Awaitable[None]]:
            self.jobs.append(Job(name, every, fn, lock_key))
            return fn

        return decorate

    def subscriptions_for(self, routing_key: str) -> list[EventSubscription]:
        return [s for s in self.subscriptions if topic_matches(s.pattern, routing_key)]
