"""`/auth`: sign-in, refresh, logout, the caller's own account and sessions (users.md §3–4)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post, put
from litestar.datastructures import Cookie
from msgspec import Meta

from contracts.common import Struct
from contracts.errors import Unauthenticated
from contracts.users import (
    Accepted,
    ChangePassword,
    GetMe,
    ListSessions,
    Login,
    Me,
    OtpChallenge,
    ResendOtp,
    RevokeAllSessions,
    Revoked,
    RevokeReason,
    RevokeSession,
    SessionView,
    SetEmailOtp,
    TokenPair,
    UpdateProfile,
    UserDetail,
    VerifyOtp,
)
from edge.access import public, staff
from edge.bus import send

COOKIE = "refresh_token"
COOKIE_PATH = "/auth"
TAGS = ["auth"]


MAX_REFRESH_TOKEN = 200  # `<sid>.<secret>`; anything longer names no session


class RefreshBody(Struct):
    # generous bound: an over-long token is simply not a refresh token (401), not a malformed body
    refresh_token: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None


class _RefreshPart(msgspec.Struct, rename="camel"):
    refresh_token: str | None = None  # absent when a sign-in asks for its second factor
    refresh_token_expires_at: datetime | None = None


_refresh_part = msgspec.json.Decoder(_RefreshPart)


def _with_cookie(response: Response[Any]) -> Response[Any]:
    """Mirror the new refresh token into the httpOnly, Secure, SameSite=Strict cookie; a token
    response is never cached (RFC 6749 §5.1)."""
    part = _refresh_part.decode(response.content)
    response.headers["Cache-Control"] = "no-store"
    if part.refresh_token is None or part.refresh_token_expires_at is None:
        return response
    max_age = max(0, int((part.refresh_token_expires_at - datetime.now(part.refresh_token_expires_at.tzinfo))
                         .total_seconds()))
    response.cookies.append(Cookie(key=COOKIE, value=part.refresh_token, path=COOKIE_PATH, httponly=True,
                                   secure=True, samesite="strict", max_age=max_age))
    return response


def _cleared(response: Response[Any]) -> Response[Any]:
    response.cookies.append(Cookie(key=COOKIE, value="", path=COOKIE_PATH, httponly=True, secure=True,
                                   samesite="strict", max_age=0))
    return response


def _presented_refresh(request: Request, data: RefreshBody | None) -> str | None:
    """The refresh token of the body, else of the cookie; one too long to be ours counts as none."""
    token = (data.refresh_token if data else None) or request.cookies.get(COOKIE)
    return token if token and len(token) <= MAX_REFRESH_TOKEN else None


@post("/auth/login", operation_id="Login", opt=public(), tags=TAGS, status_code=200,
      summary="Sign in; returns a token pair and sets the refresh cookie")
async def login(request: Request, data: Login) -> TokenPair | OtpChallenge:
    """With the e-mail second factor on, the answer is an OtpChallenge: a code was mailed and
    `POST /auth/otp/verify` finishes the sign-in."""
    return _with_cookie(await send(request, data))  # type: ignore[return-value]


@post("/auth/otp/verify", operation_id="VerifyOtp", opt=public(), tags=TAGS, status_code=200,
      summary="Finish a sign-in with the mailed 6-digit code")
async def verify_otp(request: Request, data: VerifyOtp) -> TokenPair:
    return _with_cookie(await send(request, data))  # type: ignore[return-value]


@post("/auth/otp/resend", operation_id="ResendOtp", opt=public(), tags=TAGS, status_code=202,
      summary="Mail a new code for the challenge (at least 60 s apart)")
async def resend_otp(request: Request, data: ResendOtp) -> Accepted:
    return await send(request, data, status=202)  # type: ignore[return-value]


@put("/auth/me/email-otp", operation_id="SetMyEmailOtp", opt=staff(password_change_pending=True), tags=TAGS,
     summary="Turn the caller's e-mail second factor on or off (needs the password)")
async def set_email_otp(request: Request, data: SetEmailOtp) -> UserDetail:
    return await send(request, data, etag=True)  # type: ignore[return-value]


@post("/auth/refresh", operation_id="RefreshToken", opt=public(), tags=TAGS, status_code=200,
      summary="Rotate the refresh token (body or cookie); reuse revokes the session")
async def refresh(request: Request, data: RefreshBody | None = None) -> TokenPair:
    from contracts.users import RefreshSession

    token = _presented_refresh(request, data)
    if not token:
        raise Unauthenticated("no valid refresh token in the body or the cookie", code="invalid_refresh_token")
    return _with_cookie(await send(request, RefreshSession(refresh_token=token)))  # type: ignore[return-value]


@post("/auth/logout", operation_id="Logout", opt=public(), tags=TAGS, status_code=204,
      summary="End this session (by access token, refresh token body or cookie); clears the cookie")
async def logout(request: Request, data: RefreshBody | None = None) -> None:
    principal = request.scope.get("user")
    token = _presented_refresh(request, data)
    if principal is not None:
        await send(request, RevokeSession(session_id=principal.session_id, reason=RevokeReason.LOGOUT), empty=True)
    elif token:
        await send(request, RevokeSession(refresh_token=token, reason=RevokeReason.LOGOUT), empty=True)
    return _cleared(Response(None, status_code=204))  # type: ignore[return-value]


@post("/auth/logout-all", operation_id="LogoutAll", opt=staff(password_change_pending=True), tags=TAGS,
      status_code=200, summary="End every session of the caller")
async def logout_all(request: Request) -> Revoked:
    return _cleared(await send(request, RevokeAllSessions()))  # type: ignore[return-value]


@get("/auth/me", operation_id="GetMe", opt=staff(password_change_pending=True), tags=TAGS,
     summary="The caller's account, signing key state and current duty")
async def me(request: Request) -> Me:
    return await send(request, GetMe(), etag=True)  # type: ignore[return-value]


@patch("/auth/me", operation_id="UpdateMe", opt=staff(password_change_pending=True), tags=TAGS,
       summary="Change the caller's own name and phone")
async def update_me(request: Request, data: UpdateProfile) -> UserDetail:
    return await send(request, data, etag=True)  # type: ignore[return-value]


@post("/auth/me/password", operation_id="ChangeMyPassword", opt=staff(password_change_pending=True),
      tags=TAGS, status_code=204, summary="Change the caller's password; other sessions end")
async def change_password(request: Request, data: ChangePassword) -> None:
    return await send(request, data, empty=True)  # type: ignore[return-value]


@get("/auth/sessions", operation_id="ListMySessions", opt=staff(), tags=TAGS,
     summary="The caller's own sessions (never tokens)")
async def sessions(request: Request) -> list[SessionView]:
    return await send(request, ListSessions())  # type: ignore[return-value]


@delete("/auth/sessions/{session_id:str}", operation_id="DeleteMySession", opt=staff(), tags=TAGS,
        summary="End one of the caller's own sessions")
async def delete_session(request: Request, session_id: str) -> None:
    if len(session_id) > 64:
        from contracts.errors import NotFound

        raise NotFound("no such session")
    await send(request, RevokeSession(session_id=session_id, reason=RevokeReason.SESSION_DELETED), empty=True)


ROUTES = [login, verify_otp, resend_otp, set_email_otp, refresh, logout, logout_all, me, update_me, change_password,
          sessions, delete_session]
