"""Users domain (spec users.md), signing keys and signatures.

A clinician (PHY, RAD, TECH) has at most one active Ed25519 signing key, its private half sealed
under a PIN inside the users worker. Signing happens only in signed transitions: the edge sends
`users.sign_statement` (a transient command: the PIN never touches the broker's disk) and gets a
Signature id back. Anyone signed in can read a signature and have it verified; public keys are
public. Private material (sealed key, nonce, KDF salt and parameters) is in no view, event or log.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta

from contracts.common import Empty, Struct, UserRef, View
from contracts.envelope import Event
from contracts.registry import command, event, query
from contracts.users import Password, Reason

# The policy (6–12 digits, no repeated digit, no straight run) is checked by the worker, so that a
# weak PIN gets the `weak_pin` code naming the field; the bound here only keeps messages small.
Pin = Annotated[str, Meta(min_length=1, max_length=64, description="6–12 digits")]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256")]


class SigningKeyStatus(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class SignaturePurpose(enum.StrEnum):
    STUDY_TECHNICIAN_VERIFY = "study_technician_verify"
    REPORT_SUBMIT = "report_submit"
    REPORT_APPROVE = "report_approve"


class SignedEntityType(enum.StrEnum):
    STUDY = "study"
    REPORT = "report"


# What each purpose signs.
PURPOSE_ENTITY: dict[SignaturePurpose, SignedEntityType] = {
    SignaturePurpose.STUDY_TECHNICIAN_VERIFY: SignedEntityType.STUDY,
    SignaturePurpose.REPORT_SUBMIT: SignedEntityType.REPORT,
    SignaturePurpose.REPORT_APPROVE: SignedEntityType.REPORT,
}


# ---------------------------------------------------------------- views


class SigningKeyView(View):
    """Public information of a signing key: what a verifier needs, nothing private."""

    id: UUID
    user_id: UUID
    algorithm: str
    public_key: str  # PEM, SubjectPublicKeyInfo
    fingerprint: str  # hex SHA-256 of the DER SubjectPublicKeyInfo
    status: SigningKeyStatus
    created_at: datetime
    revoked_at: datetime | None = None
    revoked_by: UUID | None = None
    revoke_reason: str | None = None


class MySigningKey(View):
    """The caller's current key (`hasKey` false when none is active)."""

    has_key: bool
    id: UUID | None = None
    status: SigningKeyStatus | None = None
    algorithm: str | None = None
    fingerprint: str | None = None
    locked_until: datetime | None = None
    attempts_left: int | None = None
    created_at: datetime | None = None


class SignatureView(View):
    """One issued signature. `signature` is the base64 Ed25519 signature of the RFC 8785
    canonical UTF-8 bytes of `statement`."""

    id: UUID
    key_id: UUID
    signer_id: UUID
    signer: UserRef
    purpose: SignaturePurpose
    entity_type: SignedEntityType
    entity_id: UUID
    content_sha256: str
    statement: dict[str, Any]
    signature: str
    algorithm: str
    signed_at: datetime


class SignatureVerification(View):
    valid: bool  # the signature verifies over the stored canonical statement with the key, and the
    # statement agrees with the record (signer, key, purpose, entity, content hash, time)
    key_status: SigningKeyStatus
    signer: UserRef
    signed_at: datetime
    purpose: SignaturePurpose
    entity_type: SignedEntityType
    entity_id: UUID
    signature_id: UUID
    key_id: UUID
    content_sha256: str


# ---------------------------------------------------------------- commands


@command("users.create_signing_key", result=SigningKeyView, transient=True,
         summary="Set up the caller's signing key under a PIN (PHY, RAD, TECH); 409 if one is active")
class CreateSigningKey(Struct):
    pin: Pin


@command("users.change_signing_pin", result=MySigningKey, transient=True,
         summary="Re-seal the caller's signing key under a new PIN")
class ChangeSigningPin(Struct):
    current_pin: Pin
    new_pin: Pin


@command("users.revoke_signing_key",
         result=SigningKeyView,
         summary="Revoke a signing key: the caller's own (with the password) or a user's (ADM, with a reason)")
class RevokeSigningKey(Struct):
    user_id: UUID | None = None  # another user's key (ADM); absent: the caller's own
    password: Password | None = None  # required for the caller's own key
    reason: Reason | None = None


@command("users.sign_statement", result=SignatureView, transient=True,
         summary="Sign a statement over content (signed transitions; sent by the edge, never a route)")
class SignStatement(Struct):
    purpose: SignaturePurpose
    entity_type: SignedEntityType
    entity_id: UUID
    content_sha256: Sha256Hex
    pin: Pin


# ---------------------------------------------------------------- queries


@query("users.get_my_signing_key", result=MySigningKey, summary="The caller's signing key state")
class GetMySigningKey(Empty):
    pass


@query("users.get_signing_key", result=SigningKeyView, summary="Public info of a signing key, incl. status")
class GetSigningKey(Struct):
    id: UUID


@query("users.list_signing_keys", result=list[SigningKeyView], summary="Public info of all a user's keys")
class ListSigningKeys(Struct):
    user_id: UUID


@query("users.get_signature", result=SignatureView, summary="One issued signature")
class GetSignature(Struct):
    id: UUID


@query("users.verify_signature", result=SignatureVerification, summary="Verify an issued signature")
class VerifySignature(Struct):
    id: UUID


# ---------------------------------------------------------------- events (never relayed: realtime.md §3)


class SigningKeyEventBase(Event):
    key_id: UUID
    user_id: UUID
    algorithm: str
    fingerprint: str


@event("users.signing_key.created", relay=False)
class SigningKeyCreated(SigningKeyEventBase):
    public_key: str


@event("users.signing_key.pin_changed", relay=False)
class SigningKeyPinChanged(SigningKeyEventBase):
    pass


@event("users.signing_key.revoked", relay=False)
class SigningKeyRevoked(SigningKeyEventBase):
    by: str  # "self" | "admin"
    revoked_by: UUID | None
    reason: str | None = None


@event("users.signing_key.locked", relay=False)
class SigningKeyLocked(SigningKeyEventBase):
    locked_until: datetime


@event("users.signature.issued", relay=False)
class SignatureIssued(Event):
    signature_id: UUID
    key_id: UUID
    signer_id: UUID
    purpose: SignaturePurpose
    entity_type: SignedEntityType
    entity_id: UUID
    content_sha256: str
    signed_at: datetime
