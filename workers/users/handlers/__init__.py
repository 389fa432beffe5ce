"""Handlers of the users worker, by area. Importing this package registers them all."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("users")

from workers.users.handlers import (  # noqa: E402, F401
    accounts,
    auth,
    departments,
    organisation,
    scheduling,
    seed_demo,
    signing,
)
