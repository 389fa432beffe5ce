"""Users domain (spec users.md), rooms, services and which service is offered in which room."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from contracts.common import Empty, ListParams, Page, Struct, Text, View
from contracts.envelope import Event
from contracts.registry import command, event, query


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


# ---------------------------------------------------------------- inputs

RoomCode = Annotated[str, Meta(min_length=1, max_length=20, pattern=r"^\S(.*\S)?$")]
ServiceCode = Annotated[str, Meta(min_length=1, max_length=20, pattern=r"^\S(.*\S)?$")]
ServiceName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^\S(.*\S)?$")]
Floor = Annotated[int, Meta(ge=-5, le=200)]
Capacity = Annotated[int, Meta(ge=1, le=100)]
# decimal(10,2) ≥ 0: a JSON number or a decimal string; range and scale are checked by the worker
Price = Annotated[Decimal, Meta(description="decimal(10,2) ≥ 0, as a number or a string; answered as a string")]
Amenities = Annotated[list[RoomAmenity], Meta(max_length=len(RoomAmenity), description="no duplicates")]
SearchText = Annotated[str, Meta(max_length=100)]

ROOM_SORT = ("code", "floor", "type", "createdAt")
SERVICE_SORT = ("code", "name", "createdAt")
SERVICE_ROOM_SORT = ("createdAt", "serviceCode", "roomCode")


class SettableRoomStatus(enum.StrEnum):
    """What an administrator may set; `occupied` is derived from the on-duty count."""

    AVAILABLE = "available"
    MAINTENANCE = "maintenance"


# ---------------------------------------------------------------- views


class DepartmentRef(View):
    id: UUID
    code: str
    name: str


class RoomView(View, omit_defaults=True):
    id: UUID
    code: str
    type: RoomType
    department_id: UUID
    department: DepartmentRef
    floor: int | None
    capacity: int
    price_per_day: Decimal | None
    status: RoomStatus  # derived: maintenance, else occupied at capacity, else available
    amenities: list[RoomAmenity]
    description: str | None
    notes: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int
    on_duty_count: int | None = None  # detail only


class RoomSummary(View):
    id: UUID
    code: str
    type: RoomType
    department_id: UUID
    floor: int | None
    status: RoomStatus
    is_active: bool
    deleted_at: datetime | None


class ServiceView(View):
    id: UUID
    code: str
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class ServiceSummary(View):
    id: UUID
    code: str
    name: str
    is_active: bool
    deleted_at: datetime | None


class ServiceRoomView(View):
    id: UUID
    service_id: UUID
    service: ServiceSummary
    room_id: UUID
    room: RoomSummary
    is_active: bool
    notes: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class RoomStats(View):
    total: int  # live rooms
    active: int
    inactive: int
    deleted: int
    by_status: dict[str, int]  # derived status of live rooms, every value present
    by_type: dict[str, int]  # every value present
    by_department: dict[str, int]  # department code → live rooms


class ServiceStats(View):
    total: int
    active: int
    inactive: int
    deleted: int
    rooms_by_service: dict[str, int]  # service code → live rooms offering it (as GET /rooms?serviceId= counts)


# ---------------------------------------------------------------- rooms


@query("users.list_rooms", result=Page[RoomView], summary="Rooms, filtered, sorted and paged")
class ListRooms(ListParams):
    q: SearchText | None = None
    department_id: UUID | None = None
    type: list[RoomType] | None = None
    status: list[RoomStatus] | None = None  # the derived status
    service_id: UUID | None = None  # rooms offering it through a live active link
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.get_room", result=RoomView,
       summary="One live room with its on-duty count (also the bus query other domains call)")
class GetRoom(Struct):
    id: UUID


@query("users.room_stats", result=RoomStats, summary="Rooms by derived status, type and department")
class GetRoomStats(Empty):
    pass


@command("users.create_room", result=RoomView, summary="Create a room (ADM)")
class CreateRoom(Struct):
    code: RoomCode
    department_id: UUID
    type: RoomType = RoomType.GENERAL
    floor: Floor | None = None
    capacity: Capacity = 1
    price_per_day: Price | None = None
    status: SettableRoomStatus = SettableRoomStatus.AVAILABLE
    amenities: Amenities = msgspec.field(default_factory=list)
    description: Text | None = None
    notes: Text | None = None


class RoomPatch(Struct):
    code: RoomCode | UnsetType = UNSET
    department_id: UUID | UnsetType = UNSET
    type: RoomType | UnsetType = UNSET
    floor: Floor | UnsetType | None = UNSET
    capacity: Capacity | UnsetType = UNSET
    price_per_day: Price | UnsetType | None = UNSET
    status: SettableRoomStatus | UnsetType = UNSET
    amenities: Amenities | UnsetType = UNSET
    description: Text | UnsetType | None = UNSET
    notes: Text | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET


@command("users.update_room", result=RoomView, summary="Change a room (ADM; status only available/maintenance)")
class UpdateRoom(Struct):
    id: UUID
    patch: RoomPatch
    if_match: int | None = None


@command("users.delete_room",
         summary="Soft-delete a room; refused while live service links or future schedules point at it")
class DeleteRoom(Struct):
    id: UUID
    if_match: int | None = None


@command("users.restore_room", result=RoomView, summary="Restore a deleted room")
class RestoreRoom(Struct):
    id: UUID
    if_match: int | None = None


# ---------------------------------------------------------------- services


@query("users.list_services", result=Page[ServiceView], summary="Services, filtered, sorted and paged")
class ListServices(ListParams):
    q: SearchText | None = None
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.get_service", result=ServiceView, summary="One live service")
class GetService(Struct):
    id: UUID


@query("users.service_stats", result=ServiceStats, summary="Services by state, rooms per service")
class GetServiceStats(Empty):
    pass


@command("users.create_service", result=ServiceView, summary="Create a service (ADM)")
class CreateService(Struct):
    code: ServiceCode
    name: ServiceName
    description: Text | None = None


class ServicePatch(Struct):
    code: ServiceCode | UnsetType = UNSET
    name: ServiceName | UnsetType = UNSET
    description: Text | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET


@command("users.update_service", result=ServiceView, summary="Change a service (ADM)")
class UpdateService(Struct):
    id: UUID
    patch: ServicePatch
    if_match: int | None = None


@command("users.delete_service", summary="Soft-delete a service; refused while live service-room links point at it")
class DeleteService(Struct):
    id: UUID
    if_match: int | None = None


@command("users.restore_service", result=ServiceView, summary="Restore a deleted service")
class RestoreService(Struct):
    id: UUID
    if_match: int | None = None


# ---------------------------------------------------------------- service–room links


@query("users.list_service_rooms", result=Page[ServiceRoomView],
       summary="Which service is offered in which room, filtered and paged")
class ListServiceRooms(ListParams):
    service_id: UUID | None = None
    room_id: UUID | None = None
    department_id: UUID | None = None  # the room's department
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.get_service_room", result=ServiceRoomView,
       summary="One live service-room link with its service and room (status); the bus query encounters use")
class GetServiceRoom(Struct):
    id: UUID


@command("users.create_service_room", result=ServiceRoomView,
         summary="Offer a service in a room (ADM); both live and active, the pair unique")
class CreateServiceRoom(Struct):
    service_id: UUID
    room_id: UUID
    is_active: bool = True
    notes: Text | None = None


class ServiceRoomPatch(Struct):
    """The pair is fixed once created (encounters point at the link); delete it and create another."""

    is_active: bool | UnsetType = UNSET
    notes: Text | UnsetType | None = UNSET


@command("users.update_service_room", result=ServiceRoomView, summary="Change a service-room link (ADM)")
class UpdateServiceRoom(Struct):
    id: UUID
    patch: ServiceRoomPatch
    if_match: int | None = None


@command("users.delete_service_room", summary="Soft-delete a service-room link (ADM)")
class DeleteServiceRoom(Struct):
    id: UUID
    if_match: int | None = None


@command("users.restore_service_room", result=ServiceRoomView, summary="Restore a deleted service-room link")
class RestoreServiceRoom(Struct):
    id: UUID
    if_match: int | None = None
