"""Reading signing keys and signatures: rows to views, the statement, the caller's key state.

Views are built from `PUBLIC_KEY_COLUMNS` only; the sealed private key, nonce, KDF salt and
parameters are selected by the signing path alone and never reach a view, an event or a log.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.common import Role, UserRef
from contracts.envelope import now_utc
from contracts.errors import NotFound
from contracts.signing import MySigningKey, SignatureView, SigningKeyStatus, SigningKeyView
from contracts.users import SigningKeyState
from workers.users.tables import signatures, signing_keys, users

MAX_WRONG_PINS = 5  # in a row (users.md §3)
LOCK_FOR = timedelta(minutes=15)

PRIVATE_COLUMNS = frozenset({"sealed_private_key", "nonce", "kdf_salt", "kdf_params"})
PUBLIC_KEY_COLUMNS = [c for c in signing_keys.c if c.name not in PRIVATE_COLUMNS]


def statement_time(at: datetime) -> str:
    """`signedAt` inside a statement: UTC, millisecond precision, `Z` (what a JS Date prints)."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def build_statement(*, purpose: str, entity_type: str, entity_id: UUID, content_sha256: str, signer_id: UUID,
                    key_id: UUID, signed_at: datetime) -> dict[str, str]:
    """What a signature covers (users.md §6), every member a string."""
    return {
        "purpose": str(purpose), "entityType": str(entity_type), "entityId": str(entity_id),
        "contentSha256": content_sha256, "signerId": str(signer_id), "keyId": str(key_id),
        "signedAt": statement_time(signed_at),
    }


def lock_active(row: Any, now: datetime) -> bool:
    return row.locked_until is not None and row.locked_until > now


def attempts_left(row: Any, now: datetime) -> int:
    if row.locked_until is not None and row.locked_until <= now:
        return MAX_WRONG_PINS  # the lock ran out: a fresh run of attempts
    return max(0, MAX_WRONG_PINS - row.failed_attempts)


def key_view(row: Any) -> SigningKeyView:
    return SigningKeyView(
        id=row.id, user_id=row.user_id, algorithm=row.algorithm, public_key=row.public_key,
        fingerprint=row.fingerprint, status=SigningKeyStatus(row.status), created_at=row.created_at,
        revoked_at=row.revoked_at, revoked_by=row.revoked_by, revoke_reason=row.revoke_reason,
    )


def my_key_view(row: Any | None, now: datetime) -> MySigningKey:
    if row is None:
        return MySigningKey(has_key=False)
    active = row.status == SigningKeyStatus.ACTIVE
    return MySigningKey(
        has_key=active, id=row.id, status=SigningKeyStatus(row.status), algorithm=row.algorithm,
        fingerprint=row.fingerprint, locked_until=row.locked_until if active and lock_active(row, now) else None,
        attempts_left=attempts_left(row, now) if active else None, created_at=row.created_at,
    )


async def latest_key(conn: AsyncConnection, user_id: UUID) -> Row[Any] | None:
    """The user's newest key: the active one if there is one (a new key needs the old one revoked)."""
    return (
        await conn.execute(
            select(*PUBLIC_KEY_COLUMNS).where(signing_keys.c.user_id == user_id)
            .order_by((signing_keys.c.status == SigningKeyStatus.ACTIVE).desc(), signing_keys.c.created_at.desc())
            .limit(1)
        )
    ).first()


async def signing_key_state(conn: AsyncConnection, user_id: UUID) -> SigningKeyState:
    """`signingKey` of GET /auth/me: whether the user can sign, and the lock if any. With no
    active key, `status` says `revoked` when the newest key was revoked (null when never set up)."""
    row = await latest_key(conn, user_id)
    if row is None:
        return SigningKeyState(has_key=False)
    active = row.status == SigningKeyStatus.ACTIVE
    now = now_utc()
    return SigningKeyState(
        has_key=active, status=row.status, fingerprint=row.fingerprint,
        locked_until=row.locked_until if active and lock_active(row, now) else None,
    )


async def active_key(conn: AsyncConnection, user_id: UUID, *, private: bool = False,
                     lock: bool = False) -> Row[Any] | None:
    cols = list(signing_keys.c) if private else PUBLIC_KEY_COLUMNS
    stmt = select(*cols).where(signing_keys.c.user_id == user_id, signing_keys.c.status == SigningKeyStatus.ACTIVE)
    if lock:
        stmt = stmt.with_for_update(key_share=True)  # FOR NO KEY UPDATE: signatures may still reference it
    return (await conn.execute(stmt)).first()


async def key_by_id(conn: AsyncConnection, key_id: UUID) -> Row[Any]:
    row = (await conn.execute(select(*PUBLIC_KEY_COLUMNS).where(signing_keys.c.id == key_id))).first()
    if row is None:
        raise NotFound("no such signing key")
    return row


async def keys_of(conn: AsyncConnection, user_id: UUID) -> list[SigningKeyView]:
    exists = (await conn.execute(select(users.c.id).where(users.c.id == user_id))).first()
    if exists is None:
        raise NotFound("no such user")
    rows = (
        await conn.execute(
            select(*PUBLIC_KEY_COLUMNS).where(signing_keys.c.user_id == user_id)
            .order_by(signing_keys.c.created_at.desc(), signing_keys.c.id)
        )
    ).all()
    return [key_view(r) for r in rows]


def signer_ref(row: Any) -> UserRef:
    return UserRef(id=row.signer_id, display_name=f"{row.first_name} {row.last_name}", role=Role(row.role))


async def signature_row(conn: AsyncConnection, signature_id: UUID) -> Row[Any]:
    """The signature with its signer's name and its key's public half and status."""
    stmt = (
        select(signatures, users.c.first_name, users.c.last_name, users.c.role,
               signing_keys.c.public_key, signing_keys.c.status.label("key_status"),
               signing_keys.c.user_id.label("key_user_id"), signing_keys.c.algorithm.label("key_algorithm"))
        .select_from(signatures.join(users, users.c.id == signatures.c.signer_id)
                     .join(signing_keys, signing_keys.c.id == signatures.c.key_id))
        .where(signatures.c.id == signature_id)
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such signature")
    return row


def signature_view(row: Any) -> SignatureView:
    return SignatureView(
        id=row.id, key_id=row.key_id, signer_id=row.signer_id, signer=signer_ref(row), purpose=row.purpose,
        entity_type=row.entity_type, entity_id=row.entity_id, content_sha256=row.content_sha256,
        statement=json.loads(bytes(row.statement_bytes)), signature=row.signature, algorithm=row.algorithm,
        signed_at=row.signed_at,
    )
