"""`/notifications` (system.md §2): each user's own; announcements by administrators."""

from __future__ import annotations

from uuid import UUID

from litestar import Request, delete, get, post

from contracts.common import Page
from contracts.notifications import (
    DeleteNotification,
    GetNotification,
    GetUnreadCount,
    ListNotifications,
    MarkAllNotificationsRead,
    MarkNotificationRead,
    NotificationView,
    SendAnnouncement,
    Sent,
    UnreadCount,
    Updated,
)
from edge.access import ADM, roles, staff
from edge.bus import send
from edge.queries import documented, parse_query

TAGS = ["notifications"]


@get("/notifications", operation_id="ListNotifications", opt=staff(), tags=TAGS,
     operation_class=documented(ListNotifications), summary="The caller's own notifications")
async def list_notifications(request: Request) -> Page[NotificationView]:
    return await send(request, parse_query(request, ListNotifications))  # type: ignore[return-value]


@get("/notifications/unread-count", operation_id="UnreadNotificationCount", opt=staff(), tags=TAGS)
async def unread_count(request: Request) -> UnreadCount:
    return await send(request, GetUnreadCount())  # type: ignore[return-value]


@post("/notifications/read-all", operation_id="MarkAllNotificationsRead", opt=staff(), tags=TAGS, status_code=200)
async def read_all(request: Request) -> Updated:
    return await send(request, MarkAllNotificationsRead())  # type: ignore[return-value]


@post("/notifications", operation_id="SendAnnouncement", opt=roles(ADM), tags=TAGS, status_code=201,
      summary="An announcement to recipientIds (≤ 500) or to every active user of a role")
async def announce(request: Request, data: SendAnnouncement) -> Sent:
    return await send(request, data, status=201)  # type: ignore[return-value]


@get("/notifications/{notification_id:uuid}", operation_id="GetNotification", opt=staff(), tags=TAGS,
     summary="One of the caller's notifications (anyone else's is 404)")
async def get_notification(request: Request, notification_id: UUID) -> NotificationView:
    return await send(request, GetNotification(id=notification_id))  # type: ignore[return-value]


@post("/notifications/{notification_id:uuid}/read", operation_id="MarkNotificationRead", opt=staff(), tags=TAGS,
      status_code=200)
async def mark_read(request: Request, notification_id: UUID) -> NotificationView:
    return await send(request, MarkNotificationRead(id=notification_id))  # type: ignore[return-value]


@delete("/notifications/{notification_id:uuid}", operation_id="DeleteNotification", opt=staff(), tags=TAGS)
async def delete_notification(request: Request, notification_id: UUID) -> None:
    await send(request, DeleteNotification(id=notification_id), empty=True)


ROUTES = [list_notifications, unread_count, read_all, announce, get_notification, mark_read, delete_notification]
