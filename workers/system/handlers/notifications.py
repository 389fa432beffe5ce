"""Notifications (system.md §2): created from trigger events, exactly one per trigger and recipient;
each recipient reads, marks and deletes only their own."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts.common import Page, UserRef
from contracts.encounters import EncounterCreated, EncounterTransferred
from contracts.envelope import Envelope
from contracts.errors import NotFound, invalid_field, reference_error
from contracts.ids import uuid7
from contracts.notifications import (
    DeleteNotification,
    GetNotification,
    GetUnreadCount,
    ListNotifications,
    MarkAllNotificationsRead,
    MarkNotificationRead,
    NotificationCreated,
    NotificationDeleted,
    NotificationRead,
    NotificationType,
    NotificationView,
    RelatedEntityType,
    SendAnnouncement,
    Sent,
    UnreadCount,
    Updated,
)
from contracts.organisation import GetRoom, RoomView
from contracts.scheduling import DutyAt, ListOnDuty, ListOnDutyMany
from contracts.users import GetUserRefs, UserDirectory, UserSummary
from workers.runtime.lists import fetch_page, like_pattern
from workers.runtime.unit_of_work import UnitOfWork
from workers.system.handlers import registry
from workers.system.tables import notifications

n = notifications
_SORT = {"createdAt": n.c.created_at}


def _view(row: Any) -> NotificationView:
    return NotificationView(
        id=row.id, recipient_id=row.recipient_id, sender_id=row.sender_id, type=NotificationType(row.type),
        title=row.title, message=row.message,
        related_entity_type=RelatedEntityType(row.related_entity_type) if row.related_entity_type else None,
        related_entity_id=row.related_entity_id, is_read=row.is_read, read_at=row.read_at, created_at=row.created_at,
    )


async def notify(uow: UnitOfWork, recipients: list[UUID], kind: NotificationType, title: str, message: str, *,
                 related: tuple[RelatedEntityType, Any] | None = None, sender: UUID | None = None,
                 source_event: UUID | None = None) -> int:
    """One notification per recipient (once per source event however often it is redelivered),
    each announced by `system.notification.created` for its recipient's live streams."""
    recipients = sorted(set(recipients))
    if not recipients:
        return 0
    stmt = pg_insert(n).values([{
        "id": uuid7(), "recipient_id": r, "sender_id": sender, "type": kind.value, "title": title[:255],
        "message": message[:2000], "related_entity_type": related[0].value if related else None,
        "related_entity_id": str(related[1]) if related else None, "is_read": False, "source_event_id": source_event,
        "created_at": uow.now, "updated_at": uow.now, "version": 1,
    } for r in recipients])
    if source_event is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["recipient_id", "source_event_id"],
                                           index_where=n.c.source_event_id.isnot(None))
    rows = (await uow.conn.execute(stmt.returning(n))).all()
    for row in rows:
        uow.emit(NotificationCreated(**msgspec.structs.asdict(_view(row)), version=row.version))
    return len(rows)


# ---------------------------------------------------------------- triggers


async def _on_duty_for_batch(matched: list[tuple[Envelope, EncounterCreated]], uow: UnitOfWork) -> None:
    """One bus query for a whole batch of new encounters: who was on duty in each room when each
    patient joined its queue."""
    items = [DutyAt(room_id=ev.room_id, at=env.occurred_at) for env, ev in matched]
    staff: list[list[UserRef]] = await uow.ask(ListOnDutyMany(items=items), list[list[UserRef]])
    uow.batch["on_duty"] = {env.message_id: people for (env, _), people in zip(matched, staff, strict=True)}


@registry.on_event("patients.encounter.created", EncounterCreated, prefetch=_on_duty_for_batch)
async def encounter_created(ev: EncounterCreated, uow: UnitOfWork) -> None:
    """Everyone on duty in the room when the patient joined its queue."""
    staff: list[UserRef] | None = uow.batch.get("on_duty", {}).get(uow.envelope.message_id)
    if staff is None:
        staff = await uow.ask(ListOnDuty(room_id=ev.room_id, at=uow.envelope.occurred_at), list[UserRef])
    if not staff:
        return
    code = ev.room_code
    if code is None:  # an event from before room codes rode along
        code = (await uow.ask(GetRoom(id=ev.room_id), RoomView)).code
    await notify(
        uow, [s.id for s in staff], NotificationType.ENCOUNTER_ASSIGNED,
        f"New patient #{ev.queue_number} in {code}",
        f"Queue number {ev.queue_number} in room {code} (MRN {ev.mrn}), priority {ev.priority.value}.",
        related=(RelatedEntityType.ENCOUNTER, ev.encounter_id), source_event=uow.envelope.message_id,
    )


