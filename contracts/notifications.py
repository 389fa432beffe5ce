"""System domain (spec system.md §2): notifications — persisted, pushed live by the relay."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated
from uuid import UUID

from msgspec import Meta

from contracts.common import Empty, ListParams, Page, Role, Struct, View
from contracts.envelope import Event
from contracts.registry import command, event, query

NOTIFICATION_SORT = ("createdAt",)


class NotificationType(enum.StrEnum):
    ENCOUNTER_ASSIGNED = "encounter_assigned"
    ENCOUNTER_TRANSFERRED = "encounter_transferred"
    IMAGING_ORDER_ASSIGNED = "imaging_order_assigned"
    REPORT_AWAITING_APPROVAL = "report_awaiting_approval"
    REPORT_APPROVED = "report_approved"
    REPORT_REJECTED = "report_rejected"
    STUDY_REJECTED = "study_rejected"
    AI_ANALYSIS_FINISHED = "ai_analysis_finished"
    SECURITY = "security"
    ANNOUNCEMENT = "announcement"
    SYSTEM_ALERT = "system_alert"


class RelatedEntityType(enum.StrEnum):
    ENCOUNTER = "encounter"
    IMAGING_ORDER = "imaging_order"
    STUDY = "study"
    REPORT = "report"
    AI_ANALYSIS = "ai_analysis"
    SIGNING_KEY = "signing_key"
    SESSION = "session"


class NotificationView(View):
    id: UUID
    recipient_id: UUID
    sender_id: UUID | None
    type: NotificationType
    title: str
    message: str
    related_entity_type: RelatedEntityType | None
    related_entity_id: str | None
    is_read: bool
    read_at: datetime | None
    created_at: datetime


class UnreadCount(View):
    count: int


class Updated(View):
    updated: int


class Sent(View):
    sent: int


@query("system.list_notifications", result=Page[NotificationView], summary="The caller's own notifications")
class ListNotifications(ListParams):
    is_read: bool | None = None
    type: list[NotificationType] | None = None
    related_entity_type: list[RelatedEntityType] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    q: Annotated[str, Meta(max_length=100)] | None = None


@query("system.unread_count", result=UnreadCount)
class GetUnreadCount(Empty):
    pass


@query("system.get_notification", result=NotificationView, summary="One of the caller's notifications")
class GetNotification(Struct):
    id: UUID


@command("system.mark_notification_read", result=NotificationView)
class MarkNotificationRead(Struct):
    id: UUID


@command("system.mark_all_notifications_read", result=Updated)
class MarkAllNotificationsRead(Empty):
    pass


@command("system.delete_notification", summary="Delete one of the caller's notifications")
class DeleteNotification(Struct):
    id: UUID


@command("system.send_announcement", result=Sent, summary="An announcement to users or to a whole role (ADM)")
class SendAnnouncement(Struct):
    title: Annotated[str, Meta(min_length=1, max_length=255)]
    message: Annotated[str, Meta(min_length=1, max_length=2000)]
    recipient_ids: Annotated[list[UUID], Meta(min_length=1, max_length=500)] | None = None
    role: Role | None = None


@event("system.notification.created")
class NotificationCreated(Event):
    """The whole notification, for its recipient only (the relay sends it as `new_notification`)."""

    id: UUID
    recipient_id: UUID
    sender_id: UUID | None
    type: NotificationType
    title: str
    message: str
    related_entity_type: RelatedEntityType | None
    related_entity_id: str | None
    is_read: bool
    read_at: datetime | None
    created_at: datetime
    version: int = 1


class NotificationChange(Event):
    recipient_id: UUID
    notification_ids: list[UUID]
    unread_count: int


@event("system.notification.read")
class NotificationRead(NotificationChange):
    pass


@event("system.notification.deleted")
class NotificationDeleted(NotificationChange):
    pass
