"""Routes of the users domain: shift templates, room schedules, employee room assignments, who is on duty."""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
