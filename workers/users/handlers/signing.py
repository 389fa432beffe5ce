"""Handlers of the users worker: signing keys and signatures (users.md §2, §3, §6, §7).

Wrong PINs are counted in a transaction of their own: the command's transaction rolls back when
it answers 403 `invalid_pin` / 423 `signing_key_locked`, but the count and the lock must stay. The
handlers have only read when they find a PIN wrong, so that read-only transaction is ended, the
count committed on the same connection (a second pool connection per refused PIN could exhaust the
pool under a burst), and a fresh transaction handed back to the runtime for the refusal.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, NoReturn
from uuid import UUID

from sqlalchemy import and_, case, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from contracts.common import CLINICAL_SIGNERS, Role
from contracts.errors import Conflict, Forbidden, Locked, NotFound, Unauthenticated, invalid_field
from contracts.ids import uuid7
from contracts.signing import (
    PURPOSE_ENTITY,
    ChangeSigningPin,
    CreateSigningKey,
    GetMySigningKey,
    GetSignature,
    GetSigningKey,
    ListSigningKeys,
    MySigningKey,
    RevokeSigningKey,
    SignatureIssued,
    SignatureVerification,
    SignatureView,
    SigningKeyCreated,
    SigningKeyEventBase,
    SigningKeyLocked,
    SigningKeyPinChanged,
    SigningKeyRevoked,
    SigningKeyStatus,
    SigningKeyView,
    SignStatement,
    VerifySignature,
)
from workers.runtime.db import constraint_of, sqlstate_of
from workers.runtime.unit_of_work import UnitOfWork
from workers.users import signing_crypto as crypto
from workers.users.canonical_json import CanonicalizationError, canonicalize
from workers.users.handlers import registry
from workers.users.queries import load_user
from workers.users.services import UsersServices
from workers.users.signing_keys import (
    LOCK_FOR,
    MAX_WRONG_PINS,
    PUBLIC_KEY_COLUMNS,
    active_key,
    build_statement,
    key_by_id,
    key_view,
    keys_of,
    latest_key,
    lock_active,
    my_key_view,
    signature_row,
    signature_view,
    signer_ref,
)
from workers.users.tables import signatures, signing_keys


def _caller(uow: UnitOfWork) -> UUID:
    if uow.actor.user_id is None:
        raise Unauthenticated("sign in first")
    return uow.actor.user_id


async def _signer(uow: UnitOfWork) -> Any:
    """The caller as a signer: a live, active clinician (checked on the record, not the token)."""
    row = await load_user(uow.conn, _caller(uow))
    if not row.is_active:
        raise Forbidden("this account is disabled", code="account_disabled")
    if Role(row.role) not in CLINICAL_SIGNERS:
        raise Forbidden("only physicians, radiologists and imaging technicians hold signing keys")
    return row


def _key_event(kind: type[SigningKeyEventBase], row: Any, **extra: Any) -> SigningKeyEventBase:
    return kind(key_id=row.id, user_id=row.user_id, algorithm=row.algorithm, fingerprint=row.fingerprint, **extra)


def _no_key() -> NotFound:
    return NotFound("no active signing key: set one up first", code="no_signing_key")


def _locked_error(row: Any) -> Locked:
    return Locked("too many wrong PINs; the signing key is locked", lockedUntil=row.locked_until)


async def _unseal(uow: UnitOfWork, row: Any, pin: str) -> Any:
    """The private key of `row` opened with `pin`. A locked key is refused before any work; a
    wrong PIN is counted (5 in a row lock the key for 15 min and tell the user) and refused."""
    if lock_active(row, uow.now):
        uow.target("signing_key", row.id)
        raise _locked_error(row)
    private = await crypto.open_sealed(row, pin, uow.settings.signing_key_pepper)
    if private is None:
        await _count_wrong_pin(uow, row)
    return private


async def _count_wrong_pin(uow: UnitOfWork, row: Any) -> NoReturn:
    k = signing_keys.c
    lapsed = and_(k.locked_until.is_not(None), k.locked_until <= uow.now)
    attempts = case((lapsed, 0), else_=k.failed_attempts) + 1
    conn = uow.conn
    await conn.rollback()  # only reads so far: nothing is lost
    async with conn.begin():  # committed even though the command is refused
        counted = (
            await conn.execute(
                update(signing_keys).where(k.id == row.id, k.status == SigningKeyStatus.ACTIVE)
                .values(failed_attempts=attempts,
                        locked_until=case((attempts >= MAX_WRONG_PINS, uow.now + LOCK_FOR), (lapsed, None),
                                          else_=k.locked_until),
                        updated_at=uow.now)
                .returning(k.failed_attempts, k.locked_until)
            )
        ).first()
    await conn.begin()  # the runtime records the refusal from here
    uow.target("signing_key", row.id)
    if counted is None:  # revoked meanwhile
        raise _no_key()
    if counted.failed_attempts >= MAX_WRONG_PINS:
        if counted.failed_attempts == MAX_WRONG_PINS:  # the attempt that locked it, once
            uow.emit_always(_key_event(SigningKeyLocked, row, locked_until=counted.locked_until))
        raise _locked_error(counted)
    raise Forbidden("wrong PIN", code="invalid_pin", attemptsLeft=MAX_WRONG_PINS - counted.failed_attempts)


@contextlib.contextmanager
def _sealed_parameters() -> Iterator[None]:
    """Around a statement whose parameters hold sealed key material: a database error's text and
    repr carry the parameters, and the runtime logs unexpected errors, so re-raise without them."""
    try:
        yield
    except IntegrityError as exc:
        if constraint_of(exc) == "uq_signing_keys_active":
            raise Conflict("an active signing key exists; revoke it first", code="already_exists") from None
        raise RuntimeError(f"writing a signing key failed (SQLSTATE {sqlstate_of(exc)})") from None
    except DBAPIError as exc:
        raise RuntimeError(f"writing a signing key failed (SQLSTATE {sqlstate_of(exc)})") from None


async def _clear_wrong_pins(uow: UnitOfWork, row: Any) -> None:
    if row.failed_attempts or row.locked_until is not None:
        await uow.conn.execute(
            update(signing_keys).where(signing_keys.c.id == row.id)
            .values(failed_attempts=0, locked_until=None, updated_at=uow.now)
        )


# ---------------------------------------------------------------- keys


@registry.handles(CreateSigningKey)
async def create_signing_key(cmd: CreateSigningKey, uow: UnitOfWork) -> SigningKeyView:
    user = await _signer(uow)
    uow.target("user", user.id)
    crypto.check_pin_policy(cmd.pin)
    if await active_key(uow.conn, user.id) is not None:
        raise Conflict("an active signing key exists; revoke it first", code="already_exists")
    key_id = uuid7()
    sealed = await crypto.generate_sealed(cmd.pin, uow.settings.signing_key_pepper, key_id, user.id)
    with _sealed_parameters():
        row = (
            await uow.conn.execute(
                signing_keys.insert()
                .values(id=key_id, user_id=user.id, algorithm=crypto.ALGORITHM, public_key=sealed.public_key_pem,
                        fingerprint=sealed.fingerprint, sealed_private_key=sealed.sealed_private_key,
                        nonce=sealed.nonce, kdf_salt=sealed.kdf_salt, kdf_params=sealed.kdf_params,
                        created_at=uow.now, updated_at=uow.now)
                .returning(*PUBLIC_KEY_COLUMNS)
            )
        ).one()
    uow.target("signing_key", row.id)
    uow.emit(_key_event(SigningKeyCreated, row, public_key=row.public_key))
    return key_view(row)


@registry.handles(ChangeSigningPin)
async def change_signing_pin(cmd: ChangeSigningPin, uow: UnitOfWork) -> MySigningKey:
    user = await _signer(uow)
    uow.target("user", user.id)
    crypto.check_pin_policy(cmd.new_pin, field="newPin")
    if cmd.new_pin == cmd.current_pin:
        raise invalid_field("newPin", "unchanged", "the new PIN must differ from the current one")
    row = await active_key(uow.conn, user.id, private=True)
    if row is None:
        raise _no_key()
    if lock_active(row, uow.now):
        uow.target("signing_key", row.id)
        raise _locked_error(row)
    resealed = await crypto.reseal(row, cmd.current_pin, cmd.new_pin, uow.settings.signing_key_pepper)
    if resealed is None:
        await _count_wrong_pin(uow, row)
    sealed, nonce, salt = resealed
    uow.target("signing_key", row.id)
    with _sealed_parameters():
        updated = (
            await uow.conn.execute(
                update(signing_keys)
                .where(signing_keys.c.id == row.id, signing_keys.c.status == SigningKeyStatus.ACTIVE,
                       signing_keys.c.version == row.version)
                .values(sealed_private_key=sealed, nonce=nonce, kdf_salt=salt, kdf_params=crypto.KDF_PARAMS,
                        failed_attempts=0, locked_until=None, updated_at=uow.now,
                        version=signing_keys.c.version + 1)
                .returning(*PUBLIC_KEY_COLUMNS)
            )
        ).first()
    if updated is None:
        raise Conflict("the signing key changed meanwhile; try again", code="concurrent_change")
    uow.emit(_key_event(SigningKeyPinChanged, updated))
    return my_key_view(updated, uow.now)


@registry.handles(RevokeSigningKey)
async def revoke_signing_key(cmd: RevokeSigningKey, uow: UnitOfWork) -> SigningKeyView:
    caller = _caller(uow)
    own = cmd.user_id is None or cmd.user_id == caller
    owner = caller if own else cmd.user_id
    uow.target("user", owner)
    if own:
        svc: UsersServices = uow.services
        user = await load_user(uow.conn, caller, with_hash=True)
        if cmd.password is None:
            raise invalid_field("password", "required", "your password confirms the revocation")
        await svc.limits.check_account(user.email)
        if not await svc.hasher.verify(user.password_hash, cmd.password):
            await svc.limits.fail_account(user.email)
            raise invalid_field("password", "incorrect", "the password is not right")
        await svc.limits.reset_account(user.email)
    elif uow.actor.role != Role.SYSTEM_ADMIN:
        raise Forbidden("only an administrator revokes another user's key")
    row = await active_key(uow.conn, owner, lock=True)  # type: ignore[arg-type]
    if row is None:
        raise _no_key()
    # The public half stays for verification; the sealed private half is destroyed.
    revoked = (
        await uow.conn.execute(
            update(signing_keys).where(signing_keys.c.id == row.id)
            .values(status=SigningKeyStatus.REVOKED, revoked_at=uow.now, revoked_by=caller,
                    revoke_reason=cmd.reason, sealed_private_key=b"", nonce=b"", kdf_salt=b"",
                    kdf_params={"destroyed": True}, failed_attempts=0, locked_until=None, updated_at=uow.now,
                    version=signing_keys.c.version + 1)
            .returning(*PUBLIC_KEY_COLUMNS)
        )
    ).one()
    uow.target("signing_key", row.id, by="self" if own else "admin")
    uow.emit(_key_event(SigningKeyRevoked, revoked, by="self" if own else "admin", revoked_by=caller,
                        reason=cmd.reason))
    return key_view(revoked)


@registry.handles(GetMySigningKey)
async def get_my_signing_key(q: GetMySigningKey, uow: UnitOfWork) -> MySigningKey:
    return my_key_view(await latest_key(uow.conn, _caller(uow)), uow.now)


@registry.handles(GetSigningKey)
async def get_signing_key(q: GetSigningKey, uow: UnitOfWork) -> SigningKeyView:
    return key_view(await key_by_id(uow.conn, q.id))


@registry.handles(ListSigningKeys)
async def list_signing_keys(q: ListSigningKeys, uow: UnitOfWork) -> list[SigningKeyView]:
    return await keys_of(uow.conn, q.user_id)


# ---------------------------------------------------------------- signatures


@registry.handles(SignStatement)
async def sign_statement(cmd: SignStatement, uow: UnitOfWork) -> SignatureView:
    """Sign `{purpose, entityType, entityId, contentSha256, signerId, keyId, signedAt}` (RFC 8785
    bytes) with the caller's key opened by the PIN; store and answer the Signature."""
    user = await _signer(uow)
    uow.target("user", user.id)
    if PURPOSE_ENTITY[cmd.purpose] != cmd.entity_type:
        raise invalid_field("entityType", "purpose_mismatch",
                            f"{cmd.purpose} signs a {PURPOSE_ENTITY[cmd.purpose]}, not a {cmd.entity_type}")
    row = await active_key(uow.conn, user.id, private=True)
    if row is None:
        raise _no_key()
    private = await _unseal(uow, row, cmd.pin)
    # The PIN was right. Hold the key row until commit so a concurrent revocation waits for this
    # signature or is seen here; the slow part (scrypt) is already done.
    current = await active_key(uow.conn, user.id, lock=True)
    if current is None or current.id != row.id:
        raise _no_key()
    await _clear_wrong_pins(uow, current)
    signed_at = uow.now.replace(microsecond=uow.now.microsecond // 1000 * 1000)
    signature_id = uuid7()
    statement = build_statement(purpose=cmd.purpose, entity_type=cmd.entity_type, entity_id=cmd.entity_id,
                                content_sha256=cmd.content_sha256, signer_id=user.id, key_id=row.id,
                                signed_at=signed_at)
    message = canonicalize(statement)
    signature = crypto.sign(private, message)
    del private
    await uow.conn.execute(
        signatures.insert().values(
            id=signature_id, key_id=row.id, signer_id=user.id, purpose=cmd.purpose, entity_type=cmd.entity_type,
            entity_id=cmd.entity_id, content_sha256=cmd.content_sha256, statement=statement,
            statement_bytes=message, signature=signature, algorithm=row.algorithm, signed_at=signed_at,
            created_at=uow.now,
        )
    )
    uow.target("signature", signature_id, keyId=str(row.id), purpose=str(cmd.purpose),
               entityType=str(cmd.entity_type), entityId=str(cmd.entity_id))
    uow.emit(SignatureIssued(signature_id=signature_id, key_id=row.id, signer_id=user.id, purpose=cmd.purpose,
                             entity_type=cmd.entity_type, entity_id=cmd.entity_id,
                             content_sha256=cmd.content_sha256, signed_at=signed_at))
    return signature_view(await signature_row(uow.conn, signature_id))


@registry.handles(GetSignature)
async def get_signature(q: GetSignature, uow: UnitOfWork) -> SignatureView:
    return signature_view(await signature_row(uow.conn, q.id))


def _statement_agrees(row: Any) -> bool:
    """The signed bytes are the canonical form of a statement that says what the record says."""
    raw = bytes(row.statement_bytes)
    try:
        parsed = json.loads(raw)
        if not isinstance(parsed, dict) or canonicalize(parsed) != raw or parsed != row.statement:
            return False
    except (ValueError, CanonicalizationError):
        return False
    expected = build_statement(purpose=row.purpose, entity_type=row.entity_type, entity_id=row.entity_id,
                               content_sha256=row.content_sha256, signer_id=row.signer_id, key_id=row.key_id,
                               signed_at=row.signed_at)
    return parsed == expected and row.key_user_id == row.signer_id


@registry.handles(VerifySignature)
async def verify_signature(q: VerifySignature, uow: UnitOfWork) -> SignatureVerification:
    """Valid iff the Ed25519 signature verifies over the stored canonical bytes with the key's
    public half and those bytes state what the record says. A revoked key still verifies what it
    signed before: `keyStatus` tells the caller."""
    row = await signature_row(uow.conn, q.id)
    valid = (
        row.algorithm == row.key_algorithm == crypto.ALGORITHM
        and _statement_agrees(row)
        and crypto.verify(row.public_key, row.signature, bytes(row.statement_bytes))
    )
    return SignatureVerification(
        valid=valid, key_status=SigningKeyStatus(row.key_status), signer=signer_ref(row), signed_at=row.signed_at,
        purpose=row.purpose, entity_type=row.entity_type, entity_id=row.entity_id, signature_id=row.id,
        key_id=row.key_id, content_sha256=row.content_sha256,
    )

