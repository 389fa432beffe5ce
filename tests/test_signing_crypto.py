"""Signing-key crypto on its own: the PIN policy, sealing under scrypt + AES-256-GCM, signatures."""

from __future__ import annotations

import hashlib
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from contracts.errors import Invalid
from workers.users import signing_crypto as crypto

PEPPER = "test-pepper-0123456789abcdef-0123456789"


def row_of(sealed: crypto.SealedKey, key_id: uuid.UUID, user_id: uuid.UUID, **changes: Any) -> SimpleNamespace:
    """What the handlers read from users.signing_keys."""
    fields = {"id": key_id, "user_id": user_id, "sealed_private_key": sealed.sealed_private_key,
              "nonce": sealed.nonce, "kdf_salt": sealed.kdf_salt, "kdf_params": sealed.kdf_params}
    return SimpleNamespace(**{**fields, **changes})


@pytest.mark.parametrize(("pin", "code"), [
    ("12345", "invalid_length"), ("1234567890123", "invalid_length"), ("", "invalid_format"),
    ("12a456", "invalid_format"), ("١٢٣٤٥٧", "invalid_format"), ("+123456", "invalid_format"),
    ("000000", "repeated_digit"), ("999999999999", "repeated_digit"),
    ("123456", "sequential"), ("987654", "sequential"), ("0123456789", "sequential"), ("456789012", None),
    ("135790", None), ("112233", None), ("240517", None), ("123457", None), ("098765", None),
])
def test_pin_policy(pin: str, code: str | None) -> None:
    problems = crypto.pin_problems(pin)
    assert [c for c, _ in problems] == ([code] if code else [])
    if code:
        with pytest.raises(Invalid) as caught:
            crypto.check_pin_policy(pin, field="newPin")
        assert caught.value.code == "weak_pin" and caught.value.field == "newPin"
        assert pin == "" or pin not in str(caught.value.to_body())


async def test_seal_open_and_reseal() -> None:
    key_id, user_id = uuid.uuid4(), uuid.uuid4()
    sealed = await crypto.generate_sealed("240517", PEPPER, key_id, user_id)
    assert sealed.kdf_params == {"alg": "scrypt", "n": 2**15, "r": 8, "p": 1, "length": 32}
    assert len(sealed.kdf_salt) == 16 and len(sealed.nonce) == 12
    assert len(sealed.sealed_private_key) == 32 + 16  # the Ed25519 seed and the GCM tag
    public = serialization.load_pem_public_key(sealed.public_key_pem.encode())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert sealed.fingerprint == hashlib.sha256(der).hexdigest()

    row = row_of(sealed, key_id, user_id)
    private = await crypto.open_sealed(row, "240517", PEPPER)
    assert private is not None
    assert crypto.public_pem(private.public_key()) == sealed.public_key_pem
    assert await crypto.open_sealed(row, "240518", PEPPER) is None  # wrong PIN: the tag fails
    assert await crypto.open_sealed(row, "240517", PEPPER + "x") is None  # the pepper is part of the key
    # AAD binds the sealed key to its row and user: copied elsewhere it does not open
    assert await crypto.open_sealed(row_of(sealed, key_id, uuid.uuid4()), "240517", PEPPER) is None
    assert await crypto.open_sealed(row_of(sealed, uuid.uuid4(), user_id), "240517", PEPPER) is None

    assert await crypto.reseal(row, "111111", "135790", PEPPER) is None
    resealed = await crypto.reseal(row, "240517", "135790", PEPPER)
    assert resealed is not None
    blob, nonce, salt = resealed
    assert salt != sealed.kdf_salt and nonce != sealed.nonce
    again = row_of(sealed, key_id, user_id, sealed_private_key=blob, nonce=nonce, kdf_salt=salt)
    assert await crypto.open_sealed(again, "240517", PEPPER) is None
    reopened = await crypto.open_sealed(again, "135790", PEPPER)
    assert reopened is not None and reopened.private_bytes_raw() == private.private_bytes_raw()


async def test_sign_and_verify() -> None:
    key_id, user_id = uuid.uuid4(), uuid.uuid4()
    sealed = await crypto.generate_sealed("240517", PEPPER, key_id, user_id)
    private = await crypto.open_sealed(row_of(sealed, key_id, user_id), "240517", PEPPER)
    assert private is not None
    signature = crypto.sign(private, b'{"a":"b"}')
    assert crypto.sign(private, b'{"a":"b"}') == signature  # Ed25519 is deterministic
    assert crypto.verify(sealed.public_key_pem, signature, b'{"a":"b"}')
    assert not crypto.verify(sealed.public_key_pem, signature, b'{"a":"c"}')
    assert not crypto.verify(sealed.public_key_pem, "not base64!", b'{"a":"b"}')
    other = await crypto.generate_sealed("240517", PEPPER, key_id, user_id)
    assert not crypto.verify(other.public_key_pem, signature, b'{"a":"b"}')
