"""Services (what the hospital offers: CT scan, X-ray, …): CRUD with soft delete and stats."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page
from contracts.errors import Conflict, NotFound, check_version
from contracts.organisation import (
    CreateService,
    DeleteService,
    GetService,
    GetServiceStats,
    ListServices,
    RestoreService,
    ServiceCreated,
    ServiceDeleted,
    ServiceRestored,
    ServiceStats,
    ServiceUpdated,
    ServiceView,
    UpdateService,
)
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.org_common import (
    SERVICE_SEARCH,
    admin_filter,
    locked,
    merge_patch,
    not_deleted_conflict,
    service_event,
    service_view,
    unique_conflict,
)
from workers.users.queries import camel
from workers.users.tables import rooms, service_rooms, services

_SORT = {"code": services.c.code, "name": services.c.name, "createdAt": services.c.created_at}
_UNIQUE = {"uq_services_code": "code", "uq_services_name": "name"}
_TAKEN = "a live service already has this {field}"


async def _view(uow: UnitOfWork, service_id: Any) -> ServiceView:
    row = (
        await uow.conn.execute(select(services).where(services.c.id == service_id, services.c.deleted_at.is_(None)))
    ).first()
    if row is None:
        raise NotFound("no such service")
    return service_view(row)


@registry.handles(ListServices)
async def list_services(q: ListServices, uow: UnitOfWork) -> Page[ServiceView]:
    admin_filter(q.include_deleted, uow)
    stmt = select(services)
    if not q.include_deleted:
        stmt = stmt.where(services.c.deleted_at.is_(None))
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(SERVICE_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(SERVICE_SEARCH)))
    if q.is_active is not None:
        stmt = stmt.where(services.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", services.c.id)
    return Page(items=[service_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetService)
async def get_service(q: GetService, uow: UnitOfWork) -> ServiceView:
    return await _view(uow, q.id)


@registry.handles(GetServiceStats)
async def service_stats(q: GetServiceStats, uow: UnitOfWork) -> ServiceStats:
    live = services.c.deleted_at.is_(None)
    totals = (
        await uow.conn.execute(
            select(
                func.count().filter(live),
                func.count().filter(and_(live, services.c.is_active)),
                func.count().filter(and_(live, not_(services.c.is_active))),
                func.count().filter(not_(live)),
            )
        )
    ).one()
    # the rooms a service is offered in: live rooms through a live, active link (GET /rooms?serviceId=)
    link = and_(service_rooms.c.service_id == services.c.id, service_rooms.c.deleted_at.is_(None),
                service_rooms.c.is_active)
    per = (
        await uow.conn.execute(
            select(services.c.code, func.count(rooms.c.id))
            .select_from(services.outerjoin(service_rooms, link).outerjoin(
                rooms, and_(rooms.c.id == service_rooms.c.room_id, rooms.c.deleted_at.is_(None))))
            .where(live)
            .group_by(services.c.code)
        )
    ).all()
    return ServiceStats(total=totals[0], active=totals[1], inactive=totals[2], deleted=totals[3],
                        rooms_by_service=dict(per))


@registry.handles(CreateService)
async def create_service(cmd: CreateService, uow: UnitOfWork) -> ServiceView:
    try:
        row = (
            await uow.conn.execute(
                services.insert()
                .values(code=cmd.code, name=cmd.name, description=cmd.description,
                        created_at=uow.now, updated_at=uow.now)
                .returning(services)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(service_event(ServiceCreated, row))
    return service_view(row)


@registry.handles(UpdateService)
async def update_service(cmd: UpdateService, uow: UnitOfWork) -> ServiceView:
    row = await locked(uow, services, cmd.id, "service")
    check_version(row, cmd.if_match)
    changes = merge_patch(row, cmd.patch)
    if changes:
        try:
            row = (
                await uow.conn.execute(
                    update(services).where(services.c.id == cmd.id)
                    .values(**changes, updated_at=uow.now, version=services.c.version + 1)
                    .returning(services)
                )
            ).one()
        except IntegrityError as exc:
            raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
        uow.emit(service_event(ServiceUpdated, row))
        uow.target("service", row.id, changedFields=[camel(k) for k in changes])
    return service_view(row)


@registry.handles(DeleteService)
async def delete_service(cmd: DeleteService, uow: UnitOfWork) -> None:
    row = await locked(uow, services, cmd.id, "service")
    check_version(row, cmd.if_match)
    links = (
        await uow.conn.execute(
            select(func.count()).select_from(service_rooms)
            .where(service_rooms.c.service_id == cmd.id, service_rooms.c.deleted_at.is_(None))
        )
    ).scalar_one()
    if links:
        raise Conflict(f"{links} live service-room links point at this service", code="in_use", serviceRooms=links)
    row = (
        await uow.conn.execute(
            update(services).where(services.c.id == cmd.id)
            .values(deleted_at=uow.now, updated_at=uow.now, version=services.c.version + 1)
            .returning(services)
        )
    ).one()
    uow.emit(service_event(ServiceDeleted, row))
    return None


@registry.handles(RestoreService)
async def restore_service(cmd: RestoreService, uow: UnitOfWork) -> ServiceView:
    row = await locked(uow, services, cmd.id, "service", live=False)
    check_version(row, cmd.if_match)
    if row.deleted_at is None:
        raise not_deleted_conflict("service")
    try:
        row = (
            await uow.conn.execute(
                update(services).where(services.c.id == cmd.id)
                .values(deleted_at=None, updated_at=uow.now, version=services.c.version + 1)
                .returning(services)
            )
        ).one()
    except IntegrityError as exc:
        raise unique_conflict(exc, _UNIQUE, _TAKEN) from exc
    uow.emit(service_event(ServiceRestored, row))
    return service_view(row)
