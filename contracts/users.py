"""Users and organisation (spec users.md): auth, staff accounts, departments."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from contracts.common import Empty, ListParams, Page, PingResult, Role, Struct, Text, UserRef, View
from contracts.envelope import Event
from contracts.registry import command, event, query

Username = Annotated[str, Meta(min_length=3, max_length=50, pattern=r"^[A-Za-z0-9._-]+$")]
Email = Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Password = Annotated[str, Meta(min_length=1, max_length=128)]
PersonName = Annotated[str, Meta(min_length=1, max_length=50)]
Phone = Annotated[str, Meta(max_length=20, pattern=r"^[0-9 +()-]*$")]
StaffNumber = Annotated[str, Meta(min_length=1, max_length=20)]
DepartmentCode = Annotated[str, Meta(min_length=2, max_length=10, pattern=r"^[A-Z0-9_-]+$")]
DepartmentName = Annotated[str, Meta(min_length=1, max_length=100)]
Reason = Annotated[str, Meta(max_length=500)]

USER_SORT = ("username", "email", "staffNumber", "lastName", "createdAt", "lastLoginAt")
DIRECTORY_SORT = ("username", "lastName", "createdAt")
DEPARTMENT_SORT = ("code", "name", "createdAt")


class RevokeReason(enum.StrEnum):
    LOGOUT = "logout"
    LOGOUT_ALL = "logout_all"
    REUSE_DETECTED = "reuse_detected"
    PASSWORD_CHANGED = "password_changed"
    PASSWORD_RESET = "password_reset"
    USER_DISABLED = "user_disabled"
    USER_DELETED = "user_deleted"
    ROLE_CHANGED = "role_changed"
    SESSION_DELETED = "session_deleted"


# ---------------------------------------------------------------- views


class UserSummary(View):
    id: UUID
    display_name: str
    role: Role
    username: str
    first_name: str
    last_name: str
    department_id: UUID | None
    staff_number: str | None
    is_active: bool


class UserDetail(UserSummary):
    email: str
    phone: str | None
    email_otp_enabled: bool
    must_change_password: bool
    last_login_at: datetime | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int


class SigningKeyState(View):
    has_key: bool
    status: str | None = None
    fingerprint: str | None = None
    locked_until: datetime | None = None


class Me(UserDetail):
    signing_key: SigningKeyState
    current_duty: list[dict] = msgspec.field(default_factory=list)


class TokenPair(View):
    token_type: str
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    refresh_token_expires_at: datetime
    user: UserDetail


class OtpChallenge(View):
    """The answer to a sign-in whose account needs a second factor: a code was mailed."""

    otp_required: bool
    challenge_id: str
    expires_at: datetime
    sent_to: str  # the masked address


class Accepted(View):
    accepted: bool


class SessionView(View):
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    mfa: bool
    current: bool


class UserStats(View):
    total: int
    active: int
    disabled: int
    deleted: int
    by_role: dict[str, int]


class DepartmentView(View, omit_defaults=True):
    id: UUID
    code: str
    name: str
    description: str | None
    head_user_id: UUID | None
    head_user: UserRef | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    version: int
    room_count: int | None = None
    user_count: int | None = None


class DepartmentStats(View):
    total: int
    active: int
    inactive: int
    deleted: int
    users_by_department: dict[str, int]


class Revoked(View):
    revoked: int


# ---------------------------------------------------------------- auth


@command("users.login", result=TokenPair, summary="Sign in with e-mail and password", sensitive_reply=True)
class Login(Struct):
    email: Annotated[str, Meta(min_length=1, max_length=254)]
    password: Password


@command("users.verify_otp", result=TokenPair, summary="Finish a sign-in with the mailed code",
         sensitive_reply=True)
class VerifyOtp(Struct):
    challenge_id: Annotated[str, Meta(min_length=1, max_length=64)]
    code: Annotated[str, Meta(pattern=r"^[0-9]{6}$")]


@command("users.resend_otp", result=Accepted, summary="Mail a new code for a sign-in challenge")
class ResendOtp(Struct):
    challenge_id: Annotated[str, Meta(min_length=1, max_length=64)]


@command("users.set_email_otp", result=UserDetail, summary="Turn the caller's e-mail second factor on or off")
class SetEmailOtp(Struct):
    enabled: bool
    password: Password


@command("users.refresh_session", result=TokenPair, summary="Rotate a refresh token", sensitive_reply=True)
class RefreshSession(Struct):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=200)]


@command("users.revoke_session", summary="Log out: revoke one session (by refresh token or own session)")
class RevokeSession(Struct):
    refresh_token: Annotated[str, Meta(max_length=200)] | None = None
    session_id: Annotated[str, Meta(max_length=64)] | None = None
    reason: RevokeReason = RevokeReason.LOGOUT


@command("users.revoke_all_sessions", result=Revoked, summary="Log out everywhere")
class RevokeAllSessions(Empty):
    pass


@query("users.list_sessions", result=list[SessionView], summary="The caller's own sessions")
class ListSessions(Empty):
    pass


@query("users.get_me", result=Me, summary="The caller's own account")
class GetMe(Empty):
    pass


@command("users.update_profile", result=UserDetail, summary="Change the caller's own name and phone")
class UpdateProfile(Struct):
    first_name: PersonName | UnsetType = UNSET
    last_name: PersonName | UnsetType = UNSET
    phone: Phone | UnsetType | None = UNSET


@command("users.change_password", summary="Change the caller's own password; other sessions end")
class ChangePassword(Struct):
    current_password: Password
    new_password: Password


# ---------------------------------------------------------------- users


@query("users.list_users", result=Page[UserDetail], summary="Users, filtered, sorted and paged (ADM)")
class ListUsers(ListParams):
    q: Annotated[str, Meta(max_length=100)] | None = None
    role: list[Role] | None = None
    role_not: list[Role] | None = None
    department_id: UUID | None = None
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.user_directory", result=Page[UserSummary], summary="Active staff directory")
class UserDirectory(ListParams):
    q: Annotated[str, Meta(max_length=100)] | None = None
    role: list[Role] | None = None
    department_id: UUID | None = None


@query("users.user_stats", result=UserStats, summary="Counts of users by state and role")
class GetUserStats(Empty):
    pass


@command("users.create_user", result=UserDetail, summary="Create a staff account (ADM)")
class CreateUser(Struct):
    username: Username
    email: Email
    password: Password
    first_name: PersonName
    last_name: PersonName
    role: Role
    phone: Phone | None = None
    staff_number: StaffNumber | None = None
    department_id: UUID | None = None
    email_otp_enabled: bool = False


@query("users.get_user", result=UserDetail, summary="One user: detail for ADM and self, summary otherwise")
class GetUser(Struct):
    id: UUID


class UserPatch(Struct):
    username: Username | UnsetType = UNSET
    email: Email | UnsetType = UNSET
    first_name: PersonName | UnsetType = UNSET
    last_name: PersonName | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    phone: Phone | UnsetType | None = UNSET
    staff_number: StaffNumber | UnsetType | None = UNSET
    department_id: UUID | UnsetType | None = UNSET
    email_otp_enabled: bool | UnsetType = UNSET
    # accepted only to be refused with 422 `use_transition`: the state moves by /disable and /enable
    is_active: Annotated[bool, Meta(description="not patchable (422 use_transition): use /disable, /enable")
                         ] | UnsetType = UNSET


@command("users.update_user", result=UserDetail, summary="Change a user (ADM); a role change ends sessions")
class UpdateUser(Struct):
    id: UUID
    patch: UserPatch
    if_match: int | None = None


@command("users.delete_user", summary="Soft-delete a user (ADM); sessions end")
class DeleteUser(Struct):
    id: UUID
    if_match: int | None = None


@command("users.restore_user", result=UserDetail, summary="Restore a deleted user (comes back disabled)")
class RestoreUser(Struct):
    id: UUID
    if_match: int | None = None


@command("users.disable_user", result=UserDetail, summary="Disable a user (ADM); sessions end")
class DisableUser(Struct):
    id: UUID
    reason: Reason | None = None
    if_match: int | None = None


@command("users.enable_user", result=UserDetail, summary="Enable a disabled user (ADM)")
class EnableUser(Struct):
    id: UUID
    if_match: int | None = None


@command("users.reset_password", summary="Set a new password (ADM); it must be changed at next sign-in")
class ResetPassword(Struct):
    id: UUID
    new_password: Password


@query("users.get_user_refs", result=list[UserRef], summary="UserRefs for ids (bus query for other domains)")
class GetUserRefs(Struct):
    ids: Annotated[list[UUID], Meta(max_length=500)]


@query("users.ping", result=PingResult)
class PingUsers(Empty):
    pass


# ---------------------------------------------------------------- departments


@query("users.list_departments", result=Page[DepartmentView], summary="Departments, filtered and paged")
class ListDepartments(ListParams):
    q: Annotated[str, Meta(max_length=100)] | None = None
    is_active: bool | None = None
    include_deleted: bool = False


@query("users.get_department", result=DepartmentView, summary="One department with counts")
class GetDepartment(Struct):
    id: UUID | None = None
    code: Annotated[str, Meta(max_length=10)] | None = None


@query("users.department_stats", result=DepartmentStats)
class GetDepartmentStats(Empty):
    pass


@command("users.create_department", result=DepartmentView, summary="Create a department (ADM)")
class CreateDepartment(Struct):
    code: DepartmentCode
    name: DepartmentName
    description: Text | None = None


class DepartmentPatch(Struct):
    code: DepartmentCode | UnsetType = UNSET
    name: DepartmentName | UnsetType = UNSET
    description: Text | UnsetType | None = UNSET
    is_active: bool | UnsetType = UNSET


@command("users.update_department", result=DepartmentView)
class UpdateDepartment(Struct):
    id: UUID
    patch: DepartmentPatch
    if_match: int | None = None


@command("users.delete_department", summary="Soft-delete; refused while rooms or users point at it")
class DeleteDepartment(Struct):
    id: UUID


@command("users.restore_department", result=DepartmentView)
class RestoreDepartment(Struct):
    id: UUID


@command("users.assign_department_head", result=DepartmentView, summary="Set or clear the head")
class AssignDepartmentHead(Struct):
    id: UUID
    user_id: UUID | None


# ---------------------------------------------------------------- events


class UserEventBase(Event):
    user_id: UUID
    username: str
    display_name: str
    role: Role
    department_id: UUID | None
    staff_number: str | None
    is_active: bool
    version: int
    changed_fields: list[str] = msgspec.field(default_factory=list)


@event("users.user.created")
class UserCreated(UserEventBase):
    pass


@event("users.user.updated")
class UserUpdated(UserEventBase):
    pass


@event("users.user.deleted")
class UserDeleted(UserEventBase):
    pass


@event("users.user.restored")
class UserRestored(UserEventBase):
    pass


@event("users.user.disabled")
class UserDisabled(UserEventBase):
    pass


@event("users.user.enabled")
class UserEnabled(UserEventBase):
    pass


@event("users.user.password_changed", relay=False)
class PasswordChanged(Event):
    user_id: UUID
    by: str  # "self" | "admin"
    version: int


@event("users.session.started", relay=False)
class SessionStarted(Event):
    user_id: UUID
    session_id: str
    mfa: bool


@event("users.session.revoked", relay=False)
class SessionRevoked(Event):
    user_id: UUID
    session_ids: list[str]
    reason: RevokeReason
    expires_at: datetime  # the revocation matters until the last access token of these sessions expires


@event("users.otp.sent", relay=False)
class OtpSent(Event):
    user_id: UUID
    challenge_id: str


@event("users.login.failed", relay=False)
class LoginFailed(Event):
    reason: str
    user_id: UUID | None = None


class DepartmentEventBase(Event):
    department_id: UUID
    code: str
    name: str
    head_user_id: UUID | None
    is_active: bool
    version: int
    previous_head_user_id: UUID | None = None


@event("users.department.created")
class DepartmentCreated(DepartmentEventBase):
    pass


@event("users.department.updated")
class DepartmentUpdated(DepartmentEventBase):
    pass


@event("users.department.deleted")
class DepartmentDeleted(DepartmentEventBase):
    pass


@event("users.department.restored")
class DepartmentRestored(DepartmentEventBase):
    pass


@event("users.department.head_assigned")
class DepartmentHeadAssigned(DepartmentEventBase):
    pass
