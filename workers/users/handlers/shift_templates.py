"""Shift templates (users.md §2): CRUD with soft delete, duplicate. Running a template (create
schedules, apply to employees) is in `schedule_batch`."""

from __future__ import annotations

from datetime import time
from typing import Any

import msgspec
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from contracts.common import Page, Role
from contracts.errors import BadRequest, Conflict, FieldError, NotFound, check_version
from contracts.scheduling import (
    CreateShiftTemplate,
    DeleteShiftTemplate,
    DuplicateShiftTemplate,
    GetShiftTemplate,
    ListShiftTemplates,
    RestoreShiftTemplate,
    ShiftTemplateCreated,
    ShiftTemplateDeleted,
    ShiftTemplateRestored,
    ShiftTemplateUpdated,
    ShiftTemplateView,
    UpdateShiftTemplate,
)
from workers.runtime.db import constraint_of
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.schedule_support import (
    field_errors,
    invalid_transition,
    parse_time,
    template_event,
    template_view,
)
from workers.users.queries import camel
from workers.users.tables import shift_templates

_t = shift_templates
_SORT = {"name": func.lower(_t.c.name), "startTime": _t.c.start_time, "createdAt": _t.c.created_at}
_SEARCH = func.public.f_unaccent(func.lower(_t.c.name + " " + func.coalesce(_t.c.description, "")))


def _name_taken(exc: IntegrityError) -> Conflict:
    if constraint_of(exc) != "uq_shift_templates_name":
        raise exc
    return Conflict("a live shift template already has this name", code="already_exists", field="name")


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def check_template_times(start: time, end: time, break_start: time | None, break_end: time | None) -> None:
    """Start and end differ (end ≤ start = ends the next day); a break has both ends or neither and
    lies inside the shift (users.md §2)."""
    errors: list[FieldError] = []
    if start == end:
        errors.append(FieldError("endTime", "invalid_time_range", "endTime must differ from startTime"))
    if (break_start is None) != (break_end is None):
        missing = "breakEndTime" if break_end is None else "breakStartTime"
        errors.append(FieldError(missing, "required", "breakStartTime and breakEndTime go together"))
    if not errors and break_start is not None and break_end is not None:
        day = 24 * 3600
        length = (_seconds(end) - _seconds(start)) % day or day
        b_start = (_seconds(break_start) - _seconds(start)) % day
        b_end = (_seconds(break_end) - _seconds(start)) % day
        if not (0 <= b_start < b_end <= length):
            errors.append(FieldError("breakStartTime", "break_outside_shift",
                                     "the break must start and end inside the shift, start before end"))
    if errors:
        raise field_errors(errors)


async def _locked(uow: UnitOfWork, template_id: Any, *, live: bool = True) -> Any:
    stmt = select(_t).where(_t.c.id == template_id).with_for_update()
    if live:
        stmt = stmt.where(_t.c.deleted_at.is_(None))
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such shift template")
    return row


@registry.handles(ListShiftTemplates)
async def list_shift_templates(q: ListShiftTemplates, uow: UnitOfWork) -> Page[ShiftTemplateView]:
    if q.include_deleted and uow.actor.role != Role.SYSTEM_ADMIN:
        raise BadRequest("includeDeleted is for administrators", code="forbidden_filter", field="includeDeleted")
    stmt = select(_t)
    if not q.include_deleted:
        stmt = stmt.where(_t.c.deleted_at.is_(None))
    if q.q:
        text = q.q.strip().lower()
        stmt = stmt.where(or_(_SEARCH.like(func.public.f_unaccent(like_pattern(text))),
                              func.public.f_unaccent(text).op("<%")(_SEARCH)))
    if q.shift_type:
        stmt = stmt.where(_t.c.shift_type.in_([s.value for s in q.shift_type]))
    if q.is_active is not None:
        stmt = stmt.where(_t.c.is_active.is_(q.is_active))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", _t.c.id)
    return Page(items=[template_view(r) for r in rows], total=total, page=q.page, limit=q.limit,
                total_is_lower_bound=lower)


