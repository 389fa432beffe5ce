"""Sign-in, refresh, logout, sessions and the caller's own account (users.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import select, update

from contracts.envelope import encode
from contracts.errors import Forbidden, NotFound, RateLimited, Unauthenticated, Unavailable, invalid_field
from contracts.tokens import issue_access_token
from contracts.users import (
    Accepted,
    ChangePassword,
    GetMe,
    ListSessions,
    Login,
    LoginFailed,
    Me,
    OtpChallenge,
    OtpSent,
    PasswordChanged,
    RefreshSession,
    ResendOtp,
    RevokeAllSessions,
    Revoked,
    RevokeReason,
    RevokeSession,
    SessionRevoked,
    SessionStarted,
    SessionView,
    SetEmailOtp,
    TokenPair,
    UpdateProfile,
    UserDetail,
    UserUpdated,
    VerifyOtp,
)
from workers.runtime.unit_of_work import UnitOfWork
from workers.users.handlers import registry
from workers.users.mail import MailError, mask_email
from workers.users.otp import MAX_WRONG_PER_CHALLENGE
from workers.users.passwords import check_policy
from workers.users.queries import USER_COLUMNS, camel, load_user, user_detail
from workers.users.services import UsersServices
from workers.users.sessions import split_token
from workers.users.tables import users

_pair_decoder = msgspec.json.Decoder(TokenPair)


def _ts(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def _svc(uow: UnitOfWork) -> UsersServices:
    return uow.services


def _caller(uow: UnitOfWork) -> UUID:
    if uow.actor.user_id is None:
        raise Unauthenticated("sign in first")
    return uow.actor.user_id


async def revoke_sessions(uow: UnitOfWork, user_id: UUID, sids: list[str], reason: RevokeReason,
                          *, always: bool = False) -> int:
    """End sessions now and tell every edge and relay (`users.session.revoked`)."""
    if not sids:
        return 0
    until = await _svc(uow).sessions.revoke(user_id, sids)
    event = SessionRevoked(user_id=user_id, session_ids=sids, reason=reason, expires_at=_ts(until))
    (uow.emit_always if always else uow.emit)(event)
    return len(sids)


async def revoke_all(uow: UnitOfWork, user_id: UUID, reason: RevokeReason, *, keep: str | None = None) -> int:
    sids = [sid for sid in await _svc(uow).sessions.all_of(user_id) if sid != keep]
    return await revoke_sessions(uow, user_id, sids, reason)


def _token_pair(uow: UnitOfWork, row: Any, sid: str, refresh_token: str, refresh_expires: float) -> TokenPair:
    access, expires = issue_access_token(
        uow.settings, user_id=row.id, role=row.role, session_id=sid,
        must_change_password=row.must_change_password,
    )
    return TokenPair(
        token_type="Bearer", access_token=access, access_token_expires_at=_ts(expires),
        refresh_token=refresh_token, refresh_token_expires_at=_ts(refresh_expires), user=user_detail(row),
    )


@registry.handles(Login)
async def login(cmd: Login, uow: UnitOfWork) -> TokenPair | OtpChallenge:
    svc = _svc(uow)
    email = cmd.email.strip().lower()
    try:
        await svc.limits.hit_ip(uow.actor.ip)
    except RateLimited:
        uow.emit_always(LoginFailed(reason="rate_limited"))
        raise
    row = (
        await uow.conn.execute(
            select(users).where(users.c.email == email)
            .order_by(users.c.deleted_at.is_(None).desc(), users.c.created_at.desc()).limit(1)
        )
    ).first()
    try:
        await svc.limits.check_account(email)
    except RateLimited:
        uow.emit_always(LoginFailed(reason="rate_limited", user_id=row.id if row else None))
        uow.target("user", row.id if row else None)
        raise
    if not await svc.hasher.verify(row.password_hash if row else None, cmd.password):
        await svc.limits.fail_account(email)
        uow.emit_always(LoginFailed(reason="invalid_credentials", user_id=row.id if row else None))
        uow.target("user", row.id if row else None)
        raise Unauthenticated("wrong e-mail or password", code="invalid_credentials")
    uow.target("user", row.id)
    if row.deleted_at is not None or not row.is_active:
        uow.emit_always(LoginFailed(reason="account_disabled", user_id=row.id))
        raise Forbidden("this account is disabled", code="account_disabled")
    await svc.limits.reset_account(email)
    if svc.hasher.needs_rehash(row.password_hash):
        hashed = await svc.hasher.hash(cmd.password)
        await uow.conn.execute(update(users).where(users.c.id == row.id).values(password_hash=hashed))
    if row.email_otp_enabled:
        return await _start_challenge(uow, row)
    return await _open_session(uow, row.id, mfa=False)


async def _open_session(uow: UnitOfWork, user_id: UUID, *, mfa: bool) -> TokenPair:
    svc = _svc(uow)
    await uow.conn.execute(update(users).where(users.c.id == user_id).values(last_login_at=uow.now))
    sid, refresh, refresh_expires = await svc.sessions.create(
        user_id, ip=uow.actor.ip, user_agent=uow.actor.user_agent, mfa=mfa
    )
    row = await load_user(uow.conn, user_id)
    uow.emit(SessionStarted(user_id=row.id, session_id=sid, mfa=mfa))
    return _token_pair(uow, row, sid, refresh, refresh_expires)


async def _mail_code(uow: UnitOfWork, email: str, code: str) -> None:
    try:
        await _svc(uow).mailer.send(
            email, "Your sign-in code",
            f"Your sign-in code is {code}. It expires in 5 minutes.\n\n"
            "If you did not just try to sign in, tell your administrator.",
        )
    except MailError as exc:
        raise Unavailable("the sign-in code could not be sent", code="otp_delivery_unavailable") from exc


async def _start_challenge(uow: UnitOfWork, row: Any) -> OtpChallenge:
    """Second factor: mail a 6-digit code; the session starts only when it comes back."""
    svc = _svc(uow)
    await svc.otp.check_send_allowed(row.id)
    code = svc.otp.new_code()
    challenge = await svc.otp.create(row.id, code)
    try:
        await _mail_code(uow, row.email, code)
    except Unavailable:
        await svc.otp.discard(challenge.id)
        raise
    await svc.otp.record_send(row.id)
    uow.emit(OtpSent(user_id=row.id, challenge_id=challenge.id))
    return OtpChallenge(otp_required=True, challenge_id=challenge.id, expires_at=_ts(challenge.expires_at),
                        sent_to=mask_email(row.email))


@registry.handles(VerifyOtp)
async def verify_otp(cmd: VerifyOtp, uow: UnitOfWork) -> TokenPair:
    svc = _svc(uow)
    challenge = await svc.otp.get(cmd.challenge_id)
    uow.target("user", challenge.user_id)
    await svc.otp.check_wrong_allowed(challenge.user_id)
    if not await svc.otp.verify(challenge, cmd.code):
        uow.emit_always(LoginFailed(reason="otp_invalid", user_id=challenge.user_id))
        left = MAX_WRONG_PER_CHALLENGE - challenge.attempts
        if left <= 0:
            raise Unauthenticated("too many wrong codes; sign in again", code="otp_expired")
        raise Unauthenticated("wrong code", code="otp_invalid", attemptsLeft=left)
    row = (await uow.conn.execute(select(*USER_COLUMNS).where(users.c.id == challenge.user_id))).first()
    if row is None or row.deleted_at is not None or not row.is_active:
        uow.emit_always(LoginFailed(reason="account_disabled", user_id=challenge.user_id))
        raise Forbidden("this account is disabled", code="account_disabled")
    return await _open_session(uow, row.id, mfa=True)


@registry.handles(ResendOtp)
async def resend_otp(cmd: ResendOtp, uow: UnitOfWork) -> Accepted:
    svc = _svc(uow)
    challenge = await svc.otp.get(cmd.challenge_id)
    uow.target("user", challenge.user_id)
    await svc.otp.check_send_allowed(challenge.user_id)
    row = await load_user(uow.conn, challenge.user_id)
    code = svc.otp.new_code()
    await svc.otp.replace_code(challenge, code)
    await _mail_code(uow, row.email, code)
    await svc.otp.record_send(challenge.user_id)
    uow.emit(OtpSent(user_id=challenge.user_id, challenge_id=challenge.id))
    return Accepted(accepted=True)


@registry.handles(SetEmailOtp)
async def set_email_otp(cmd: SetEmailOtp, uow: UnitOfWork) -> UserDetail:
    svc = _svc(uow)
    caller = _caller(uow)
    row = await load_user(uow.conn, caller, lock=True, with_hash=True)
    uow.target("user", caller)
    await svc.limits.check_account(row.email)
    if not await svc.hasher.verify(row.password_hash, cmd.password):
        await svc.limits.fail_account(row.email)
        raise invalid_field("password", "incorrect", "the password is not right")
    if row.email_otp_enabled == cmd.enabled:
        return user_detail(row)
    row = (
        await uow.conn.execute(
            update(users).where(users.c.id == caller)
            .values(email_otp_enabled=cmd.enabled, updated_at=uow.now, version=users.c.version + 1)
            .returning(*USER_COLUMNS)
        )
    ).one()
    from workers.users.handlers.accounts import user_event

    uow.emit(user_event(UserUpdated, row, ["emailOtpEnabled"]))
    return user_detail(row)


@registry.handles(RefreshSession)
async def refresh_session(cmd: RefreshSession, uow: UnitOfWork) -> TokenPair:
    svc = _svc(uow)
    parsed = split_token(cmd.refresh_token)
    if parsed is None:
        raise Unauthenticated("invalid refresh token", code="invalid_refresh_token")
    sid, secret = parsed
    await svc.limits.hit_refresh(sid)
    info = await svc.sessions.get(sid)
    if info is None:
        raise Unauthenticated("invalid refresh token", code="invalid_refresh_token")
    uow.target("session", sid)
    row = (await uow.conn.execute(select(*USER_COLUMNS).where(users.c.id == info.user_id))).first()
    if row is None or row.deleted_at is not None or not row.is_active:
        await revoke_sessions(uow, info.user_id, [sid], RevokeReason.USER_DISABLED, always=True)
        raise Unauthenticated("invalid refresh token", code="invalid_refresh_token")
    new_secret = svc.sessions.new_secret()
    pair = _token_pair(uow, row, sid, f"{sid}.{new_secret}", await svc.sessions.refresh_expiry(sid))
    rotation = await svc.sessions.rotate(sid, secret, new_secret, _seal(secret, pair))
    if rotation.outcome == "rotated":
        return pair
    if rotation.outcome == "grace" and rotation.grace_pair is not None:
        return _pair_decoder.decode(rotation.grace_pair)
    if rotation.outcome == "reused":
        await revoke_sessions(uow, info.user_id, [sid], RevokeReason.REUSE_DETECTED, always=True)
        raise Unauthenticated("this refresh token was already used; the session is revoked",
                              code="refresh_token_reused")
    raise Unauthenticated("invalid refresh token", code="invalid_refresh_token")


def _seal(secret: str, pair: TokenPair) -> str:
    from workers.users.sessions import seal_for

    return seal_for(secret, encode(pair))


@registry.handles(RevokeSession)
async def revoke_session(cmd: RevokeSession, uow: UnitOfWork) -> None:
    """Logout (own session or a presented refresh token) and `DELETE /auth/sessions/{id}`."""
    svc = _svc(uow)
    uow.target("session", cmd.session_id)
    if cmd.session_id is not None:
        caller = _caller(uow)
        info = await svc.sessions.get(cmd.session_id)
        if info is None or info.user_id != caller:
            if cmd.reason == RevokeReason.SESSION_DELETED:
                raise NotFound("no such session")
            return None
        await revoke_sessions(uow, caller, [cmd.session_id], cmd.reason)
        return None
    if cmd.refresh_token:
        parsed = split_token(cmd.refresh_token)
        if parsed is None:
            return None
        sid, secret = parsed
        uow.target("session", sid)
        info = await svc.sessions.get(sid)
        if info is not None and await svc.sessions.matches(sid, secret):
            await revoke_sessions(uow, info.user_id, [sid], RevokeReason.LOGOUT)
    return None


@registry.handles(RevokeAllSessions)
async def revoke_all_sessions(cmd: RevokeAllSessions, uow: UnitOfWork) -> Revoked:
    caller = _caller(uow)
    uow.target("user", caller)
    return Revoked(revoked=await revoke_all(uow, caller, RevokeReason.LOGOUT_ALL))


@registry.handles(ListSessions)
async def list_sessions(cmd: ListSessions, uow: UnitOfWork) -> list[SessionView]:
    caller = _caller(uow)
    svc = _svc(uow)
    return [
        SessionView(
            id=s.id, created_at=_ts(s.created_at), last_used_at=_ts(s.last_used_at),
            expires_at=_ts(min(s.expires_at, s.last_used_at + uow.settings.refresh_token_idle_ttl)),
            ip=s.ip, user_agent=s.user_agent, mfa=s.mfa, current=s.id == uow.actor.session_id,
        )
        for s in await svc.sessions.list_for(caller)
    ]


@registry.handles(GetMe)
async def get_me(cmd: GetMe, uow: UnitOfWork) -> Me:
    from workers.users.handlers.on_duty import current_duty
    from workers.users.signing_keys import signing_key_state

    row = await load_user(uow.conn, _caller(uow))
    detail = user_detail(row)
    duty = await current_duty(uow.conn, row.id, uow.now)
    return Me(**msgspec.structs.asdict(detail), signing_key=await signing_key_state(uow.conn, row.id),
              current_duty=[msgspec.to_builtins(d) for d in duty])


@registry.handles(UpdateProfile)
async def update_profile(cmd: UpdateProfile, uow: UnitOfWork) -> UserDetail:
    caller = _caller(uow)
    row = await load_user(uow.conn, caller, lock=True)
    changes = {k: v for k, v in msgspec.structs.asdict(cmd).items() if v is not msgspec.UNSET}
    changed = [k for k, v in changes.items() if getattr(row, k) != v]
    uow.target("user", caller)
    if not changed:
        return user_detail(row)
    row = (
        await uow.conn.execute(
            update(users).where(users.c.id == caller)
            .values(**{k: changes[k] for k in changed}, updated_at=uow.now, version=users.c.version + 1)
            .returning(*USER_COLUMNS)
        )
    ).one()
    from workers.users.handlers.accounts import user_event

    uow.emit(user_event(UserUpdated, row, [camel(k) for k in changed]))
    return user_detail(row)


@registry.handles(ChangePassword)
async def change_password(cmd: ChangePassword, uow: UnitOfWork) -> None:
    svc = _svc(uow)
    caller = _caller(uow)
    row = await load_user(uow.conn, caller, lock=True, with_hash=True)
    uow.target("user", caller)
    await svc.limits.check_account(row.email)
    if not await svc.hasher.verify(row.password_hash, cmd.current_password):
        await svc.limits.fail_account(row.email)
        raise invalid_field("currentPassword", "incorrect", "the current password is not right")
    check_policy(cmd.new_password, username=row.username, email=row.email, field="newPassword")
    if cmd.new_password == cmd.current_password:
        raise invalid_field("newPassword", "unchanged", "the new password must differ from the current one")
    hashed = await svc.hasher.hash(cmd.new_password)
    version = (
        await uow.conn.execute(
            update(users).where(users.c.id == caller)
            .values(password_hash=hashed, must_change_password=False, password_changed_at=uow.now,
                    updated_at=uow.now, version=users.c.version + 1)
            .returning(users.c.version)
        )
    ).scalar_one()
    await svc.limits.reset_account(row.email)
    await revoke_all(uow, caller, RevokeReason.PASSWORD_CHANGED, keep=uow.actor.session_id)
    uow.emit(PasswordChanged(user_id=caller, by="self", version=version))
    return None

