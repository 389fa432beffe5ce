"""Users domain (spec users.md), shift templates, room schedules, employee room assignments, who is on duty."""

from __future__ import annotations
