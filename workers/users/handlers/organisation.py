"""Handlers of the users worker: rooms, services and which service is offered in which room."""

from __future__ import annotations

from workers.users.handlers import registry  # noqa: F401
