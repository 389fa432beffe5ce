"""`/rooms`, `/services`, `/service-rooms` (users.md §4): read Staff, write and stats ADM."""

from __future__ import annotations

from uuid import UUID

from litestar import Request, delete, get, patch, post

from contracts.common import Page
from contracts.organisation import (
    CreateRoom,
    CreateService,
    CreateServiceRoom,
    DeleteRoom,
    DeleteService,
    DeleteServiceRoom,
    GetRoom,
    GetRoomStats,
    GetService,
    GetServiceRoom,
    GetServiceStats,
    ListRooms,
    ListServiceRooms,
    ListServices,
    RestoreRoom,
    RestoreService,
    RestoreServiceRoom,
    RoomPatch,
    RoomStats,
    RoomView,
    ServicePatch,
    ServiceRoomPatch,
    ServiceRoomView,
    ServiceStats,
    ServiceView,
    UpdateRoom,
    UpdateService,
    UpdateServiceRoom,
)
from edge.access import ADM, roles, staff
from edge.bus import if_match, send
from edge.queries import documented, parse_query

ROOMS, SERVICES, LINKS = ["rooms"], ["services"], ["service-rooms"]

# ---------------------------------------------------------------- rooms


@get("/rooms", operation_id="ListRooms", opt=staff(), tags=ROOMS, operation_class=documented(ListRooms),
     summary="Rooms; q (code, description), departmentId, type, status (derived), serviceId, isActive")
async def list_rooms(request: Request) -> Page[RoomView]:
    return await send(request, parse_query(request, ListRooms))  # type: ignore[return-value]


@get("/rooms/stats", operation_id="RoomStats", opt=roles(ADM), tags=ROOMS,
     summary="Live rooms by derived status, type and department")
async def room_stats(request: Request) -> RoomStats:
    return await send(request, GetRoomStats())  # type: ignore[return-value]


@get("/rooms/{room_id:uuid}", operation_id="GetRoom", opt=staff(), tags=ROOMS,
     summary="One room with its on-duty count")
async def get_room(request: Request, room_id: UUID) -> RoomView:
    return await send(request, GetRoom(id=room_id), etag=True)  # type: ignore[return-value]


@post("/rooms", operation_id="CreateRoom", opt=roles(ADM), tags=ROOMS, summary="Create a room")
async def create_room(request: Request, data: CreateRoom) -> RoomView:
    return await send(request, data, status=201, location="/rooms", etag=True)  # type: ignore[return-value]


@patch("/rooms/{room_id:uuid}", operation_id="UpdateRoom", opt=roles(ADM), tags=ROOMS,
       summary="Change a room (merge patch); status may be set to available or maintenance")
async def update_room(request: Request, room_id: UUID, data: RoomPatch) -> RoomView:
    cmd = UpdateRoom(id=room_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/rooms/{room_id:uuid}", operation_id="DeleteRoom", opt=roles(ADM), tags=ROOMS,
        summary="Soft-delete; refused (409 in_use) while live service links or future schedules point at it")
async def delete_room(request: Request, room_id: UUID) -> None:
    await send(request, DeleteRoom(id=room_id, if_match=if_match(request)), empty=True)


@post("/rooms/{room_id:uuid}/restore", operation_id="RestoreRoom", opt=roles(ADM), tags=ROOMS,
      status_code=200, summary="Restore a deleted room")
