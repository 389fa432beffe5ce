"""Handlers of the users worker: shift templates, room schedules, employee room assignments, who is on duty.

Split by area; importing this module registers them all:
`shift_templates` (CRUD, duplicate), `room_schedules` (writes one at a time), `schedule_reads` (lists,
"mine", stats, availability),
`schedule_batch` (bulk create/update/delete, conflict check), `schedule_runs` (template runs, copy-week),
`assignments`, `on_duty` (who is on duty, `current_duty`, the `advance_room_schedules` timer);
`schedule_support` and `schedule_rules` hold what they share.
"""

from __future__ import annotations

from workers.users.handlers import (  # noqa: F401
    assignments,
    on_duty,
    room_schedules,
    schedule_batch,
    schedule_reads,
    schedule_runs,
    shift_templates,
)
from workers.users.handlers.on_duty import current_duty

__all__ = ["current_duty"]
