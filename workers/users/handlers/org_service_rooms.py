"""Service-room links ("service S is offered in room R"): CRUD with soft delete, and
`users.get_service_room`, the bus query encounters use to check where a patient is sent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page
from contracts.errors import NotFound, check_version
from contracts.organisation import (
    CreateServiceRoom,
    DeleteServiceRoom,
    GetServiceRoom,
    ListServiceRooms,
    RestoreServiceRoom,
    ServiceRoomCreated,
    ServiceRoomDeleted,
    ServiceRoomRestored,
    ServiceRoomUpdated,
    ServiceRoomView,
    UpdateServiceRoom,
)
from workers.runtime.lists import fetch_page
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.org_common import (
    ROOM_ALIAS,
    SERVICE_ALIAS,
    admin_filter,
    live_parent,
    locked,
    merge_patch,
    not_deleted_conflict,
    service_room_event,
    service_room_select,
    service_room_view,
    unique_conflict,
    usable_reference,
)
from workers.users.queries import camel
from workers.users.tables import rooms, service_rooms, services

_SORT = {"createdAt": service_rooms.c.created_at, "serviceCode": SERVICE_ALIAS.c.code, "roomCode": ROOM_ALIAS.c.code}
_UNIQUE = {"uq_service_rooms_pair": "roomId"}
_TAKEN = "this service is already offered in this room (a live link exists)"


async def _view(uow: UnitOfWork, link_id: Any) -> ServiceRoomView:
    row = (
        await uow.conn.execute(
            service_room_select().where(service_rooms.c.id == link_id, service_rooms.c.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        raise NotFound("no such service-room link")
    return service_room_view(row)


async def _usable_pair(uow: UnitOfWork, service_id: Any, room_id: Any) -> None:
    """Both ends of a link that is (or becomes) active: live and active (422 otherwise)."""
    await usable_reference(uow, services, service_id, "serviceId", "service")
    await usable_reference(uow, rooms, room_id, "roomId", "room")


@registry.handles(ListServiceRooms)
async def list_service_rooms(q: ListServiceRooms, uow: UnitOfWork) -> Page[ServiceRoomView]:
    admin_filter(q.include_deleted, uow)
    stmt = service_room_select()
    if not q.include_deleted:
        stmt = stmt.where(service_rooms.c.deleted_at.is_(None))
    if q.service_id is not None:
        stmt = stmt.where(service_rooms.c.service_id == q.service_id)
    if q.room_id is not None:
        stmt = stmt.where(service_rooms.c.room_id == q.room_id)
    if q.department_id is not None:
        stmt = stmt.where(ROOM_ALIAS.c.department_id == q.department_id)
    if q.is_active is not None:
        stmt = stmt.where(service_rooms.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", service_rooms.c.id)
    return Page(items=[service_room_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetServiceRoom)
async def get_service_room(q: GetServiceRoom, uow: UnitOfWork) -> ServiceRoomView:
    return await _view(uow, q.id)


@registry.handles(CreateServiceRoom)
async def create_service_room(cmd: CreateServiceRoom, uow: UnitOfWork) -> ServiceRoomView:
    await _usable_pair(uow, cmd.service_id, cmd.room_id)
    try:
        row = (
            await uow.conn.execute(
                service_rooms.insert()
                .values(service_id=cmd.service_id, room_id=cmd.room_id, is_active=cmd.is_active, notes=cmd.notes,
                        created_at=uow.now, updated_at=uow.now)
                .returning(service_rooms)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(service_room_event(ServiceRoomCreated, row))
    return await _view(uow, row.id)


@registry.handles(UpdateServiceRoom)
async def update_service_room(cmd: UpdateServiceRoom, uow: UnitOfWork) -> ServiceRoomView:
    row = await locked(uow, service_rooms, cmd.id, "service-room link")
    check_version(row, cmd.if_match)
    changes = merge_patch(row, cmd.patch)
    if changes.get("is_active") is True:
        await _usable_pair(uow, row.service_id, row.room_id)
    if changes:
        row = (
            await uow.conn.execute(
                update(service_rooms).where(service_rooms.c.id == cmd.id)
                .values(**changes, updated_at=uow.now, version=service_rooms.c.version + 1)
                .returning(service_rooms)
            )
        ).one()
        uow.emit(service_room_event(ServiceRoomUpdated, row))
        uow.target("service_room", row.id, changedFields=[camel(k) for k in changes])
    return await _view(uow, row.id)


@registry.handles(DeleteServiceRoom)
async def delete_service_room(cmd: DeleteServiceRoom, uow: UnitOfWork) -> None:
    row = await locked(uow, service_rooms, cmd.id, "service-room link")
    check_version(row, cmd.if_match)
    row = (
        await uow.conn.execute(
            update(service_rooms).where(service_rooms.c.id == cmd.id)
            .values(deleted_at=uow.now, updated_at=uow.now, version=service_rooms.c.version + 1)
            .returning(service_rooms)
        )
    ).one()
    uow.emit(service_room_event(ServiceRoomDeleted, row))
    return None


@registry.handles(RestoreServiceRoom)
async def restore_service_room(cmd: RestoreServiceRoom, uow: UnitOfWork) -> ServiceRoomView:
    row = await locked(uow, service_rooms, cmd.id, "service-room link", live=False)
    check_version(row, cmd.if_match)
    if row.deleted_at is None:
        raise not_deleted_conflict("service-room link")
    await live_parent(uow, services, row.service_id, "serviceId", "service")
    await live_parent(uow, rooms, row.room_id, "roomId", "room")
    try:
        row = (
            await uow.conn.execute(
                update(service_rooms).where(service_rooms.c.id == cmd.id)
                .values(deleted_at=None, updated_at=uow.now, version=service_rooms.c.version + 1)
                .returning(service_rooms)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(service_room_event(ServiceRoomRestored, row))
    return await _view(uow, row.id)
