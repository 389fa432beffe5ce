"""Handlers of the users worker: rooms, services and which service is offered in which room.

Split by entity; importing this module registers them all:
- org_common: derived room status in SQL, views, events (`room_event` for the scheduling side), checks
- org_rooms: rooms and the bus query `users.get_room`
- org_services: services
- org_service_rooms: service-room links and the bus query `users.get_service_room`
"""

from __future__ import annotations

from workers.users.handlers import (  # noqa: F401
    org_rooms,
    org_service_rooms,
    org_services,
    registry,
)
