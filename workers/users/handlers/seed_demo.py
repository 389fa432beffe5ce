"""`users.seed_demo` (spec README §10): the users domain's demo data, built by calling the real
handlers in one transaction, so every rule applies and every normal event is published.

What it makes: one demo user per role (`demo.<role>@hospital.local`), three departments, rooms of
several types with their services and service-room links, the standard shift templates, and this
business week's schedules (Monday to Sunday in `CLINIC_TIMEZONE`, past days included, plus the night
shift that starts on the Sunday before, so Monday's small hours are staffed too). The demo staff are
put on duty so that CT-01 has someone on duty at every hour of the week (the radiologist 07:00–19:00,
the technician 19:00–07:00); the receptionist and the physician work the outpatient rooms by day.

Idempotent: each record is looked up by its natural key (e-mail or username, code, name, the
service-room pair, the shift's room and times) and only created when missing; an existing account
keeps its password. The result counts what was created, what already existed, and what could not
be made (e.g. a room an administrator put in maintenance). Concurrent runs queue on an advisory lock.

The password comes in the command (see contracts.demo); it is hashed by `create_user` and written
nowhere else: not in an event, a log line, the audit entry or the reply.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import func, or_, select, text, update

from contracts.common import Role
from contracts.demo import DemoAccount, SeedDemoResult, SeedDemoUsers, refuse_in_production
from contracts.organisation import CreateRoom, CreateService, CreateServiceRoom, RoomAmenity, RoomType
from contracts.scheduling import CreateShiftTemplate, GenerateRoomSchedules, ShiftType
from contracts.users import AssignDepartmentHead, CreateDepartment, CreateUser
from workers.runtime.unit_of_work import AuditTarget, UnitOfWork
from workers.users.handlers import registry
from workers.users.handlers.accounts import create_user
from workers.users.handlers.departments import assign_department_head, create_department
from workers.users.handlers.org_rooms import create_room
from workers.users.handlers.org_service_rooms import create_service_room
from workers.users.handlers.org_services import create_service
from workers.users.handlers.schedule_runs import generate_room_schedules
from workers.users.handlers.schedule_support import OPEN, business_today, clinic_zone
from workers.users.handlers.shift_templates import create_shift_template
from workers.users.tables import (
    assignments,
    departments,
    room_schedules,
    rooms,
    service_rooms,
    services,
    shift_templates,
    users,
)

SEED_LOCK = "users.seed_demo"  # pg_advisory_xact_lock(hashtext(...)): one run at a time
DEMO_MAIL_DOMAIN = "hospital.local"
KINDS = ("users", "departments", "rooms", "services", "serviceRooms", "shiftTemplates", "roomSchedules",
         "assignments")


@dataclass(frozen=True, slots=True)
class DemoUser:
    key: str
    username: str
    last_name: str
    role: Role
    department: str | None  # department code

    @property
    def email(self) -> str:
        return f"{self.username}@{DEMO_MAIL_DOMAIN}"


DEMO_USERS = (
    DemoUser("admin", "demo.admin", "Administrator", Role.SYSTEM_ADMIN, None),
    DemoUser("physician", "demo.physician", "Physician", Role.PHYSICIAN, "OPD"),
    DemoUser("radiologist", "demo.radiologist", "Radiologist", Role.RADIOLOGIST, "RAD"),
    DemoUser("technician", "demo.technician", "Technician", Role.IMAGING_TECHNICIAN, "RAD"),
    DemoUser("reception", "demo.reception", "Receptionist", Role.RECEPTION_STAFF, "OPD"),
)

# code, name, description, the demo user who heads it
DEPARTMENTS = (
    ("RAD", "Radiology", "Diagnostic imaging: CT, MRI, X-ray and ultrasound", "radiologist"),
    ("OPD", "Outpatient clinic", "Registration and outpatient consultations", "physician"),
    ("ER", "Emergency", "Emergency admissions and first imaging", None),
)

_A = RoomAmenity
# code, type, department, floor, capacity, amenities, description
ROOMS = (
    ("CT-01", RoomType.CT, "RAD", 1, 2, [_A.AIR_CONDITIONING, _A.OXYGEN_SUPPLY, _A.NURSE_CALL_BUTTON], "CT scanner"),
    ("MRI-01", RoomType.MRI, "RAD", 1, 2, [_A.AIR_CONDITIONING, _A.NURSE_CALL_BUTTON], "MRI scanner (1.5 T)"),
    ("XR-01", RoomType.X_RAY, "RAD", 1, 1, [_A.AIR_CONDITIONING, _A.WHEELCHAIR_ACCESSIBLE], "Digital radiography"),
    ("US-01", RoomType.ULTRASOUND, "RAD", 1, 1, [_A.AIR_CONDITIONING], "Ultrasound"),
    ("OPD-01", RoomType.GENERAL, "OPD", 0, 2, [_A.AIR_CONDITIONING, _A.TELEPHONE], "Consultation room"),
    ("OPD-02", RoomType.GENERAL, "OPD", 0, 3, [_A.WIFI, _A.TELEPHONE, _A.WHEELCHAIR_ACCESSIBLE], "Registration desk"),
    ("ER-01", RoomType.GENERAL, "ER", 0, 3, [_A.OXYGEN_SUPPLY, _A.NURSE_CALL_BUTTON], "Emergency treatment room"),
)

# code, name, the rooms that offer it
SERVICES = (
    ("CT", "CT scan", ("CT-01",)),
    ("MRI", "MRI scan", ("MRI-01",)),
    ("XR", "X-ray", ("XR-01",)),
    ("US", "Ultrasound", ("US-01",)),
    ("CONSULT", "Outpatient consultation", ("OPD-01", "ER-01")),
    ("REG", "Registration", ("OPD-02",)),
)

# name, type, start, end, break start, break end
SHIFT_TEMPLATES = (
    ("Morning", ShiftType.MORNING, "07:00", "13:00", None, None),
    ("Afternoon", ShiftType.AFTERNOON, "13:00", "19:00", None, None),
    ("Night", ShiftType.NIGHT, "19:00", "07:00", None, None),
    ("Full day", ShiftType.FULL_DAY, "08:00", "17:00", "12:00", "13:00"),
)

# template, rooms, demo users on those shifts (one room per entry that has staff: nobody is in two rooms at once)
ROTA: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Morning", ("CT-01",), ("radiologist",)),
    ("Afternoon", ("CT-01",), ("radiologist",)),
    ("Night", ("CT-01",), ("technician",)),
    ("Morning", ("OPD-02",), ("reception",)),
    ("Afternoon", ("OPD-02",), ("reception",)),
    ("Full day", ("OPD-01",), ("physician",)),
    ("Full day", ("MRI-01", "XR-01", "US-01", "ER-01"), ()),
)


class _Counts:
    def __init__(self) -> None:
        self.created = dict.fromkeys(KINDS, 0)
        self.existed = dict.fromkeys(KINDS, 0)
        self.skipped = dict.fromkeys(KINDS, 0)

    def add(self, kind: str, *, created: int = 0, existed: int = 0, skipped: int = 0) -> None:
        self.created[kind] += created
        self.existed[kind] += existed
        self.skipped[kind] += skipped


async def _first(uow: UnitOfWork, stmt: Any) -> Any:
    return (await uow.conn.execute(stmt.limit(1))).first()


async def _departments(uow: UnitOfWork, counts: _Counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, name, description, _ in DEPARTMENTS:
        row = await _first(uow, select(departments).where(departments.c.code == code,
                                                          departments.c.deleted_at.is_(None)))
        if row is None:
            view = await create_department(CreateDepartment(code=code, name=name, description=description), uow)
            out[code] = view.id
            counts.add("departments", created=1)
        else:
            out[code] = row.id
            counts.add("departments", existed=1)
    return out


async def _users(uow: UnitOfWork, cmd: SeedDemoUsers, department_ids: dict[str, UUID], counts: _Counts
                 ) -> tuple[dict[str, Any], list[DemoAccount]]:
    """The demo accounts, by key; an existing one (same e-mail or username) is left untouched."""
    password = cmd.password or secrets.token_urlsafe(24)  # generated: nobody learns it
    must_change = cmd.must_change_password or cmd.password is None
    found: dict[str, Any] = {}
    accounts: list[DemoAccount] = []
    for spec in DEMO_USERS:
        row = await _first(uow, select(users.c.id, users.c.email, users.c.username, users.c.role, users.c.is_active,
                                       users.c.department_id)
                           .where(or_(users.c.email == spec.email, users.c.username == spec.username),
                                  users.c.deleted_at.is_(None))
                           .order_by((users.c.email == spec.email).desc()))
        created = row is None
        if created:
            department_id = department_ids.get(spec.department) if spec.department else None
            view = await create_user(CreateUser(username=spec.username, email=spec.email, password=password,
                                                first_name="Demo", last_name=spec.last_name, role=spec.role,
                                                department_id=department_id), uow)
            if not must_change:  # a password the operator chose (DEMO_PASSWORD) need not be changed
                await uow.conn.execute(update(users).where(users.c.id == view.id).values(must_change_password=False))
            row = await _first(uow, select(users.c.id, users.c.email, users.c.username, users.c.role,
                                           users.c.is_active, users.c.department_id).where(users.c.id == view.id))
        counts.add("users", created=int(created), existed=int(not created))
        found[spec.key] = row
        accounts.append(DemoAccount(email=row.email, username=row.username, role=Role(row.role), created=created))
    return found, accounts


async def _heads(uow: UnitOfWork, department_ids: dict[str, UUID], people: dict[str, Any]) -> None:
    """A department without a head gets its demo head, if that person is an active member."""
    for code, _, _, key in DEPARTMENTS:
        person = people.get(key) if key else None
        if person is None or not person.is_active or person.department_id != department_ids[code]:
            continue
        head = (await uow.conn.execute(select(departments.c.head_user_id)
                                       .where(departments.c.id == department_ids[code]))).scalar()
        if head is None:
            await assign_department_head(AssignDepartmentHead(id=department_ids[code], user_id=person.id), uow)


async def _rooms(uow: UnitOfWork, department_ids: dict[str, UUID], counts: _Counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code, kind, department, floor, capacity, amenities, description in ROOMS:
        row = await _first(uow, select(rooms).where(rooms.c.code == code, rooms.c.deleted_at.is_(None)))
        if row is None:
            view = await create_room(CreateRoom(code=code, department_id=department_ids[department], type=kind,
                                                floor=floor, capacity=capacity, amenities=list(amenities),
                                                description=description), uow)
            out[code] = view.id
            counts.add("rooms", created=1)
        else:
            out[code] = row.id
            counts.add("rooms", existed=1)
    return out


async def _services(uow: UnitOfWork, room_ids: dict[str, UUID], counts: _Counts) -> None:
    for code, name, offered_in in SERVICES:
        row = await _first(uow, select(services).where(
            or_(services.c.code == code, func.lower(services.c.name) == name.lower()),
            services.c.deleted_at.is_(None)).order_by((services.c.code == code).desc()))
        if row is None:
            service_id = (await create_service(CreateService(code=code, name=name), uow)).id
            counts.add("services", created=1)
        else:
            service_id = row.id
            counts.add("services", existed=1)
        for room_code in offered_in:
            link = await _first(uow, select(service_rooms.c.id).where(
                service_rooms.c.service_id == service_id, service_rooms.c.room_id == room_ids[room_code],
                service_rooms.c.deleted_at.is_(None)))
            if link is not None:
                counts.add("serviceRooms", existed=1)
            elif row is not None and not row.is_active:
                counts.add("serviceRooms", skipped=1)  # an administrator switched the service off
            else:
                await create_service_room(CreateServiceRoom(service_id=service_id, room_id=room_ids[room_code]), uow)
                counts.add("serviceRooms", created=1)


async def _templates(uow: UnitOfWork, counts: _Counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind, start, end, break_start, break_end in SHIFT_TEMPLATES:
        row = await _first(uow, select(shift_templates).where(func.lower(shift_templates.c.name) == name.lower(),
                                                              shift_templates.c.deleted_at.is_(None)))
        if row is None:
            view = await create_shift_template(CreateShiftTemplate(name=name, shift_type=kind, start_time=start,
                                                                   end_time=end, break_start_time=break_start,
                                                                   break_end_time=break_end), uow)
            row = await _first(uow, select(shift_templates).where(shift_templates.c.id == view.id))
            counts.add("shiftTemplates", created=1)
        else:
            counts.add("shiftTemplates", existed=1)
        out[name] = row
    return out


async def _schedule(uow: UnitOfWork, template: Any, room_ids: list[UUID], date_from: date, date_to: date,
                    employees: list[UUID], counts: _Counts) -> None:
    """One template run (`generate_room_schedules`, past days allowed), counted exactly: every
    (room, day) slot was created, already there, or skipped; likewise every (slot, employee) pair."""
    slots = ((date_to - date_from).days + 1) * len(room_ids)
    if not template.is_active:  # an administrator switched it off: its shifts are not made
        counts.add("roomSchedules", skipped=slots)
        return
    result = await generate_room_schedules(GenerateRoomSchedules(
        id=template.id, room_ids=room_ids, date_from=date_from, date_to=date_to, employee_ids=employees or None,
        allow_past=True), uow)
    about_schedules = [c for c in result.conflicts if c.employee_id is None]
    about_people = [c for c in result.conflicts if c.employee_id is not None]
    skipped = sum(1 for c in about_schedules if c.code != "already_exists")
    counts.add("roomSchedules", created=len(result.created), skipped=skipped,
               existed=slots - len(result.created) - skipped)
    here = sum(1 for c in about_people if c.code == "already_exists")
    counts.add("assignments", created=len(result.assigned), existed=here, skipped=len(about_people) - here)
    # A shift that exists but is no longer open (the timer completed it) was not offered for
    # assignment: whether its demo staff are on it is read here.
    closed = [c.conflicting_schedule_id for c in about_schedules
              if c.code == "already_exists" and c.conflicting_schedule_id is not None]
    if employees and closed:
        on = (await uow.conn.execute(
            select(func.count()).select_from(assignments.join(room_schedules,
                                                              room_schedules.c.id == assignments.c.room_schedule_id))
            .where(assignments.c.room_schedule_id.in_(closed), assignments.c.employee_id.in_(employees),
                   room_schedules.c.status.not_in(OPEN))
        )).scalar_one()
        counts.add("assignments", existed=on, skipped=len(closed) * len(employees) - on)


async def _week(uow: UnitOfWork, templates: dict[str, Any], room_ids: dict[str, UUID], people: dict[str, Any],
                counts: _Counts) -> None:
    today = business_today(uow.now, clinic_zone(uow))
    monday = today - timedelta(days=today.isoweekday() - 1)
    sunday = monday + timedelta(days=6)
    for name, codes, keys in ROTA:
        template = templates[name]
        staff = [people[k] for k in keys]
        usable = [p.id for p, k in zip(staff, keys, strict=True)
                  if p.is_active and p.role == _role_of(k) and p.role != Role.SYSTEM_ADMIN]
        # An overnight shift also starts on the Sunday before, so Monday's small hours are staffed.
        start = monday - timedelta(days=1) if template.end_time <= template.start_time else monday
        await _schedule(uow, template, [room_ids[c] for c in codes], start, sunday, usable, counts)
        if len(usable) < len(staff):  # a demo user an administrator disabled or re-roled stays off the rota
            counts.add("assignments", skipped=((sunday - start).days + 1) * len(codes) * (len(staff) - len(usable)))


def _role_of(key: str) -> Role:
    return next(u.role for u in DEMO_USERS if u.key == key)


@registry.handles(SeedDemoUsers)
async def seed_demo(cmd: SeedDemoUsers, uow: UnitOfWork) -> SeedDemoResult:
    refuse_in_production(uow.settings)
    await uow.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": SEED_LOCK})
    counts = _Counts()
    department_ids = await _departments(uow, counts)
    people, accounts = await _users(uow, cmd, department_ids, counts)
    await _heads(uow, department_ids, people)
    room_ids = await _rooms(uow, department_ids, counts)
    await _services(uow, room_ids, counts)
    templates = await _templates(uow, counts)
    await _week(uow, templates, room_ids, people, counts)
    # The audit entry names the run and its counts (the handlers called above named their own targets).
    uow.audit = AuditTarget()
    uow.target("demo_data", None, created=counts.created, existed=counts.existed,
               passwordGiven=cmd.password is not None)
    return SeedDemoResult(command=SeedDemoUsers.OPERATION, created=counts.created,  # type: ignore[attr-defined]
                          existed=counts.existed, skipped={k: v for k, v in counts.skipped.items() if v},
                          accounts=accounts)
