"""Rooms: CRUD with soft delete, the derived status (maintenance / occupied / available), stats,
and `users.get_room`, which other domains call over the bus."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page
from contracts.errors import Conflict, NotFound, check_version
from contracts.organisation import (
    CreateRoom,
    DeleteRoom,
    GetRoom,
    GetRoomStats,
    ListRooms,
    RestoreRoom,
    RoomCreated,
    RoomDeleted,
    RoomRestored,
    RoomStats,
    RoomStatus,
    RoomType,
    RoomUpdated,
    RoomView,
    UpdateRoom,
)
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.org_common import (
    ROOM_SEARCH,
    ROOM_STATUS,
    admin_filter,
    check_amenities,
    check_price,
    live_parent,
    locked,
    merge_patch,
    not_deleted_conflict,
    plain,
    room_event,
    room_select,
    room_view,
    unique_conflict,
    usable_reference,
)
from workers.users.queries import camel
from workers.users.tables import departments, room_schedules, rooms, service_rooms

_SORT = {"code": rooms.c.code, "floor": rooms.c.floor, "type": rooms.c.type, "createdAt": rooms.c.created_at}
_UNIQUE = {"uq_rooms_code": "code"}
_TAKEN = "a live room already has this {field}"
# A schedule still ahead (or running) keeps its room: it cannot be deleted under it.
_PENDING_SCHEDULE = ("scheduled", "in_progress")


async def _view(uow: UnitOfWork, room_id: Any) -> RoomView:
    row = (
        await uow.conn.execute(room_select().where(rooms.c.id == room_id, rooms.c.deleted_at.is_(None)))
    ).first()
    if row is None:
        raise NotFound("no such room")
    return room_view(row, detail=True)


@registry.handles(ListRooms)
async def list_rooms(q: ListRooms, uow: UnitOfWork) -> Page[RoomView]:
    admin_filter(q.include_deleted, uow)
    stmt = room_select()
    if not q.include_deleted:
        stmt = stmt.where(rooms.c.deleted_at.is_(None))
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(ROOM_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(ROOM_SEARCH)))
    if q.department_id is not None:
        stmt = stmt.where(rooms.c.department_id == q.department_id)
    if q.type:
        stmt = stmt.where(rooms.c.type.in_([t.value for t in q.type]))
    if q.status:
        stmt = stmt.where(ROOM_STATUS.in_([s.value for s in q.status]))
    if q.service_id is not None:
        stmt = stmt.where(exists().where(
            service_rooms.c.room_id == rooms.c.id, service_rooms.c.service_id == q.service_id,
            service_rooms.c.deleted_at.is_(None), service_rooms.c.is_active,
        ))
    if q.is_active is not None:
        stmt = stmt.where(rooms.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", rooms.c.id)
    return Page(items=[room_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetRoom)
async def get_room(q: GetRoom, uow: UnitOfWork) -> RoomView:
    return await _view(uow, q.id)


@registry.handles(GetRoomStats)
async def room_stats(q: GetRoomStats, uow: UnitOfWork) -> RoomStats:
    live = rooms.c.deleted_at.is_(None)
    totals = (
        await uow.conn.execute(
            select(
                func.count().filter(live),
                func.count().filter(and_(live, rooms.c.is_active)),
                func.count().filter(and_(live, not_(rooms.c.is_active))),
                func.count().filter(not_(live)),
            )
        )
    ).one()
    status = ROOM_STATUS.label("derived")
    by_status = dict((await uow.conn.execute(select(status, func.count()).where(live).group_by(status))).all())
    by_type = dict((await uow.conn.execute(select(rooms.c.type, func.count()).where(live)
                                           .group_by(rooms.c.type))).all())
    by_department = (
        await uow.conn.execute(
            select(departments.c.code, func.count(rooms.c.id))
            .select_from(departments.outerjoin(rooms, and_(rooms.c.department_id == departments.c.id, live)))
            .where(departments.c.deleted_at.is_(None))
            .group_by(departments.c.code)
        )
    ).all()
    return RoomStats(
        total=totals[0], active=totals[1], inactive=totals[2], deleted=totals[3],
        by_status={s.value: by_status.get(s.value, 0) for s in RoomStatus},
        by_type={t.value: by_type.get(t.value, 0) for t in RoomType},
        by_department=dict(by_department),
    )


@registry.handles(CreateRoom)
async def create_room(cmd: CreateRoom, uow: UnitOfWork) -> RoomView:
    check_price(cmd.price_per_day)
    check_amenities(cmd.amenities)
    department = await usable_reference(uow, departments, cmd.department_id, "departmentId", "department")
    try:
        row = (
            await uow.conn.execute(
                rooms.insert()
                .values(code=cmd.code, type=cmd.type.value, department_id=cmd.department_id, floor=cmd.floor,
                        capacity=cmd.capacity, price_per_day=cmd.price_per_day, status=cmd.status.value,
                        amenities=plain(cmd.amenities), description=cmd.description, notes=cmd.notes,
                        created_at=uow.now, updated_at=uow.now)
                .returning(rooms)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(room_event(RoomCreated, row))
    return room_view(row, detail=True, department=department)


@registry.handles(UpdateRoom)
async def update_room(cmd: UpdateRoom, uow: UnitOfWork) -> RoomView:
    row = await locked(uow, rooms, cmd.id, "room")
    check_version(row, cmd.if_match)
    if isinstance(cmd.patch.amenities, list):
        check_amenities(cmd.patch.amenities)
    if isinstance(cmd.patch.price_per_day, Decimal):
        check_price(cmd.patch.price_per_day)
    changes = merge_patch(row, cmd.patch)
    if "department_id" in changes:
        await usable_reference(uow, departments, changes["department_id"], "departmentId", "department")
    if changes:
        try:
            row = (
                await uow.conn.execute(
                    update(rooms).where(rooms.c.id == cmd.id)
                    .values(**changes, updated_at=uow.now, version=rooms.c.version + 1)
                    .returning(rooms)
                )
            ).one()
        except IntegrityError as exc:
            raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
        uow.emit(room_event(RoomUpdated, row))
        uow.target("room", row.id, changedFields=[camel(k) for k in changes])
    return await _view(uow, row.id)


@registry.handles(DeleteRoom)
async def delete_room(cmd: DeleteRoom, uow: UnitOfWork) -> None:
    row = await locked(uow, rooms, cmd.id, "room")
    check_version(row, cmd.if_match)
    links = (
        await uow.conn.execute(
            select(func.count()).select_from(service_rooms)
            .where(service_rooms.c.room_id == cmd.id, service_rooms.c.deleted_at.is_(None))
        )
    ).scalar_one()
    schedules = (
        await uow.conn.execute(
            select(func.count()).select_from(room_schedules)
            .where(room_schedules.c.room_id == cmd.id, room_schedules.c.status.in_(_PENDING_SCHEDULE),
                   room_schedules.c.ends_at > uow.now)
        )
    ).scalar_one()
    if links or schedules:
        raise Conflict(f"{links} live service links and {schedules} future schedules point at this room",
                       code="in_use", serviceRooms=links, schedules=schedules)
    row = (
        await uow.conn.execute(
            update(rooms).where(rooms.c.id == cmd.id)
            .values(deleted_at=uow.now, updated_at=uow.now, version=rooms.c.version + 1)
            .returning(rooms)
        )
    ).one()
    uow.emit(room_event(RoomDeleted, row))
    return None


@registry.handles(RestoreRoom)
async def restore_room(cmd: RestoreRoom, uow: UnitOfWork) -> RoomView:
    row = await locked(uow, rooms, cmd.id, "room", live=False)
    check_version(row, cmd.if_match)
    if row.deleted_at is None:
        raise not_deleted_conflict("room")
    await live_parent(uow, departments, row.department_id, "departmentId", "department")
    try:
        row = (
            await uow.conn.execute(
                update(rooms).where(rooms.c.id == cmd.id)
                .values(deleted_at=None, updated_at=uow.now, version=rooms.c.version + 1)
                .returning(rooms)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(room_event(RoomRestored, row))
    return await _view(uow, row.id)