@registry.on_event("patients.encounter.transferred", EncounterTransferred)
async def encounter_transferred(ev: EncounterTransferred, uow: UnitOfWork) -> None:
    """The new physician, or else everyone on duty in the new room."""
    room: RoomView = await uow.ask(GetRoom(id=ev.to_room_id), RoomView)
    if ev.to_physician_id is not None:
        recipients = [ev.to_physician_id]
    else:
        staff: list[UserRef] = await uow.ask(ListOnDuty(room_id=ev.to_room_id, at=uow.envelope.occurred_at),
                                             list[UserRef])
        recipients = [s.id for s in staff]
    await notify(
        uow, recipients, NotificationType.ENCOUNTER_TRANSFERRED, f"Patient transferred to {room.code}",
        f"A patient was transferred to room {room.code} with queue number {ev.queue_number}.",
        related=(RelatedEntityType.ENCOUNTER, ev.encounter_id), source_event=uow.envelope.message_id,
    )


class _KeyLocked(msgspec.Struct, rename="camel"):
    key_id: UUID
    user_id: UUID
    locked_until: datetime | None = None


class _SessionRevoked(msgspec.Struct, rename="camel"):
    user_id: UUID
    session_ids: list[str]
    reason: str


@registry.on_event("users.signing_key.locked", _KeyLocked)  # type: ignore[arg-type]
async def signing_key_locked(ev: _KeyLocked, uow: UnitOfWork) -> None:
    until = f" until {ev.locked_until:%H:%M} UTC" if ev.locked_until else ""
    await notify(uow, [ev.user_id], NotificationType.SECURITY, "Your signing key is locked",
                 f"Five wrong PINs in a row locked your signing key{until}. If this was not you, tell your "
                 "administrator.", related=(RelatedEntityType.SIGNING_KEY, ev.key_id),
                 source_event=uow.envelope.message_id)


@registry.on_event("users.session.revoked", _SessionRevoked)  # type: ignore[arg-type]
async def session_revoked(ev: _SessionRevoked, uow: UnitOfWork) -> None:
    if ev.reason != "reuse_detected":
        return
    await notify(uow, [ev.user_id], NotificationType.SECURITY, "A sign-in of yours was ended",
                 "An old sign-in token was used again, so that session was ended for safety. If you did not "
                 "expect this, change your password.", related=(RelatedEntityType.SESSION, ev.session_ids[0]),
                 source_event=uow.envelope.message_id)


# ---------------------------------------------------------------- the recipient's own


def _caller(uow: UnitOfWork) -> UUID:
    if uow.actor.user_id is None:
        raise NotFound("no such notification")
    return uow.actor.user_id


def _mine(uow: UnitOfWork) -> Any:
    return (n.c.recipient_id == _caller(uow)) & n.c.deleted_at.is_(None)


async def _unread(uow: UnitOfWork) -> int:
    return (await uow.conn.execute(select(func.count()).where(_mine(uow), ~n.c.is_read))).scalar_one()


@registry.handles(ListNotifications)
async def list_notifications(q: ListNotifications, uow: UnitOfWork) -> Page[NotificationView]:
    stmt = select(n).where(_mine(uow))
    if q.is_read is not None:
        stmt = stmt.where(n.c.is_read.is_(q.is_read))
    if q.type:
        stmt = stmt.where(n.c.type.in_([t.value for t in q.type]))
    if q.related_entity_type:
        stmt = stmt.where(n.c.related_entity_type.in_([t.value for t in q.related_entity_type]))
    if q.created_from is not None:
        stmt = stmt.where(n.c.created_at >= q.created_from)
    if q.created_to is not None:
        stmt = stmt.where(n.c.created_at <= q.created_to)
    if q.q:
        stmt = stmt.where(n.c.title.ilike(like_pattern(q.q.strip())))
    rows, total, lower = await fetch_page(uow.conn, stmt, q, _SORT, "-createdAt", n.c.id)
    return Page(items=[_view(r) for r in rows], total=total, page=q.page, limit=q.limit, total_is_lower_bound=lower)


