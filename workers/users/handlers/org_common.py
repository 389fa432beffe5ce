"""Shared by the organisation handlers (rooms, services, service-room links): the derived room
status in SQL, search expressions, row → view, events, row locks and reference checks.

`room_event(RoomUpdated, row)` is also what the scheduling side uses when it changes a room's
on-duty count (the event carries the derived status and `onDutyCount`)."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import ColumnElement, Select, case, literal_column, select
from sqlalchemy.exc import IntegrityError

from contracts.common import Role
from contracts.errors import (
    BadRequest,
    Conflict,
    NotFound,
    invalid_field,
    reference_error,
)
from contracts.organisation import (
    DepartmentRef,
    RoomEventBase,
    RoomStatus,
    RoomSummary,
    RoomType,
    RoomView,
    ServiceEventBase,
    ServiceRoomEventBase,
    ServiceRoomView,
    ServiceSummary,
    ServiceView,
    room_status,
)
from workers.runtime.db import constraint_of
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.tables import departments, rooms, service_rooms, services

# What a room reads as (contracts.organisation.room_status, in SQL so lists can filter on it).
ROOM_STATUS: ColumnElement[str] = case(
    (rooms.c.status == RoomStatus.MAINTENANCE.value, RoomStatus.MAINTENANCE.value),
    (rooms.c.on_duty_count >= rooms.c.capacity, RoomStatus.OCCUPIED.value),
    else_=RoomStatus.AVAILABLE.value,
)

# The exact expressions of the trigram indexes of migration 0004, so the planner uses them.
ROOM_SEARCH = literal_column(
    "public.f_unaccent(lower(users.rooms.code || ' ' || coalesce(users.rooms.description, '')))"
)
SERVICE_SEARCH = literal_column("public.f_unaccent(lower(users.services.code || ' ' || users.services.name))")

MAX_PRICE = Decimal("99999999.99")  # numeric(10, 2)
CENT = Decimal("0.01")

# ---------------------------------------------------------------- rows → views


def room_select() -> Select[Any]:
    """Rooms with their department (id, code, name) for `room_view`."""
    return select(
        rooms, departments.c.code.label("department_code"), departments.c.name.label("department_name"),
    ).select_from(rooms.join(departments, departments.c.id == rooms.c.department_id))


def room_view(row: Any, *, detail: bool = False, department: Any = None) -> RoomView:
    """`row` from `room_select()`, or a plain rooms row with its `department` row."""
    code, name = (department.code, department.name) if department is not None else (
        row.department_code, row.department_name)
    return RoomView(
        id=row.id, code=row.code, type=RoomType(row.type), department_id=row.department_id,
        department=DepartmentRef(id=row.department_id, code=code, name=name),
        floor=row.floor, capacity=row.capacity, price_per_day=row.price_per_day,
        status=room_status(row.status, row.on_duty_count, row.capacity), amenities=list(row.amenities),
        description=row.description, notes=row.notes, is_active=row.is_active, created_at=row.created_at,
        updated_at=row.updated_at, deleted_at=row.deleted_at, version=row.version,
        on_duty_count=row.on_duty_count if detail else None,
    )


def service_view(row: Any) -> ServiceView:
    return ServiceView(
        id=row.id, code=row.code, name=row.name, description=row.description, is_active=row.is_active,
        created_at=row.created_at, updated_at=row.updated_at, deleted_at=row.deleted_at, version=row.version,
    )


SERVICE_ALIAS = _sv = services.alias("sv")  # the link's service and room, by alias (sortable, filterable)
ROOM_ALIAS = _rm = rooms.alias("rm")


def service_room_select() -> Select[Any]:
    """Links with the service and room summaries `service_room_view` embeds."""
    return select(
        service_rooms,
        _sv.c.code.label("s_code"), _sv.c.name.label("s_name"), _sv.c.is_active.label("s_active"),
        _sv.c.deleted_at.label("s_deleted"),
        _rm.c.code.label("r_code"), _rm.c.type.label("r_type"), _rm.c.department_id.label("r_department"),
        _rm.c.floor.label("r_floor"), _rm.c.status.label("r_status"), _rm.c.on_duty_count.label("r_on_duty"),
        _rm.c.capacity.label("r_capacity"), _rm.c.is_active.label("r_active"), _rm.c.deleted_at.label("r_deleted"),
    ).select_from(
        service_rooms.join(_sv, _sv.c.id == service_rooms.c.service_id).join(_rm, _rm.c.id == service_rooms.c.room_id)
    )


def service_room_view(row: Any) -> ServiceRoomView:
    return ServiceRoomView(
        id=row.id, service_id=row.service_id, room_id=row.room_id, is_active=row.is_active, notes=row.notes,
        service=ServiceSummary(id=row.service_id, code=row.s_code, name=row.s_name, is_active=row.s_active,
                               deleted_at=row.s_deleted),
        room=RoomSummary(id=row.room_id, code=row.r_code, type=RoomType(row.r_type), department_id=row.r_department,
                         floor=row.r_floor, status=room_status(row.r_status, row.r_on_duty, row.r_capacity),
                         is_active=row.r_active, deleted_at=row.r_deleted),
        created_at=row.created_at, updated_at=row.updated_at, deleted_at=row.deleted_at, version=row.version,
    )


# ---------------------------------------------------------------- events


def room_event(kind: type[RoomEventBase], row: Any) -> RoomEventBase:
    """The event of a change of `row` (a full `users.rooms` row, after the change)."""
    return kind(
        room_id=row.id, code=row.code, type=RoomType(row.type), department_id=row.department_id,
        status=room_status(row.status, row.on_duty_count, row.capacity), capacity=row.capacity,
        on_duty_count=row.on_duty_count, is_active=row.is_active, version=row.version,
    )


def service_event(kind: type[ServiceEventBase], row: Any) -> ServiceEventBase:
    return kind(service_id=row.id, code=row.code, name=row.name, is_active=row.is_active, version=row.version)


def service_room_event(kind: type[ServiceRoomEventBase], row: Any) -> ServiceRoomEventBase:
    return kind(service_room_id=row.id, service_id=row.service_id, room_id=row.room_id, is_active=row.is_active,
                version=row.version)


# ---------------------------------------------------------------- checks


def admin_filter(include_deleted: bool, uow: UnitOfWork) -> None:
    """`includeDeleted` is for administrators (spec README §4), as on /departments."""
    if include_deleted and uow.actor.role != Role.SYSTEM_ADMIN:
        raise BadRequest("includeDeleted is for administrators", code="forbidden_filter", field="includeDeleted")


def unique_conflict(exc: IntegrityError, fields: dict[str, str], detail: str) -> Conflict:
    """409 already_exists naming the field of the violated unique index; anything else re-raised."""
    field = fields.get(constraint_of(exc) or "")
    if field is None:
        raise exc
    return Conflict(detail.format(field=field), code="already_exists", field=field)


def not_deleted_conflict(entity: str) -> Conflict:
    return Conflict(f"the {entity} is not deleted", code="invalid_transition", currentState="live",
                    targetState="restored")


async def locked(uow: UnitOfWork, table: Any, ident: UUID, entity: str, *, live: bool = True) -> Any:
    """The row, locked for this change; 404 when missing (or deleted, with `live`)."""
    stmt = select(table).where(table.c.id == ident).with_for_update()
    if live:
        stmt = stmt.where(table.c.deleted_at.is_(None))
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no such {entity}")
    return row


async def live_parent(uow: UnitOfWork, table: Any, ident: UUID, field: str, entity: str) -> Any:
    """On restore: what the record points at must still be live (409 reference_deleted), share-locked."""
    row = (
        await uow.conn.execute(
            select(table).where(table.c.id == ident, table.c.deleted_at.is_(None)).with_for_update(read=True)
        )
    ).first()
    if row is None:
        raise Conflict(f"the {entity} is deleted; restore it first", code="reference_deleted", field=field)
    return row


async def usable_reference(uow: UnitOfWork, table: Any, ident: UUID, field: str, entity: str,
                           *, active: bool = True) -> Any:
    """A body reference: the row must be live (422 invalid_reference) and, with `active`, active
    (422 inactive_reference). The row is share-locked until commit, so a concurrent delete of it
    (which takes FOR UPDATE and then counts what points at it) waits and sees this reference."""
    row = (
        await uow.conn.execute(
            select(table).where(table.c.id == ident, table.c.deleted_at.is_(None)).with_for_update(read=True)
        )
    ).first()
    if row is None:
        raise reference_error(field, "invalid_reference", f"no such {entity}")
    if active and not row.is_active:
        raise reference_error(field, "inactive_reference", f"the {entity} is not active")
    return row


def check_price(price: Decimal | None) -> None:
    if price is None:
        return
    if not price.is_finite():
        raise invalid_field("pricePerDay", "invalid_format", "pricePerDay must be a number")
    if price < 0 or price > MAX_PRICE:
        raise invalid_field("pricePerDay", "out_of_range", f"pricePerDay must be between 0 and {MAX_PRICE}")
    if price != price.quantize(CENT):
        raise invalid_field("pricePerDay", "invalid_format", "pricePerDay has at most 2 decimals")


def check_amenities(amenities: list[Any]) -> None:
    seen: set[Any] = set()
    for index, amenity in enumerate(amenities):
        if amenity in seen:
            raise invalid_field(f"amenities/{index}", "duplicate", f"{amenity} is listed twice")
        seen.add(amenity)


def plain(value: Any) -> Any:
    """Enum members (and lists of them) as the plain strings the columns hold."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.value if isinstance(value, enum.Enum) else value


def merge_patch(row: Any, patch: Any) -> dict[str, Any]:
    """The fields a merge patch sets (absent = unchanged) whose value differs from the row's."""
    given = {k: plain(v) for k, v in msgspec.structs.asdict(patch).items() if v is not msgspec.UNSET}
    return {k: v for k, v in given.items() if getattr(row, k) != v}
