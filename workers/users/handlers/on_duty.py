"""Who is on duty (users.md §6), and the timer that moves schedules along (§5, §8).

Employee E is on duty in room R at instant t iff E is live and active and holds an active
assignment to a schedule of R that is `scheduled` or `in_progress` with `startsAt ≤ t < endsAt`.
The lookup is one range probe of the gist index `ix_assignments_room_now` (room, tstzrange) —
absolute instants, so shifts across midnight need nothing special.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BindParameter, DateTime, bindparam, literal, select, text, update
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import Page, Role, UserRef
from contracts.errors import NotFound
from contracts.scheduling import (
    AdvanceResult,
    AdvanceRoomSchedules,
    AssignmentView,
    ListOnDuty,
    ListOnDutyMany,
    OnDutyView,
    RoomOnDuty,
    RoomScheduleCompleted,
    RoomScheduleStarted,
    ScheduleStatus,
)
from contracts.settings import SettingsError, get_settings
from workers.runtime.lists import order_by
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.schedule_support import (
    OPEN,
    assignment_select,
    assignment_view,
    on_duty_view,
    refresh_stale_rooms,
    schedule_event,
    tstzrange,
)
from workers.users.queries import display_name
from workers.users.tables import assignments, room_schedules, rooms, users

_a, _s, _r, _u = assignments, room_schedules, rooms, users
ADVANCE_LOCK_KEY = 0x5C_4E_D0_01  # pg_try_advisory_xact_lock key of advance_room_schedules (README §9)
ADVANCE_BATCH = 5000  # transitions per step and run; a backlog drains over the next runs
_SORT = {"lastName": _u.c.last_name, "startsAt": _a.c.starts_at}


def _at(value: datetime) -> Any:
    return literal(value, DateTime(timezone=True))


def on_duty_where(stmt: Any, room_id: Any, at: Any, roles: tuple[str, ...] | None) -> Any:
    """The §6 predicate, written so the planner answers it from `ix_assignments_room_now`."""
    at_value = at if isinstance(at, BindParameter) else _at(at)
    stmt = stmt.where(_a.c.room_id == room_id, _a.c.is_active, tstzrange(_a).op("@>")(at_value),
                      _s.c.status.in_(OPEN), _u.c.deleted_at.is_(None), _u.c.is_active)
    if roles:
        stmt = stmt.where(_u.c.role.in_(list(roles)))
    return stmt


# The hottest query of the worker (every new encounter asks it, and every queue screen): its
# statements are built once per role filter and sort, with the room and the instant as parameters.
_ROOM = bindparam("room_id", type_=PgUUID(as_uuid=True))
_AT = bindparam("at", type_=DateTime(timezone=True))


@functools.cache
def _refs_statement(roles: tuple[str, ...] | None) -> Any:
    stmt = (select(_a.c.employee_id, _u.c.first_name, _u.c.last_name, _u.c.role)
            .select_from(_a.join(_s, _s.c.id == _a.c.room_schedule_id).join(_u, _u.c.id == _a.c.employee_id))
            .order_by(_u.c.last_name, _u.c.first_name, _a.c.employee_id))
    return on_duty_where(stmt, _ROOM, _AT, roles)


@functools.cache
def _page_statement(roles: tuple[str, ...] | None, sort: tuple[str, ...]) -> Any:
    stmt = on_duty_where(assignment_select(), _ROOM, _AT, roles)
    return stmt.order_by(*order_by(list(sort), _SORT, "lastName", _a.c.id))


def _roles(roles: list[Role] | None) -> tuple[str, ...] | None:
    return tuple(sorted(r.value for r in roles)) if roles else None


async def _room_exists(conn: AsyncConnection, room_id: UUID) -> None:
    found = (await conn.execute(select(_r.c.id).where(_r.c.id == room_id, _r.c.deleted_at.is_(None)))).first()
    if found is None:
        raise NotFound("no such room")


@registry.handles(ListOnDuty)
async def list_on_duty(q: ListOnDuty, uow: UnitOfWork) -> list[UserRef]:
    rows = (await uow.conn.execute(_refs_statement(_roles(q.roles)),
                                   {"room_id": q.room_id, "at": q.at or uow.now})).all()
    if not rows:
        await _room_exists(uow.conn, q.room_id)  # an unknown room is 404, not "nobody"
    return [UserRef(id=r.employee_id, display_name=display_name(r), role=Role(r.role)) for r in rows]


@registry.handles(ListOnDutyMany)
async def list_on_duty_many(q: ListOnDutyMany, uow: UnitOfWork) -> list[list[UserRef]]:
    """ListOnDuty for many (room, instant) pairs in one message; an unknown room is nobody here."""
    stmt = _refs_statement(_roles(q.roles))
    out: list[list[UserRef]] = []
    for item in q.items:
        rows = (await uow.conn.execute(stmt, {"room_id": item.room_id, "at": item.at})).all()
        out.append([UserRef(id=r.employee_id, display_name=display_name(r), role=Role(r.role)) for r in rows])
    return out


@registry.handles(RoomOnDuty)
async def room_on_duty(q: RoomOnDuty, uow: UnitOfWork) -> Page[OnDutyView]:
    """At most a room's capacity (≤ 100) are on duty: one query reads them all, paged here."""
    q.window_check()
    stmt = _page_statement(_roles(q.role), tuple(q.sort))
    rows = (await uow.conn.execute(stmt, {"room_id": q.id, "at": q.at or uow.now})).all()
    if not rows:
        await _room_exists(uow.conn, q.id)  # an unknown room is 404, not "nobody"
    start = (q.page - 1) * q.limit
    return Page(items=[on_duty_view(r) for r in rows[start:start + q.limit]], total=len(rows), page=q.page,
                limit=q.limit)


