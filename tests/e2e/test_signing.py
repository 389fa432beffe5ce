"""Signing keys and signatures against the real stack (users.md §2–4, §6–7): set-up under a PIN,
signing over the bus (`users.sign_statement`, as the edge does in signed transitions), reading and
verifying over HTTP, wrong-PIN counting and the lock, PIN change, revocation, and where the PIN
and the private key never go (broker disk, replies, events, logs)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.envelope import Actor, Reply
from contracts.rpc import RpcClient
from contracts.settings import Settings
from contracts.signing import SignStatement
from tests.support import EventTap, Person, Stack, make_user, unique
from workers.users.canonical_json import canonicalize
from workers.users.signing_crypto import pin_problems
from workers.users.signing_keys import signing_key_state

pytestmark = pytest.mark.asyncio

PRIVATE_NAMES = {"sealedPrivateKey", "sealed_private_key", "privateKey", "nonce", "kdfSalt", "kdf_salt",
                 "kdfParams", "kdf_params", "pin", "currentPin", "newPin"}


# ---------------------------------------------------------------- helpers


def new_pin() -> str:
    """A random valid 12-digit PIN: long enough that it cannot appear anywhere by chance."""
    while True:
        pin = f"{secrets.randbelow(10**12):012d}"
        if not pin_problems(pin):
            return pin


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    return body


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def assert_no_private(value: Any, *secrets_: str) -> None:
    assert not _keys(value) & PRIVATE_NAMES, value
    text = json.dumps(value)
    for secret in secrets_:
        assert secret not in text


def actor_of(person: Person) -> Actor:
    return Actor(user_id=uuid.UUID(person.id), role=person.role)


@pytest.fixture(scope="module")
async def bus(stack: Stack) -> AsyncIterator[RpcClient]:
    client = RpcClient(stack.env["AMQP_URL"], name="signing-test", timeout=30)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        yield conn
    finally:
        await conn.close()


def content() -> str:
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


async def sign(bus: RpcClient, person: Person, pin: str, **fields: Any) -> Reply:
    payload = {"purpose": "report_submit", "entity_type": "report", "entity_id": uuid.uuid4(),
               "content_sha256": content(), "pin": pin, **fields}
    return await bus.call_raw("users.sign_statement", SignStatement(**payload), actor_of(person))


def ok(reply: Reply) -> dict[str, Any]:
    assert reply.error is None, reply.error
    return msgspec.json.decode(reply.ok)


def error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.error is not None, bytes(reply.ok)
    assert (reply.error.status, reply.error.code) == (status, code), reply.error
    return reply.error.extra or {}


async def signer_with_key(api: httpx.AsyncClient, admin: dict[str, str], role: str = "radiologist"
                          ) -> tuple[Person, str, dict[str, Any]]:
    person = await make_user(api, admin, role)
    pin = new_pin()
    r = await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)
    assert r.status_code == 201, r.text
    return person, pin, r.json()


def verify_independently(public_pem: str, signature: dict[str, Any]) -> None:
    """What any outside verifier does: canonicalise the statement, check Ed25519 with the PEM."""
    public = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(public, Ed25519PublicKey)
    statement = signature["statement"]
    # every member is an ASCII string, so sorted compact JSON is the RFC 8785 form as well
    plain = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    assert canonicalize(statement) == plain
    public.verify(base64.b64decode(signature["signature"]), plain)  # raises if invalid


# ---------------------------------------------------------------- keys


async def test_set_up_a_key_and_read_its_public_half(api: httpx.AsyncClient, admin: dict[str, str],
                                                     stack: Stack) -> None:
    person = await make_user(api, admin, "physician")
    colleague = await make_user(api, admin, "reception_staff")
    pin = new_pin()
    r = await api.get("/signing-keys/mine", headers=person.headers)
    assert r.status_code == 200 and r.json()["hasKey"] is False, r.text
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.*") as tap:
        r = await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)
        assert r.status_code == 201, r.text
        key = r.json()
        assert r.headers["location"] == f"/signing-keys/{key['id']}"
        event = await tap.wait_for(lambda e: e["type"] == "users.signing_key.created"
                                   and e["payload"]["keyId"] == key["id"])
    assert {"id", "algorithm", "publicKey", "fingerprint"} <= set(key)
    assert key["algorithm"] == "ed25519" and key["status"] == "active" and key["userId"] == person.id
    public = serialization.load_pem_public_key(key["publicKey"].encode())
    assert isinstance(public, Ed25519PublicKey)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key["fingerprint"] == hashlib.sha256(der).hexdigest()
    assert event["payload"]["publicKey"] == key["publicKey"] and event["payload"]["userId"] == person.id
    assert_no_private(key, pin)
    assert_no_private(event, pin)

    mine = (await api.get("/signing-keys/mine", headers=person.headers)).json()
    assert mine == {"hasKey": True, "id": key["id"], "status": "active", "algorithm": "ed25519",
                    "fingerprint": key["fingerprint"], "lockedUntil": None, "attemptsLeft": 5,
                    "createdAt": key["createdAt"]}
    for reader in (colleague.headers, admin):  # public key info is for every signed-in user
        r = await api.get(f"/signing-keys/{key['id']}", headers=reader)
        assert r.status_code == 200 and r.json() == key, r.text
        r = await api.get(f"/users/{person.id}/signing-keys", headers=reader)
        assert r.status_code == 200 and r.json() == [key], r.text
    assert_problem(await api.post("/signing-keys", json={"pin": new_pin()}, headers=person.headers),
                   409, "already_exists")
    assert_problem(await api.get(f"/signing-keys/{uuid.uuid4()}", headers=person.headers), 404, "not_found")
    assert_problem(await api.get(f"/users/{uuid.uuid4()}/signing-keys", headers=person.headers), 404, "not_found")
    r = await api.get(f"/users/{colleague.id}/signing-keys", headers=person.headers)
    assert r.status_code == 200 and r.json() == []


async def test_only_clinicians_hold_keys(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    reception = await make_user(api, admin, "reception_staff")
    for headers in (reception.headers, admin):
        assert_problem(await api.post("/signing-keys", json={"pin": new_pin()}, headers=headers), 403, "forbidden")
        assert_problem(await api.get("/signing-keys/mine", headers=headers), 403, "forbidden")
        assert_problem(await api.post("/signing-keys/mine/change-pin", json={"currentPin": "1", "newPin": "2"},
                                      headers=headers), 403, "forbidden")
    assert_problem(await api.post("/signing-keys", json={"pin": new_pin()}), 401, "unauthenticated")
    for role in ("physician", "radiologist", "imaging_technician"):
        person = await make_user(api, admin, role)
        r = await api.post("/signing-keys", json={"pin": new_pin()}, headers=person.headers)
        assert r.status_code == 201, r.text
        # someone else's key cannot be revoked through the owner's routes or the admin's
        assert_problem(await api.post(f"/users/{person.id}/signing-key/revoke", json={"reason": "x"},
                                      headers=person.headers), 403, "forbidden")


@pytest.mark.parametrize("pin", ["12345", "1234567890123", "12a456", "12 3456", "111111", "000000000000",
                                 "123456", "987654", "3456789", "٣٤٥٦٧٩"])
async def test_pin_policy(api: httpx.AsyncClient, admin: dict[str, str], pin: str) -> None:
    person = await make_user(api, admin, "imaging_technician")
    r = await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)
    body = assert_problem(r, 422, "weak_pin")
    assert body["field"] == "pin" and body["errors"][0]["field"] == "pin"
    assert pin not in r.text
    assert (await api.get("/signing-keys/mine", headers=person.headers)).json()["hasKey"] is False
    for good in ("135792", "246813579024"):
        assert not pin_problems(good)


# ---------------------------------------------------------------- signing and verifying


async def test_sign_over_the_bus_then_read_and_verify_over_http(api: httpx.AsyncClient, admin: dict[str, str],
                                                                bus: RpcClient, stack: Stack) -> None:
    person, pin, key = await signer_with_key(api, admin, "imaging_technician")
    reader = await make_user(api, admin, "reception_staff")
    entity, sha = uuid.uuid4(), content()
    async with EventTap(stack.env["AMQP_URL"], "users.signature.*") as tap:
        issued = ok(await sign(bus, person, pin, purpose="study_technician_verify", entity_type="study",
                               entity_id=entity, content_sha256=sha))
        event = await tap.wait_for(lambda e: e["payload"]["signatureId"] == issued["id"])
    assert event["type"] == "users.signature.issued"
    assert event["payload"] | {"signedAt": None} == {
        "signatureId": issued["id"], "keyId": key["id"], "signerId": person.id, "purpose": "study_technician_verify",
        "entityType": "study", "entityId": str(entity), "contentSha256": sha, "signedAt": None}
    statement = issued["statement"]
    assert statement == {"purpose": "study_technician_verify", "entityType": "study", "entityId": str(entity),
                         "contentSha256": sha, "signerId": person.id, "keyId": key["id"],
                         "signedAt": statement["signedAt"]}
    assert statement["signedAt"].endswith("Z") and len(statement["signedAt"]) == 24  # ms precision, UTC

    r = await api.get(f"/signatures/{issued['id']}", headers=reader.headers)
    assert r.status_code == 200, r.text
    signature = r.json()
    assert signature == issued
    assert signature["signer"] == {"id": person.id, "displayName": signature["signer"]["displayName"],
                                   "role": "imaging_technician"}
    assert signature["algorithm"] == "ed25519" and len(base64.b64decode(signature["signature"])) == 64
    public = (await api.get(f"/signing-keys/{signature['keyId']}", headers=reader.headers)).json()["publicKey"]
    verify_independently(public, signature)

    r = await api.post(f"/signatures/{issued['id']}/verify", headers=reader.headers)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["valid"] is True and result["keyStatus"] == "active"
    assert result["signer"]["id"] == person.id and result["signedAt"] == signature["signedAt"]
    assert (result["purpose"], result["entityType"], result["entityId"]) == ("study_technician_verify", "study",
                                                                            str(entity))
    assert_problem(await api.get(f"/signatures/{uuid.uuid4()}", headers=reader.headers), 404, "not_found")
    assert_problem(await api.post(f"/signatures/{uuid.uuid4()}/verify", headers=reader.headers), 404, "not_found")
    assert_problem(await api.post(f"/signatures/{issued['id']}/verify"), 401, "unauthenticated")


async def test_verify_detects_a_tampered_record(api: httpx.AsyncClient, admin: dict[str, str], bus: RpcClient,
                                                db: asyncpg.Connection) -> None:
    person, pin, _ = await signer_with_key(api, admin)
    originals = [ok(await sign(bus, person, pin)) for _ in range(3)]
    # what an attacker with write access to the table might change, one per signature
    await db.execute("UPDATE users.signatures SET content_sha256 = $2 WHERE id = $1",
                     uuid.UUID(originals[0]["id"]), content())
    # a consistent rewrite (record, statement and canonical bytes agree): only the signature can tell
    rewritten = {**originals[1]["statement"], "purpose": "report_approve"}
    await db.execute("UPDATE users.signatures SET purpose = 'report_approve', statement = $2::jsonb,"
                     " statement_bytes = $3 WHERE id = $1", uuid.UUID(originals[1]["id"]), json.dumps(rewritten),
                     canonicalize(rewritten))
    forged = bytearray(base64.b64decode(originals[2]["signature"]))
    forged[0] ^= 1
    await db.execute("UPDATE users.signatures SET signature = $2 WHERE id = $1", uuid.UUID(originals[2]["id"]),
                     base64.b64encode(bytes(forged)).decode())
    for original in originals:
        r = await api.post(f"/signatures/{original['id']}/verify", headers=person.headers)
        assert r.status_code == 200 and r.json()["valid"] is False, r.text


async def test_sign_refusals(api: httpx.AsyncClient, admin: dict[str, str], bus: RpcClient) -> None:
    person, pin, _ = await signer_with_key(api, admin, "physician")
    keyless = await make_user(api, admin, "physician")
    reception = await make_user(api, admin, "reception_staff")
    error(await sign(bus, person, pin, purpose="report_approve", entity_type="study"), 422, "validation_failed")
    error(await sign(bus, keyless, new_pin()), 404, "no_signing_key")
    error(await sign(bus, reception, new_pin()), 403, "forbidden")
    raw = {"purpose": "report_submit", "entityType": "report", "entityId": str(uuid.uuid4()),
           "contentSha256": "ABC", "pin": pin}
    reply = await bus.call_raw("users.sign_statement", msgspec.Raw(json.dumps(raw).encode()), actor_of(person))
    assert reply.error is not None and reply.error.field == "contentSha256", reply.error
    # there is no way to name another user's key: the answer is the same whether they have one or not
    for other in (person.id, keyless.id):
        reply = await bus.call_raw("users.sign_statement", msgspec.Raw(json.dumps(
            {**raw, "contentSha256": content(), "userId": other}).encode()), actor_of(keyless))
        assert reply.error is not None and reply.error.code == "validation_failed"
        assert reply.error.field == "userId"
    r = await api.post(f"/users/{person.id}/disable", json={"reason": "left"}, headers=admin)
    assert r.status_code == 200, r.text
    error(await sign(bus, person, pin), 403, "account_disabled")


async def test_wrong_pins_count_in_a_row_then_lock_for_15_minutes(api: httpx.AsyncClient, admin: dict[str, str],
                                                                  bus: RpcClient, stack: Stack,
                                                                  db: asyncpg.Connection) -> None:
    person, pin, key = await signer_with_key(api, admin, "radiologist")
    wrong = new_pin()
    assert error(await sign(bus, person, wrong), 403, "invalid_pin") == {"attemptsLeft": 4}
    assert error(await sign(bus, person, wrong), 403, "invalid_pin") == {"attemptsLeft": 3}
    ok(await sign(bus, person, pin))  # a right PIN ends the run
    assert (await api.get("/signing-keys/mine", headers=person.headers)).json()["attemptsLeft"] == 5
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.locked") as tap:
        for left in (4, 3, 2, 1):
            assert error(await sign(bus, person, wrong), 403, "invalid_pin") == {"attemptsLeft": left}
        r = await api.post("/signing-keys/mine/change-pin", json={"currentPin": wrong, "newPin": new_pin()},
                           headers=person.headers)  # change-pin counts toward the same lock
        body = assert_problem(r, 423, "signing_key_locked")
        locked = await tap.wait_for(lambda e: e["payload"]["keyId"] == key["id"])
        assert locked["payload"]["userId"] == person.id
        assert locked["payload"]["lockedUntil"] == body["lockedUntil"]
        # locked: even the right PIN is refused, without another event
        assert error(await sign(bus, person, pin), 423, "signing_key_locked")["lockedUntil"]
        assert_problem(await api.post("/signing-keys/mine/change-pin", json={"currentPin": pin, "newPin": new_pin()},
                                      headers=person.headers), 423, "signing_key_locked")
        await tap.settle()
        assert len(tap.of_type("users.signing_key.locked")) == 1
    mine = (await api.get("/signing-keys/mine", headers=person.headers)).json()
    assert mine["lockedUntil"] is not None and mine["attemptsLeft"] == 0
    until = await db.fetchval("SELECT locked_until - now() FROM users.signing_keys WHERE id = $1",
                              uuid.UUID(key["id"]))
    assert 14 * 60 < until.total_seconds() <= 15 * 60
    # fifteen minutes later (moved back in the database, not waited for): a fresh run of attempts
    await db.execute("UPDATE users.signing_keys SET locked_until = now() - interval '1 second' WHERE id = $1",
                     uuid.UUID(key["id"]))
    assert (await api.get("/signing-keys/mine", headers=person.headers)).json()["lockedUntil"] is None
    assert error(await sign(bus, person, wrong), 403, "invalid_pin") == {"attemptsLeft": 4}
    ok(await sign(bus, person, pin))
    row = await db.fetchrow("SELECT failed_attempts, locked_until FROM users.signing_keys WHERE id = $1",
                            uuid.UUID(key["id"]))
    assert (row["failed_attempts"], row["locked_until"]) == (0, None)


async def test_concurrent_wrong_pins_lock_once(api: httpx.AsyncClient, admin: dict[str, str], bus: RpcClient,
                                               stack: Stack) -> None:
    person, _, key = await signer_with_key(api, admin, "physician")
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.locked") as tap:
        replies = await asyncio.gather(*(sign(bus, person, new_pin()) for _ in range(20)))
        codes = sorted(r.error.code for r in replies if r.error is not None)
        assert len(codes) == 20 and set(codes) <= {"invalid_pin", "signing_key_locked"}
        assert codes.count("invalid_pin") == 4, codes  # attempts 1–4; the 5th locks; the rest find it locked
        await tap.wait_for(lambda e: e["payload"]["keyId"] == key["id"])
        await tap.settle()
        assert len(tap.of_type("users.signing_key.locked")) == 1


async def test_change_pin_reseals_the_same_key(api: httpx.AsyncClient, admin: dict[str, str], bus: RpcClient,
                                               db: asyncpg.Connection, stack: Stack) -> None:
    person, pin, key = await signer_with_key(api, admin, "imaging_technician")
    before = await db.fetchrow("SELECT * FROM users.signing_keys WHERE id = $1", uuid.UUID(key["id"]))
    fresh = new_pin()
    url = "/signing-keys/mine/change-pin"
    body = assert_problem(await api.post(url, json={"currentPin": pin, "newPin": "123456"}, headers=person.headers),
                          422, "weak_pin")
    assert body["field"] == "newPin"
    assert_problem(await api.post(url, json={"currentPin": pin, "newPin": pin}, headers=person.headers),
                   422, "validation_failed")
    body = assert_problem(await api.post(url, json={"currentPin": new_pin(), "newPin": fresh},
                                         headers=person.headers), 403, "invalid_pin")
    assert body["attemptsLeft"] == 4
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.*") as tap:
        r = await api.post(url, json={"currentPin": pin, "newPin": fresh}, headers=person.headers)
        assert r.status_code == 200, r.text
        await tap.wait_for(lambda e: e["type"] == "users.signing_key.pin_changed"
                           and e["payload"]["keyId"] == key["id"])
    assert r.json()["id"] == key["id"] and r.json()["fingerprint"] == key["fingerprint"]
    assert r.json()["attemptsLeft"] == 5  # the right current PIN ended the run
    after = await db.fetchrow("SELECT * FROM users.signing_keys WHERE id = $1", uuid.UUID(key["id"]))
    assert after["public_key"] == before["public_key"]
    for column in ("sealed_private_key", "nonce", "kdf_salt"):
        assert after[column] != before[column]
    assert json.loads(after["kdf_params"]) == {"alg": "scrypt", "n": 32768, "r": 8, "p": 1, "length": 32}
    assert len(after["kdf_salt"]) == 16 and len(after["nonce"]) == 12
    error(await sign(bus, person, pin), 403, "invalid_pin")
    signed = ok(await sign(bus, person, fresh))
    assert signed["keyId"] == key["id"]
    verify_independently(key["publicKey"], signed)
    assert_problem(await api.post(url, json={"currentPin": fresh, "newPin": new_pin()},
                                  headers=(await make_user(api, admin, "physician")).headers), 404, "no_signing_key")


async def test_revocation_keeps_old_signatures_verifiable(api: httpx.AsyncClient, admin: dict[str, str],
                                                          bus: RpcClient, db: asyncpg.Connection,
                                                          stack: Stack) -> None:
    person, pin, key = await signer_with_key(api, admin, "radiologist")
    old = ok(await sign(bus, person, pin))
    url = "/signing-keys/mine/revoke"
    body = assert_problem(await api.post(url, json={"password": "not-the-password"}, headers=person.headers),
                          422, "validation_failed")
    assert body["field"] == "password"
    assert_problem(await api.post(url, json={}, headers=person.headers), 422, "validation_failed")
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.revoked") as tap:
        r = await api.post(url, json={"password": person.password, "reason": "device lost"}, headers=person.headers)
        assert r.status_code == 200, r.text
        event = await tap.wait_for(lambda e: e["payload"]["keyId"] == key["id"])
    revoked = r.json()
    assert revoked["status"] == "revoked" and revoked["revokedBy"] == person.id
    assert revoked["revokeReason"] == "device lost" and revoked["revokedAt"]
    assert event["payload"]["by"] == "self" and event["payload"]["reason"] == "device lost"
    row = await db.fetchrow("SELECT sealed_private_key, kdf_salt FROM users.signing_keys WHERE id = $1",
                            uuid.UUID(key["id"]))
    assert row["sealed_private_key"] == b"" and row["kdf_salt"] == b""  # the private half is gone

    r = await api.post(f"/signatures/{old['id']}/verify", headers=admin)
    assert r.status_code == 200 and r.json()["valid"] is True and r.json()["keyStatus"] == "revoked", r.text
    assert (await api.get(f"/signing-keys/{key['id']}", headers=admin)).json()["status"] == "revoked"
    error(await sign(bus, person, pin), 404, "no_signing_key")
    mine = (await api.get("/signing-keys/mine", headers=person.headers)).json()
    assert mine["hasKey"] is False and mine["status"] == "revoked"
    assert_problem(await api.post(url, json={"password": person.password}, headers=person.headers),
                   404, "no_signing_key")

    # a new key after a revocation; an administrator revokes it (forgotten PIN)
    r = await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["fingerprint"] != key["fingerprint"]
    newer = ok(await sign(bus, person, pin))
    async with EventTap(stack.env["AMQP_URL"], "users.signing_key.revoked") as tap:
        r = await api.post(f"/users/{person.id}/signing-key/revoke", json={"reason": "forgotten PIN"}, headers=admin)
        assert r.status_code == 200, r.text
        event = await tap.wait_for(lambda e: e["payload"]["keyId"] == second["id"])
    assert event["payload"]["by"] == "admin" and event["payload"]["reason"] == "forgotten PIN"
    assert r.json()["status"] == "revoked" and r.json()["revokeReason"] == "forgotten PIN"
    assert_problem(await api.post(f"/users/{person.id}/signing-key/revoke", json={"reason": "again"}, headers=admin),
                   404, "no_signing_key")
    assert_problem(await api.post(f"/users/{person.id}/signing-key/revoke", json={}, headers=admin),
                   422, "validation_failed")
    keys = (await api.get(f"/users/{person.id}/signing-keys", headers=person.headers)).json()
    assert [k["id"] for k in keys] == [second["id"], key["id"]] and {k["status"] for k in keys} == {"revoked"}
    for signature in (old, newer):
        result = (await api.post(f"/signatures/{signature['id']}/verify", headers=person.headers)).json()
        assert result["valid"] is True and result["keyStatus"] == "revoked"
    me = (await api.get("/signing-keys/mine", headers=person.headers)).json()
    assert me["hasKey"] is False and me["id"] == second["id"]


async def test_signing_key_state_for_auth_me(api: httpx.AsyncClient, admin: dict[str, str], bus: RpcClient,
                                            stack: Stack) -> None:
    """`signing_key_state(conn, user_id)`, the `signingKey` member of GET /auth/me, in each state."""
    engine = create_async_engine(Settings.from_env(stack.env).sqlalchemy_url)
    person = await make_user(api, admin, "physician")
    user_id = uuid.UUID(person.id)

    async def state() -> dict[str, Any]:
        async with engine.connect() as conn:
            return msgspec.to_builtins(await signing_key_state(conn, user_id))

    try:
        assert await state() == {"hasKey": False, "status": None, "fingerprint": None, "lockedUntil": None}
        pin = new_pin()
        key = (await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)).json()
        assert await state() == {"hasKey": True, "status": "active", "fingerprint": key["fingerprint"],
                                 "lockedUntil": None}
        for _ in range(5):
            await sign(bus, person, new_pin())
        locked = await state()
        assert locked["hasKey"] is True and locked["lockedUntil"] is not None
        r = await api.post("/signing-keys/mine/revoke", json={"password": person.password}, headers=person.headers)
        assert r.status_code == 200, r.text
        assert await state() == {"hasKey": False, "status": "revoked", "fingerprint": key["fingerprint"],
                                 "lockedUntil": None}
    finally:
        await engine.dispose()


# ---------------------------------------------------------------- where the PIN never goes


def _queue_facts(stack: Stack, name: str) -> list[str]:
    vhost = stack.env["AMQP_URL"].rsplit("/", 1)[1]
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "durable", "type"],
                          capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split() for line in done.stdout.splitlines()]
    return next(row for row in rows if row and row[0] == name)


async def test_pin_never_touches_the_broker_disk_nor_any_output(api: httpx.AsyncClient, admin: dict[str, str],
                                                                bus: RpcClient, stack: Stack,
                                                                db: asyncpg.Connection) -> None:
    assert _queue_facts(stack, "users.signing") == ["users.signing", "false", "classic"]
    person = await make_user(api, admin, "physician")
    pin, wrong, fresh = new_pin(), new_pin(), new_pin()
    seen: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    texts: list[str] = []
    try:
        channel = await connection.channel()
        # the sealed queue answers a redeclaration as durable with PRECONDITION_FAILED: it is not durable
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await (await connection.channel()).declare_queue("users.signing", durable=True)
        commands = await channel.get_exchange("commands")
        spy = await channel.declare_queue(f"spy-{unique()}", exclusive=True, auto_delete=True)
        for key in ("users.create_signing_key", "users.change_signing_pin", "users.sign_statement"):
            await spy.bind(commands, routing_key=key)
        async with EventTap(stack.env["AMQP_URL"], "#") as tap:
            r = await api.post("/signing-keys", json={"pin": pin}, headers=person.headers)
            assert r.status_code == 201, r.text
            texts.append(r.text)
            for reply in (await sign(bus, person, pin), await sign(bus, person, wrong)):
                texts.append(bytes(reply.ok).decode() if reply.error is None
                             else json.dumps(msgspec.to_builtins(reply.error)))
            r = await api.post("/signing-keys/mine/change-pin", json={"currentPin": pin, "newPin": fresh},
                               headers=person.headers)
            assert r.status_code == 200, r.text
            texts.append(r.text)
            texts.append((await api.get("/signing-keys/mine", headers=person.headers)).text)
            texts.append((await api.get(f"/users/{person.id}/signing-keys", headers=admin)).text)
            texts.append((await api.get("/audit-events", params={"actorId": person.id, "limit": 100},
                                        headers=admin)).text)
            async with spy.iterator(timeout=10) as messages:
                async for message in messages:
                    seen.append(message)
                    await message.ack()
                    if len(seen) == 4:
                        break
            await tap.wait_for(lambda e: e["type"] == "users.signing_key.pin_changed"
                               and e["payload"]["userId"] == person.id)
            await tap.settle()
            texts.extend(json.dumps(e) for e in tap.events)
    finally:
        await connection.close()
    # every PIN-bearing command went out non-persistent: it never reached the broker's disk
    assert sorted(m.routing_key for m in seen) == ["users.change_signing_pin", "users.create_signing_key",
                                                   "users.sign_statement", "users.sign_statement"]
    assert all(m.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT for m in seen)
    row = await db.fetchrow("SELECT sealed_private_key, nonce, kdf_salt FROM users.signing_keys WHERE user_id = $1",
                            uuid.UUID(person.id))
    private_forms = [v for b in row.values() for v in (b.hex(), base64.b64encode(b).decode())]
    logs = stack.all_logs()
    for secret in (pin, wrong, fresh, *private_forms):
        assert secret not in logs, "a PIN or private key material reached a log"
        for text in texts:
            assert secret not in text, f"a PIN or private key material left the worker: {text[:200]}"
    for text in texts:
        assert not _keys(json.loads(text)) & PRIVATE_NAMES, text[:300]
