"""Handlers of the users worker: shift templates, room schedules, employee room assignments, who is on duty."""

from __future__ import annotations

from workers.users.handlers import registry  # noqa: F401