async def current_duty(conn: AsyncConnection, user_id: UUID, at: datetime) -> list[AssignmentView]:
    """The user's active assignments at `at` (schedule `scheduled`/`in_progress`, `startsAt ≤ at <
    endsAt`), each with its room and schedule: `currentDuty` of GET /auth/me and
    GET /employee-room-assignments/current. At most one, since an employee's active assignments
    never overlap."""
    stmt = (assignment_select()
            .where(_a.c.employee_id == user_id, _a.c.is_active, tstzrange(_a).op("@>")(_at(at)), _s.c.status.in_(OPEN))
            .order_by(_a.c.starts_at, _a.c.id))
    return [assignment_view(r) for r in (await conn.execute(stmt)).all()]


# ---------------------------------------------------------------- the timer


async def _step(uow: UnitOfWork, source: ScheduleStatus, target: ScheduleStatus, due: Any) -> list[Any]:
    """Move up to ADVANCE_BATCH due schedules from `source` to `target`. Rows a command holds are
    skipped (SKIP LOCKED) and picked up by the next run; a row whose state a command changed
    meanwhile no longer matches, so a run can never undo a cancel or an early end."""
    picked = (select(_s.c.id).where(_s.c.status == source.value, due <= uow.now).order_by(due)
              .limit(ADVANCE_BATCH).with_for_update(skip_locked=True))
    return list((await uow.conn.execute(
        update(_s).where(_s.c.id.in_(picked.scalar_subquery()), _s.c.status == source.value)
        .values(status=target.value, updated_at=uow.now, version=_s.c.version + 1).returning(_s)
    )).all())


async def advance(uow: UnitOfWork) -> AdvanceResult:
    """scheduled → in_progress at `startsAt`, in_progress → completed at `endsAt`, one event per
    step (a schedule whose start and end both passed unseen takes both steps in this run), then
    the occupancy of every room whose count is stale. Idempotent: a second run finds nothing due."""
    started = await _step(uow, ScheduleStatus.SCHEDULED, ScheduleStatus.IN_PROGRESS, _s.c.starts_at)
    for row in started:
        uow.emit(schedule_event(RoomScheduleStarted, row))
    completed = await _step(uow, ScheduleStatus.IN_PROGRESS, ScheduleStatus.COMPLETED, _s.c.ends_at)
    for row in completed:
        uow.emit(schedule_event(RoomScheduleCompleted, row))
    rooms_updated = await refresh_stale_rooms(uow)
    return AdvanceResult(started=len(started), completed=len(completed), rooms_updated=rooms_updated)


def _interval() -> float:
    try:
        return get_settings().room_schedule_job_interval
    except SettingsError:  # a process that does not run workers (a CLI step) may lack secrets
        return 60.0


@registry.job("advance_room_schedules", every=_interval(), lock_key=ADVANCE_LOCK_KEY)
async def advance_room_schedules_job(uow: UnitOfWork) -> None:
    await advance(uow)


@registry.handles(AdvanceRoomSchedules)
async def advance_room_schedules(cmd: AdvanceRoomSchedules, uow: UnitOfWork) -> AdvanceResult:
    """The same run on demand (bus only, e.g. from an operator's tool): it waits for a running timer."""
    await uow.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVANCE_LOCK_KEY})
    return await advance(uow)
