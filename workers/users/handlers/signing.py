"""Handlers of the users worker: signing keys and signatures."""

from __future__ import annotations

from workers.users.handlers import registry  # noqa: F401
