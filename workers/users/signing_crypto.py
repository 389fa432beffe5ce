"""Signing keys: Ed25519 key pairs sealed under a PIN-derived key, and the PIN policy (users.md §6).

Key-encryption key = scrypt(PIN ‖ SIGNING_KEY_PEPPER, 16-byte random salt, N=2^15, r=8, p=1),
32 bytes. The Ed25519 private key (its 32-byte seed) is sealed with AES-256-GCM, AAD = key id ‖
user id, so a sealed key copied onto another row or user does not open. The PIN is never stored,
not even hashed: a wrong PIN shows only as a failed authentication of the ciphertext. scrypt costs
~100 ms and 32 MiB, so it runs on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from contracts.errors import FieldError, Invalid

ALGORITHM = "ed25519"
KDF_PARAMS: dict[str, Any] = {"alg": "scrypt", "n": 2**15, "r": 8, "p": 1, "length": 32}
SALT_BYTES = 16
NONCE_BYTES = 12
PIN_MIN, PIN_MAX = 6, 12

# scrypt holds 128·N·r bytes (32 MiB) per derivation: two at a time bound memory and leave the
# other core to the event loop; a burst of signatures waits here, not in the broker.
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scrypt")
    return _pool


# ---------------------------------------------------------------- PIN policy


def pin_problems(pin: str) -> list[tuple[str, str]]:
    """What is wrong with a new PIN: 6–12 digits, not one repeated digit, not a straight run."""
    if not re.fullmatch(r"[0-9]+", pin):
        return [("invalid_format", "the PIN must be digits only")]
    if not PIN_MIN <= len(pin) <= PIN_MAX:
        return [("invalid_length", f"the PIN must have {PIN_MIN} to {PIN_MAX} digits")]
    if len(set(pin)) == 1:
        return [("repeated_digit", "the PIN must not be one digit repeated")]
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if steps in ({1}, {-1}):
        return [("sequential", "the PIN must not be a straight run of digits, up or down")]
    return []


def check_pin_policy(pin: str, field: str = "pin") -> None:
    """422 `weak_pin` naming `field`; the detail never repeats the PIN."""
    problems = pin_problems(pin)
    if problems:
        raise Invalid(problems[0][1], code="weak_pin", field=field,
                      errors=[FieldError(field=field, code=code, detail=detail) for code, detail in problems])


# ---------------------------------------------------------------- sealing


@dataclass(frozen=True, slots=True)
class SealedKey:
    public_key_pem: str
    fingerprint: str
    sealed_private_key: bytes
    nonce: bytes
    kdf_salt: bytes
    kdf_params: dict[str, Any]


def _aad(key_id: UUID, user_id: UUID) -> bytes:
    return key_id.bytes + user_id.bytes


def _kek(pin: str, pepper: str, salt: bytes, params: dict[str, Any]) -> bytes:
    if params.get("alg") != "scrypt":
        raise ValueError(f"unknown KDF {params.get('alg')!r}")
    kdf = Scrypt(salt=salt, length=int(params["length"]), n=int(params["n"]), r=int(params["r"]),
                 p=int(params["p"]))
    return kdf.derive(pin.encode() + pepper.encode())


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint_of(public: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _seal_seed(seed: bytes, pin: str, pepper: str, key_id: UUID, user_id: UUID) -> tuple[bytes, bytes, bytes]:
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    kek = _kek(pin, pepper, salt, KDF_PARAMS)
    return AESGCM(kek).encrypt(nonce, seed, _aad(key_id, user_id)), nonce, salt


def _generate(pin: str, pepper: str, key_id: UUID, user_id: UUID) -> SealedKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    sealed, nonce, salt = _seal_seed(private.private_bytes_raw(), pin, pepper, key_id, user_id)
    return SealedKey(public_pem(public), fingerprint_of(public), sealed, nonce, salt, dict(KDF_PARAMS))


def _open(row: Any, pin: str, pepper: str) -> Ed25519PrivateKey | None:
    """The private key of a signing_keys row, or None when the PIN is wrong."""
    kek = _kek(pin, pepper, bytes(row.kdf_salt), row.kdf_params)
    try:
        seed = AESGCM(kek).decrypt(bytes(row.nonce), bytes(row.sealed_private_key), _aad(row.id, row.user_id))
    except InvalidTag:
        return None
    return Ed25519PrivateKey.from_private_bytes(seed)


def _reseal(row: Any, current_pin: str, new_pin: str, pepper: str) -> tuple[bytes, bytes, bytes] | None:
    private = _open(row, current_pin, pepper)
    if private is None:
        return None
    return _seal_seed(private.private_bytes_raw(), new_pin, pepper, row.id, row.user_id)


async def _run(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_executor(), fn, *args)


async def generate_sealed(pin: str, pepper: str, key_id: UUID, user_id: UUID) -> SealedKey:
    """A new Ed25519 key pair, its private half sealed under the PIN."""
    return await _run(_generate, pin, pepper, key_id, user_id)


async def open_sealed(row: Any, pin: str, pepper: str) -> Ed25519PrivateKey | None:
    """Unseal a stored key with the PIN; None means the PIN is wrong (the tag did not verify)."""
    return await _run(_open, row, pin, pepper)


async def reseal(row: Any, current_pin: str, new_pin: str, pepper: str) -> tuple[bytes, bytes, bytes] | None:
    """The same private key sealed under a new PIN, fresh salt and nonce: (sealed, nonce, salt);
    None when `current_pin` is wrong."""
    return await _run(_reseal, row, current_pin, new_pin, pepper)


# ---------------------------------------------------------------- signatures


def sign(private: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(private.sign(message)).decode("ascii")


def verify(public_key_pem: str, signature_b64: str, message: bytes) -> bool:
    try:
        public = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(public, Ed25519PublicKey):
            return False
        public.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
