"""`/users`: staff accounts (users.md §4)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Request, delete, get, patch, post
from msgspec import Meta

from contracts.common import Page, Struct
from contracts.users import (
    CreateUser,
    DeleteUser,
    DisableUser,
    EnableUser,
    GetUser,
    GetUserStats,
    ListUsers,
    Reason,
    ResetPassword,
    RestoreUser,
    UpdateUser,
    UserDetail,
    UserDirectory,
    UserPatch,
    UserStats,
    UserSummary,
)
from edge.access import ADM, roles, staff
from edge.bus import if_match, send
from edge.queries import documented, parse_query

TAGS = ["users"]


class DisableBody(Struct):
    reason: Reason | None = None


class ResetPasswordBody(Struct):
    new_password: Annotated[str, Meta(min_length=1, max_length=128)]


@get("/users", operation_id="ListUsers", opt=roles(ADM), tags=TAGS, operation_class=documented(ListUsers),
     summary="Users, filtered, sorted and paged")
async def list_users(request: Request) -> Page[UserDetail]:
    return await send(request, parse_query(request, ListUsers))  # type: ignore[return-value]


@get("/users/directory", operation_id="UserDirectory", opt=staff(), tags=TAGS,
     operation_class=documented(UserDirectory), summary="Active staff, for pickers")
async def directory(request: Request) -> Page[UserSummary]:
    return await send(request, parse_query(request, UserDirectory))  # type: ignore[return-value]


@get("/users/stats", operation_id="UserStats", opt=roles(ADM), tags=TAGS, summary="Counts by state and role")
async def stats(request: Request) -> UserStats:
    return await send(request, GetUserStats())  # type: ignore[return-value]


@post("/users", operation_id="CreateUser", opt=roles(ADM), tags=TAGS, summary="Create a staff account")
async def create_user(request: Request, data: CreateUser) -> UserDetail:
    return await send(request, data, status=201, location="/users", etag=True)  # type: ignore[return-value]


@get("/users/{user_id:uuid}", operation_id="GetUser", opt=staff(), tags=TAGS,
     summary="UserDetail for ADM and self, UserSummary for others")
async def get_user(request: Request, user_id: UUID) -> UserDetail:
    return await send(request, GetUser(id=user_id), etag=True)  # type: ignore[return-value]


@patch("/users/{user_id:uuid}", operation_id="UpdateUser", opt=roles(ADM), tags=TAGS,
       summary="Change a user (merge patch); a role change ends their sessions")
async def update_user(request: Request, user_id: UUID, data: UserPatch) -> UserDetail:
    cmd = UpdateUser(id=user_id, patch=data, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@delete("/users/{user_id:uuid}", operation_id="DeleteUser", opt=roles(ADM), tags=TAGS,
        summary="Soft-delete a user; their sessions end")
async def delete_user(request: Request, user_id: UUID) -> None:
    await send(request, DeleteUser(id=user_id, if_match=if_match(request)), empty=True)


@post("/users/{user_id:uuid}/restore", operation_id="RestoreUser", opt=roles(ADM), tags=TAGS, status_code=200,
      summary="Restore a deleted user (comes back disabled)")
async def restore_user(request: Request, user_id: UUID) -> UserDetail:
    cmd = RestoreUser(id=user_id, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@post("/users/{user_id:uuid}/disable", operation_id="DisableUser", opt=roles(ADM), tags=TAGS, status_code=200,
      summary="Disable a user; their sessions end at once")
async def disable_user(request: Request, user_id: UUID, data: DisableBody | None = None) -> UserDetail:
    cmd = DisableUser(id=user_id, reason=data.reason if data else None, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@post("/users/{user_id:uuid}/enable", operation_id="EnableUser", opt=roles(ADM), tags=TAGS, status_code=200,
      summary="Enable a disabled user")
async def enable_user(request: Request, user_id: UUID) -> UserDetail:
    cmd = EnableUser(id=user_id, if_match=if_match(request))
    return await send(request, cmd, etag=True)  # type: ignore[return-value]


@post("/users/{user_id:uuid}/reset-password", operation_id="ResetUserPassword", opt=roles(ADM), tags=TAGS,
      status_code=204, summary="Set a new password that must be changed at next sign-in; sessions end")
async def reset_password(request: Request, user_id: UUID, data: ResetPasswordBody) -> None:
    await send(request, ResetPassword(id=user_id, new_password=data.new_password), empty=True)


ROUTES = [list_users, directory, stats, create_user, get_user, update_user, delete_user, restore_user,
          disable_user, enable_user, reset_password]