@registry.handles(GetShiftTemplate)
async def get_shift_template(q: GetShiftTemplate, uow: UnitOfWork) -> ShiftTemplateView:
    stmt = select(_t).where(_t.c.id == q.id)
    if uow.actor.role != Role.SYSTEM_ADMIN:
        stmt = stmt.where(_t.c.deleted_at.is_(None))
    row = (await uow.conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such shift template")
    return template_view(row)


async def _insert(uow: UnitOfWork, values: dict[str, Any]) -> ShiftTemplateView:
    try:
        row = (await uow.conn.execute(
            _t.insert().values(**values, created_at=uow.now, updated_at=uow.now).returning(_t)
        )).one()
    except IntegrityError as exc:
        raise _name_taken(exc) from exc
    uow.emit(template_event(ShiftTemplateCreated, row))
    return template_view(row)


@registry.handles(CreateShiftTemplate)
async def create_shift_template(cmd: CreateShiftTemplate, uow: UnitOfWork) -> ShiftTemplateView:
    start, end = parse_time(cmd.start_time), parse_time(cmd.end_time)
    b_start = parse_time(cmd.break_start_time) if cmd.break_start_time else None
    b_end = parse_time(cmd.break_end_time) if cmd.break_end_time else None
    check_template_times(start, end, b_start, b_end)
    return await _insert(uow, {"name": cmd.name.strip(), "shift_type": cmd.shift_type.value, "start_time": start,
                               "end_time": end, "break_start_time": b_start, "break_end_time": b_end,
                               "description": cmd.description, "is_active": cmd.is_active})


@registry.handles(UpdateShiftTemplate)
async def update_shift_template(cmd: UpdateShiftTemplate, uow: UnitOfWork) -> ShiftTemplateView:
    row = await _locked(uow, cmd.id)
    check_version(row, cmd.if_match)
    patch = {k: v for k, v in msgspec.structs.asdict(cmd.patch).items() if v is not msgspec.UNSET}
    for key in ("start_time", "end_time", "break_start_time", "break_end_time"):
        if isinstance(patch.get(key), str):
            patch[key] = parse_time(patch[key])
    if "shift_type" in patch:
        patch["shift_type"] = patch["shift_type"].value
    if "name" in patch:
        patch["name"] = patch["name"].strip()
    merged = {k: patch.get(k, getattr(row, k)) for k in ("start_time", "end_time", "break_start_time",
                                                          "break_end_time")}
    check_template_times(merged["start_time"], merged["end_time"], merged["break_start_time"],
                         merged["break_end_time"])
    changed = [k for k, v in patch.items() if getattr(row, k) != v]
    if changed:
        try:
            row = (await uow.conn.execute(
                update(_t).where(_t.c.id == cmd.id)
                .values(**{k: patch[k] for k in changed}, updated_at=uow.now, version=_t.c.version + 1)
                .returning(_t)
            )).one()
        except IntegrityError as exc:
            raise _name_taken(exc) from exc
        uow.emit(template_event(ShiftTemplateUpdated, row))
        uow.target("shift_template", row.id, changedFields=[camel(k) for k in changed])
    return template_view(row)


@registry.handles(DeleteShiftTemplate)
async def delete_shift_template(cmd: DeleteShiftTemplate, uow: UnitOfWork) -> None:
    row = await _locked(uow, cmd.id)
    check_version(row, cmd.if_match)
    row = (await uow.conn.execute(
        update(_t).where(_t.c.id == cmd.id)
        .values(deleted_at=uow.now, updated_at=uow.now, version=_t.c.version + 1).returning(_t)
    )).one()
    uow.emit(template_event(ShiftTemplateDeleted, row))
    return None


@registry.handles(RestoreShiftTemplate)
async def restore_shift_template(cmd: RestoreShiftTemplate, uow: UnitOfWork) -> ShiftTemplateView:
    row = await _locked(uow, cmd.id, live=False)
    if row.deleted_at is None:
        raise invalid_transition("live", "restored", "the shift template is not deleted")
    try:
        row = (await uow.conn.execute(
            update(_t).where(_t.c.id == cmd.id)
            .values(deleted_at=None, updated_at=uow.now, version=_t.c.version + 1).returning(_t)
        )).one()
    except IntegrityError as exc:
        raise _name_taken(exc) from exc
    uow.emit(template_event(ShiftTemplateRestored, row))
    return template_view(row)


@registry.handles(DuplicateShiftTemplate)
async def duplicate_shift_template(cmd: DuplicateShiftTemplate, uow: UnitOfWork) -> ShiftTemplateView:
    source = (await uow.conn.execute(select(_t).where(_t.c.id == cmd.id, _t.c.deleted_at.is_(None)))).first()
    if source is None:
        raise NotFound("no such shift template")
    view = await _insert(uow, {"name": cmd.name.strip(), "shift_type": source.shift_type,
                               "start_time": source.start_time, "end_time": source.end_time,
                               "break_start_time": source.break_start_time, "break_end_time": source.break_end_time,
                               "description": source.description, "is_active": source.is_active})
    uow.target("shift_template", view.id, duplicatedFrom=str(source.id))
    return view
