"""`/signing-keys`, `/signatures`, `/users/{id}/signing-keys` (users.md §4).

No route signs arbitrary data: signing happens only in signed transitions, where the edge sends
`users.sign_statement` itself. PINs travel as transient commands (never on the broker's disk).
"""

from __future__ import annotations

from uuid import UUID

from litestar import Request, get, post

from contracts.common import Struct
from contracts.signing import (
    ChangeSigningPin,
    CreateSigningKey,
    GetMySigningKey,
    GetSignature,
    GetSigningKey,
    ListSigningKeys,
    MySigningKey,
    RevokeSigningKey,
    SignatureVerification,
    SignatureView,
    SigningKeyView,
    VerifySignature,
)
from contracts.users import Password, Reason
from edge.access import ADM, PHY, RAD, TECH, roles, staff
from edge.bus import send

TAGS = ["signing"]
SIGNERS = (PHY, RAD, TECH)


class OwnRevokeBody(Struct):
    password: Password
    reason: Reason | None = None


class AdminRevokeBody(Struct):
    reason: Reason


@post("/signing-keys", operation_id="CreateSigningKey", opt=roles(*SIGNERS), tags=TAGS,
      summary="Set up the caller's Ed25519 signing key under a PIN (6–12 digits); 409 if one is active")
async def create_signing_key(request: Request, data: CreateSigningKey) -> SigningKeyView:
    return await send(request, data, status=201, location="/signing-keys")  # type: ignore[return-value]


@get("/signing-keys/mine", operation_id="GetMySigningKey", opt=roles(*SIGNERS), tags=TAGS,
     summary="The caller's signing key: hasKey, status, fingerprint, lockedUntil")
async def my_signing_key(request: Request) -> MySigningKey:
    return await send(request, GetMySigningKey())  # type: ignore[return-value]


@post("/signing-keys/mine/change-pin", operation_id="ChangeSigningPin", opt=roles(*SIGNERS), tags=TAGS,
      status_code=200, summary="Re-seal the caller's key under a new PIN (wrong PINs count toward the lock)")
async def change_pin(request: Request, data: ChangeSigningPin) -> MySigningKey:
    return await send(request, data)  # type: ignore[return-value]


@post("/signing-keys/mine/revoke", operation_id="RevokeMySigningKey", opt=roles(*SIGNERS), tags=TAGS,
      status_code=200, summary="Revoke the caller's key (needs the password); its signatures stay verifiable")
async def revoke_mine(request: Request, data: OwnRevokeBody) -> SigningKeyView:
    cmd = RevokeSigningKey(password=data.password, reason=data.reason)
    return await send(request, cmd)  # type: ignore[return-value]


@get("/signing-keys/{key_id:uuid}", operation_id="GetSigningKey", opt=staff(), tags=TAGS,
     summary="Public information of a signing key, with its status")
async def get_signing_key(request: Request, key_id: UUID) -> SigningKeyView:
    return await send(request, GetSigningKey(id=key_id))  # type: ignore[return-value]


@get("/users/{user_id:uuid}/signing-keys", operation_id="ListUserSigningKeys", opt=staff(), tags=TAGS,
     summary="Public information of all the user's signing keys, newest first")
async def user_signing_keys(request: Request, user_id: UUID) -> list[SigningKeyView]:
    return await send(request, ListSigningKeys(user_id=user_id))  # type: ignore[return-value]


@post("/users/{user_id:uuid}/signing-key/revoke", operation_id="RevokeUserSigningKey", opt=roles(ADM),
      tags=TAGS, status_code=200, summary="Revoke a user's active key (e.g. forgotten PIN); signatures stay verifiable")
async def revoke_users_key(request: Request, user_id: UUID, data: AdminRevokeBody) -> SigningKeyView:
    return await send(request, RevokeSigningKey(user_id=user_id, reason=data.reason))  # type: ignore[return-value]


@get("/signatures/{signature_id:uuid}", operation_id="GetSignature", opt=staff(), tags=TAGS,
     summary="One issued signature with its canonical statement")
async def get_signature(request: Request, signature_id: UUID) -> SignatureView:
    return await send(request, GetSignature(id=signature_id))  # type: ignore[return-value]


@post("/signatures/{signature_id:uuid}/verify", operation_id="VerifySignature", opt=staff(), tags=TAGS,
      status_code=200, summary="Verify a signature by id: valid, keyStatus, signer, signedAt, purpose, entity")
async def verify_signature(request: Request, signature_id: UUID) -> SignatureVerification:
    return await send(request, VerifySignature(id=signature_id))  # type: ignore[return-value]


ROUTES = [create_signing_key, my_signing_key, change_pin, revoke_mine, get_signing_key, user_signing_keys,
          revoke_users_key, get_signature, verify_signature]