@registry.handles(GetUnreadCount)
async def unread_count(q: GetUnreadCount, uow: UnitOfWork) -> UnreadCount:
    return UnreadCount(count=await _unread(uow))


@registry.handles(GetNotification)
async def get_notification(q: GetNotification, uow: UnitOfWork) -> NotificationView:
    row = (await uow.conn.execute(select(n).where(_mine(uow), n.c.id == q.id))).first()
    if row is None:
        raise NotFound("no such notification")  # someone else's is "not found" too
    return _view(row)


@registry.handles(MarkNotificationRead)
async def mark_read(cmd: MarkNotificationRead, uow: UnitOfWork) -> NotificationView:
    row = (await uow.conn.execute(select(n).where(_mine(uow), n.c.id == cmd.id).with_for_update())).first()
    if row is None:
        raise NotFound("no such notification")
    uow.target("notification", row.id)
    if not row.is_read:
        row = (await uow.conn.execute(
            update(n).where(n.c.id == row.id)
            .values(is_read=True, read_at=uow.now, updated_at=uow.now, version=n.c.version + 1).returning(n)
        )).one()
        uow.emit(NotificationRead(recipient_id=row.recipient_id, notification_ids=[row.id],
                                  unread_count=await _unread(uow)))
    return _view(row)


@registry.handles(MarkAllNotificationsRead)
async def mark_all_read(cmd: MarkAllNotificationsRead, uow: UnitOfWork) -> Updated:
    ids = (await uow.conn.execute(
        update(n).where(_mine(uow), ~n.c.is_read)
        .values(is_read=True, read_at=uow.now, updated_at=uow.now, version=n.c.version + 1).returning(n.c.id)
    )).scalars().all()
    uow.target("notification", None, count=len(ids))
    if ids:
        uow.emit(NotificationRead(recipient_id=_caller(uow), notification_ids=list(ids), unread_count=0))
    return Updated(updated=len(ids))


@registry.handles(DeleteNotification)
async def delete_notification(cmd: DeleteNotification, uow: UnitOfWork) -> None:
    row = (await uow.conn.execute(
        update(n).where(_mine(uow), n.c.id == cmd.id)
        .values(deleted_at=uow.now, updated_at=uow.now, version=n.c.version + 1).returning(n)
    )).first()
    if row is None:
        raise NotFound("no such notification")
    uow.target("notification", row.id)
    uow.emit(NotificationDeleted(recipient_id=row.recipient_id, notification_ids=[row.id],
                                 unread_count=await _unread(uow)))
    return None


@registry.handles(SendAnnouncement)
async def send_announcement(cmd: SendAnnouncement, uow: UnitOfWork) -> Sent:
    if (cmd.recipient_ids is None) == (cmd.role is None):
        raise invalid_field("recipientIds", "required", "give recipientIds or a role, not both")
    recipients = list(cmd.recipient_ids or [])
    if recipients:
        known: list[UserRef] = await uow.ask(GetUserRefs(ids=sorted(set(recipients))), list[UserRef])
        missing = set(recipients) - {u.id for u in known}
        if missing:
            listed = ", ".join(map(str, sorted(missing)[:5]))
            raise reference_error("recipientIds", "invalid_reference",
                                  f"{len(missing)} recipients are not users: {listed}")
    if cmd.role is not None:
        page = 1
        while True:
            found: Page[UserSummary] = await uow.ask(UserDirectory(role=[cmd.role], page=page, limit=100),
                                                     Page[UserSummary])
            recipients += [u.id for u in found.items]
            if len(found.items) < 100 or page * 100 >= 10_000:
                break
            page += 1
    sent = await notify(uow, recipients, NotificationType.ANNOUNCEMENT, cmd.title, cmd.message,
                        sender=uow.actor.user_id)
    uow.target("announcement", None, recipients=len(recipients))
    return Sent(sent=sent)

