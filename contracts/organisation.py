"""Users domain (spec users.md), rooms, services and which service is offered in which room."""

from __future__ import annotations

import enum
from uuid import UUID

from contracts.envelope import Event
from contracts.registry import event


class RoomType(enum.StrEnum):
    CT = "ct"
    MRI = "mri"
    X_RAY = "x_ray"
    ULTRASOUND = "ultrasound"
    RESPIRATORY = "respiratory"
    GENERAL = "general"
    WC = "wc"


class RoomStatus(enum.StrEnum):
    AVAILABLE = "available"
    OCCUPIED = "occupied"  # derived: on-duty count at capacity
    MAINTENANCE = "maintenance"


class RoomAmenity(enum.StrEnum):
    TV = "tv"
    AIR_CONDITIONING = "air_conditioning"
    WIFI = "wifi"
    TELEPHONE = "telephone"
    ATTACHED_BATHROOM = "attached_bathroom"
    WHEELCHAIR_ACCESSIBLE = "wheelchair_accessible"
    OXYGEN_SUPPLY = "oxygen_supply"
    NURSE_CALL_BUTTON = "nurse_call_button"


def room_status(stored: str, on_duty: int, capacity: int) -> RoomStatus:
    """What a room reads as: maintenance when an administrator said so, otherwise occupied while
    its on-duty count is at capacity, otherwise available."""
    if stored == RoomStatus.MAINTENANCE:
        return RoomStatus.MAINTENANCE
    return RoomStatus.OCCUPIED if on_duty >= capacity else RoomStatus.AVAILABLE


# ---------------------------------------------------------------- events


class RoomEventBase(Event):
    room_id: UUID
    code: str
    type: RoomType
    department_id: UUID
    status: RoomStatus
    capacity: int
    on_duty_count: int
    is_active: bool
    version: int


@event("users.room.created")
class RoomCreated(RoomEventBase):
    pass


@event("users.room.updated")
class RoomUpdated(RoomEventBase):
    pass


@event("users.room.deleted")
class RoomDeleted(RoomEventBase):
    pass


@event("users.room.restored")
class RoomRestored(RoomEventBase):
    pass


class ServiceEventBase(Event):
    service_id: UUID
    code: str
    name: str
    is_active: bool
    version: int


@event("users.service.created")
class ServiceCreated(ServiceEventBase):
    pass


@event("users.service.updated")
class ServiceUpdated(ServiceEventBase):
    pass


@event("users.service.deleted")
class ServiceDeleted(ServiceEventBase):
    pass


@event("users.service.restored")
class ServiceRestored(ServiceEventBase):
    pass


class ServiceRoomEventBase(Event):
    service_room_id: UUID
    service_id: UUID
    room_id: UUID
    is_active: bool
    version: int


@event("users.service_room.created")
class ServiceRoomCreated(ServiceRoomEventBase):
    pass


@event("users.service_room.updated")
class ServiceRoomUpdated(ServiceRoomEventBase):
    pass


@event("users.service_room.deleted")
class ServiceRoomDeleted(ServiceRoomEventBase):
    pass


@event("users.service_room.restored")
class ServiceRoomRestored(ServiceRoomEventBase):
    pass
