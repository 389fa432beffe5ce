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
# Called once per batch of events, before (prefetch: every matching (envelope, event) of the batch)
# or after (flush) the handler has run for each; both share `uow.batch` with the handlers.
Prefetch = Callable[[list[tuple[Any, Any]], UnitOfWork], Awaitable[None]]
Flush = Callable[[UnitOfWork], Awaitable[None]]


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more."""
    regex = "^" + re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\#", r".*") + "$"
    return re.match(regex, key) is not None


@dataclass(slots=True)
class EventSubscription:
    pattern: str  # the binding key on the events exchange
    event_type: type[Event]  # what the payload decodes into
    handler: EventHandler
    prefetch: Prefetch | None = None  # e.g. one bus query for the whole batch instead of one per event
    flush: Flush | None = None  # e.g. one multi-row insert of what the handlers collected in `uow.batch`


@dataclass(slots=True)
class Watcher:
    pattern: str  # the binding key of the process's own exclusive queue
    notify: Callable[[Any], None]  # called with the envelope, or None when events may have been missed


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
    watchers: list[Watcher] = field(default_factory=list)

    def watch(self, *patterns: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
        """`fn(envelope)` for every matching event in *every* process of this worker kind (no
        transaction, no inbox: for dropping caches); `fn(None)` after each (re)connection."""
        def decorate(fn: Callable[[Any], None]) -> Callable[[Any], None]:
            self.watchers.extend(Watcher(p, fn) for p in patterns)
            return fn

        return decorate

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

    def on_event(self, pattern: str, event_type: type[Event], *, prefetch: Prefetch | None = None,
                 flush: Flush | None = None) -> Callable[[EventHandler], EventHandler]:
        def decorate(fn: EventHandler) -> EventHandler:
            self.subscriptions.append(EventSubscription(pattern, event_type, fn, prefetch, flush))
            return fn

        return decorate

    def job(self, name: str, every: float, lock_key: int) -> Callable[[Any], Any]:
        def decorate(fn: Callable[[UnitOfWork], Awaitable[None]]) -> Callable[[UnitOfWork], Awaitable[None]]:
            self.jobs.append(Job(name, every, fn, lock_key))
            return fn

        return decorate

    def subscriptions_for(self, routing_key: str) -> list[EventSubscription]:
        return [s for s in self.subscriptions if topic_matches(s.pattern, routing_key)]
