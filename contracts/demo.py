"""Demo data (spec README §10): `seed_demo` of each domain, sent in order by `imagingctl seed-demo`
and `POST /admin/seed-demo`, never in production.

`SEED_DEMO_COMMANDS` is the one list both senders walk: `users.seed_demo` today; `imaging.seed_demo`
and `patients.seed_demo` are appended (in that order) when their domains register them. Each
answers a `SeedDemoResult` (counts of what it created and what already existed), so a run twice
duplicates nothing and says so.

The demo users' password travels in `users.seed_demo` itself, so that command is `transient`: it
rides the non-durable `users.signing` queue as a non-persistent message and never touches the
broker's disk. The worker writes it nowhere but the argon2 hash: not in events, logs, the audit
trail or the reply. `DEMO_PASSWORD` is for development and test stacks only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

import msgspec

from contracts.common import Role, Struct, View
from contracts.envelope import Actor
from contracts.errors import DomainError, Forbidden
from contracts.registry import OPERATIONS, command
from contracts.settings import Settings
from contracts.users import Password

PRODUCTION = "production"
SEED_TIMEOUT = 120.0  # seconds a sender waits for one seed command (it hashes passwords, writes a week)


class DemoAccount(View):
    """A demo user: who to sign in as (the password is never part of any answer)."""

    email: str
    username: str
    role: Role
    created: bool  # False: the account already existed and was left as it was (password included)


class SeedDemoResult(View):
    """What one domain's `seed_demo` did, by kind of record (camelCase keys, e.g. `roomSchedules`)."""

    command: str
    created: dict[str, int]
    existed: dict[str, int]
    skipped: dict[str, int] = msgspec.field(default_factory=dict)  # could not be made (e.g. a room in maintenance)
    accounts: list[DemoAccount] = msgspec.field(default_factory=list)


class SeedDemoReport(View):
    """The answer of `POST /admin/seed-demo`: each seed command's result, in the order sent."""

    results: list[SeedDemoResult]
    password_source: str  # "DEMO_PASSWORD", or "generated" (not shown: reset a demo user's password to use one)


@command("users.seed_demo", result=SeedDemoResult, transient=True,
         summary="Demo data of the users domain: one user per role, departments, rooms, services, service-room "
                 "links, the standard shift templates and this week's schedules with the demo staff on duty; "
                 "idempotent; refused in production")
class SeedDemoUsers(Struct):
    # The demo users' password. None: a random one that nobody learns (an administrator resets a demo
    # user's password to use that account). Never stored but as its hash, never answered.
    password: Password | None = None
    must_change_password: bool = True  # False only for a password the operator chose (DEMO_PASSWORD)


# The seed commands, in the order they are sent (spec README §10): users, then imaging, then patients.
SEED_DEMO_COMMANDS: tuple[str, ...] = ("users.seed_demo",)


def is_production(settings: Settings) -> bool:
    return settings.environment == PRODUCTION


def refuse_in_production(settings: Settings) -> None:
    """Demo data never enters a production database: 403 `not_in_production`."""
    if is_production(settings):
        raise Forbidden("demo data is refused when ENVIRONMENT=production", code="not_in_production")


def seed_payload(name: str, password: str | None, must_change_password: bool) -> Any:
    """The payload of seed command `name`: the password only goes to a command that has that field."""
    cls = OPERATIONS[name].payload
    fields = {f.name for f in msgspec.structs.fields(cls)}
    values = {"password": password, "must_change_password": must_change_password}
    return cls(**{k: v for k, v in values.items() if k in fields})


async def send_seed_commands(bus: Any, actor: Actor, *, password: str | None, must_change_password: bool,
                             correlation_id: UUID | None = None, message_id: UUID | None = None,
                             timeout: float = SEED_TIMEOUT) -> list[SeedDemoResult]:
    """Send every seed command in order over `bus` (a `contracts.rpc.RpcClient`) and return their
    results; the first refusal stops the run and is raised. With `message_id` (an Idempotency-Key)
    each command gets a message id derived from it, so a retry is deduplicated by its worker."""
    results: list[SeedDemoResult] = []
    for name in SEED_DEMO_COMMANDS:
        reply = await bus.call_raw(name, seed_payload(name, password, must_change_password), actor, timeout=timeout,
                                   correlation_id=correlation_id,
                                   message_id=uuid5(message_id, name) if message_id is not None else None)
        if reply.error is not None:
            raise DomainError.from_body(reply.error)
        results.append(msgspec.json.decode(reply.ok, type=SeedDemoResult))
    return results