async def restore_room(request: Request, room_id: UUID) -> RoomView:
    cmd = RestoreRoom(id=room_id, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


# ---------------------------------------------------------------- services


@get("/services", operation_id="ListServices", opt=staff(), tags=SERVICES,
     operation_class=documented(ListServices), summary="Services; q (code, name), isActive")
async def list_services(request: Request) -> Page[ServiceView]:
    return await send(request, parse_query(request, ListServices))  # type: ignore[return-value]


@get("/services/stats", operation_id="ServiceStats", opt=roles(ADM), tags=SERVICES,
     summary="Services by state, live rooms per service")
async def service_stats(request: Request) -> ServiceStats:
    return await send(request, GetServiceStats())  # type: ignore[return-value]


@get("/services/{service_id:uuid}", operation_id="GetService", opt=staff(), tags=SERVICES, summary="One service")
async def get_service(request: Request, service_id: UUID) -> ServiceView:
    return await send(request, GetService(id=service_id), etag=True)  # type: ignore[return-value]


@post("/services", operation_id="CreateService", opt=roles(ADM), tags=SERVICES, summary="Create a service")
async def create_service(request: Request, data: CreateService) -> ServiceView:
    return await send(request, data, status=201, location="/services", etag=True)  # type: ignore[return-value]


@patch("/services/{service_id:uuid}", operation_id="UpdateService", opt=roles(ADM), tags=SERVICES,
       summary="Change a service (merge patch)")
async def update_service(request: Request, service_id: UUID, data: ServicePatch) -> ServiceView:
    cmd = UpdateService(id=service_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/services/{service_id:uuid}", operation_id="DeleteService", opt=roles(ADM), tags=SERVICES,
        summary="Soft-delete; refused (409 in_use) while live service-room links point at it")
async def delete_service(request: Request, service_id: UUID) -> None:
    await send(request, DeleteService(id=service_id, if_match=if_match(request)), empty=True)


@post("/services/{service_id:uuid}/restore", operation_id="RestoreService", opt=roles(ADM), tags=SERVICES,
      status_code=200, summary="Restore a deleted service")
async def restore_service(request: Request, service_id: UUID) -> ServiceView:
    cmd = RestoreService(id=service_id, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


# ---------------------------------------------------------------- service-room links


@get("/service-rooms", operation_id="ListServiceRooms", opt=staff(), tags=LINKS,
     operation_class=documented(ListServiceRooms),
     summary="Which service is offered in which room; serviceId, roomId, departmentId, isActive")
async def list_service_rooms(request: Request) -> Page[ServiceRoomView]:
    return await send(request, parse_query(request, ListServiceRooms))  # type: ignore[return-value]


@get("/service-rooms/{link_id:uuid}", operation_id="GetServiceRoom", opt=staff(), tags=LINKS,
     summary="One service-room link with its service and room")
async def get_service_room(request: Request, link_id: UUID) -> ServiceRoomView:
    return await send(request, GetServiceRoom(id=link_id), etag=True)  # type: ignore[return-value]


@post("/service-rooms", operation_id="CreateServiceRoom", opt=roles(ADM), tags=LINKS,
      summary="Offer a service in a room")
async def create_service_room(request: Request, data: CreateServiceRoom) -> ServiceRoomView:
    return await send(request, data, status=201, location="/service-rooms", etag=True)  # type: ignore[return-value]


@patch("/service-rooms/{link_id:uuid}", operation_id="UpdateServiceRoom", opt=roles(ADM), tags=LINKS,
       summary="Change a link's isActive or notes (merge patch)")
async def update_service_room(request: Request, link_id: UUID, data: ServiceRoomPatch) -> ServiceRoomView:
    cmd = UpdateServiceRoom(id=link_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/service-rooms/{link_id:uuid}", operation_id="DeleteServiceRoom", opt=roles(ADM), tags=LINKS,
        summary="Soft-delete a service-room link")
async def delete_service_room(request: Request, link_id: UUID) -> None:
    await send(request, DeleteServiceRoom(id=link_id, if_match=if_match(request)), empty=True)


@post("/service-rooms/{link_id:uuid}/restore", operation_id="RestoreServiceRoom", opt=roles(ADM), tags=LINKS,
      status_code=200, summary="Restore a deleted service-room link")
async def restore_service_room(request: Request, link_id: UUID) -> ServiceRoomView:
    cmd = RestoreServiceRoom(id=link_id, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


ROUTES = [
    list_rooms, room_stats, get_room, create_room, update_room, delete_room, restore_room,
    list_services, service_stats, get_service, create_service, update_service, delete_service, restore_service,
    list_service_rooms, get_service_room, create_service_room, update_service_room, delete_service_room,
    restore_service_room,
]
