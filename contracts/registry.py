"""The catalogue of operations (commands and queries) and events.

A payload struct is registered once with its wire name; the edge sends it by type, the worker
routes it by name, and `contracts.asyncapi` documents every entry. Nothing else is needed to add a
command: the struct with its decorator, a handler, a route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from contracts.envelope import Event

T = TypeVar("T", bound=type)


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # "<domain>.<verb_noun>", also the routing key on the commands exchange
    payload: type
    result: Any  # the reply's `ok` type; None for "no content"
    kind: Literal["command", "query"]
    summary: str
    transient: bool = False  # never written to the broker's disk (carries a PIN)
    audited: bool = True  # commands only: the runtime records an audit entry for each
    sensitive_reply: bool = False  # the reply holds credentials: never stored for replay

    @property
    def domain(self) -> str:
        return self.name.split(".", 1)[0]


OPERATIONS: dict[str, Operation] = {}
EVENTS: dict[str, type[Event]] = {}


def _register(name: str, kind: Literal["command", "query"], result: Any, summary: str,
              transient: bool = False, audited: bool = True, sensitive_reply: bool = False
              ) -> Callable[[T], T]:
    def decorate(cls: T) -> T:
        if name in OPERATIONS:
            raise ValueError(f"operation {name} registered twice")
        cls.OPERATION = name  # type: ignore[attr-defined]
        OPERATIONS[name] = Operation(name, cls, result, kind, summary or (cls.__doc__ or "").strip(),
                                     transient, audited and kind == "command", sensitive_reply)
        return cls

    return decorate


def command(name: str, *, result: Any = None, summary: str = "", transient: bool = False,
            audited: bool = True, sensitive_reply: bool = False) -> Callable[[T], T]:
    """Register a payload struct as a command: it may change state, is audited and deduplicated."""
    return _register(name, "command", result, summary, transient, audited, sensitive_reply)


def query(name: str, *, result: Any, summary: str = "") -> Callable[[T], T]:
    """Register a payload struct as a query: it changes nothing except the audit trail."""
    return _register(name, "query", result, summary)


def event(name: str, *, relay: bool = True) -> Callable[[T], T]:
    """Register an event payload struct under its routing key `<domain>.<entity>.<verb>`."""

    def decorate(cls: T) -> T:
        if name in EVENTS:
            raise ValueError(f"event {name} registered twice")
        cls.TYPE = name  # type: ignore[attr-defined]
        cls.RELAY = relay  # type: ignore[attr-defined]
        EVENTS[name] = cls  # type: ignore[assignment]
        return cls

    return decorate


def operation_of(payload: Any) -> Operation:
    return OPERATIONS[type(payload).OPERATION]


def load_all() -> None:
    """Import every domain module so the registries are complete."""
    import contracts.demo
    import contracts.encounters
    import contracts.imaging
    import contracts.notifications
    import contracts.organisation
    import contracts.patients
    import contracts.scheduling
    import contracts.signing
    import contracts.system
    import contracts.users  # noqa: F401
