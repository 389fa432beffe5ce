"""`Idempotency-Key` on authenticated POSTs (spec README §6).

The key, scoped to the caller and the route, fixes the command's message id (UUID v5 of the
scope), so even a retry after a timeout reaches the worker as the same message and its inbox
replays the first result. Redis keeps the finished response for 24 h (replayed with
`Idempotent-Replayed: true`), refuses a repeat while the first is running (409
`idempotency_key_in_use`) and a repeat with another body (422 `idempotency_key_reused`).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from contracts.errors import BadRequest, Conflict, Invalid

TTL = 24 * 3600
MAX_KEY = 128
_NS = uuid.UUID("6f1c1c39-1c7e-4b55-9a51-4b3f3c2b7a10")


class _Record(msgspec.Struct):
    state: str  # running | done
    body_hash: str
    status: int = 0
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Record)
_REPLAYED_HEADERS = {"content-type", "location", "etag"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# Sign-in has its own rules; uploads stream (never buffered here) and are idempotent by SOP Instance UID.
UNBUFFERED = ("/auth/", "/dicom-web/", "/studies/upload")


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        principal = scope.get("user")
        if key is None or principal is None or scope["path"].startswith(UNBUFFERED):
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY:
            raise BadRequest(f"Idempotency-Key must be 1–{MAX_KEY} characters", field="Idempotency-Key")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        # Keyed: a plain hash of a small secret body (a PIN) would be brute-forced from Redis.
        secret = scope["app"].state.settings.jwt_secret.encode()
        body_hash = hmac.new(secret, bytes(body), hashlib.sha256).hexdigest()
        scope_key = f"{principal.user_id}:{scope['path']}:{key}"
        redis_key = "idem:" + hashlib.sha256(scope_key.encode()).hexdigest()
        redis = scope["app"].state.redis
        claimed = await redis.set(redis_key, _enc.encode(_Record("running", body_hash)), nx=True, ex=TTL)
        if not claimed:
            raw = await redis.get(redis_key)
            if raw is not None:
                record = _dec.decode(raw)
                if record.body_hash != body_hash:
                    raise Invalid("this Idempotency-Key was used with a different body",
                                  code="idempotency_key_reused", field="Idempotency-Key")
                if record.state == "running":
                    raise Conflict("a request with this Idempotency-Key is still running",
                                   code="idempotency_key_in_use", field="Idempotency-Key")
                await _replay(record, send)
                return
            await redis.set(redis_key, _enc.encode(_Record("running", body_hash)), ex=TTL)
        scope["command_id"] = uuid.uuid5(_NS, scope_key)

        sent = False

        async def replay_body() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [(k.decode("latin-1"), v.decode("latin-1"))
                                       for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            await redis.delete(redis_key)
            raise
        if captured["status"] >= 500:
            await redis.delete(redis_key)  # a retry may go again; the worker inbox dedupes it
            return
        headers = [(k, v) for k, v in captured["headers"] if k.lower() in _REPLAYED_HEADERS]
        done = _Record("done", body_hash, captured["status"], headers, bytes(captured["body"]))
        await redis.set(redis_key, _enc.encode(done), ex=TTL)


async def _replay(record: _Record, send: Send) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in record.headers]
    headers.append((b"idempotent-replayed", b"true"))
    headers.append((b"content-length", str(len(record.body)).encode()))
    await send({"type": "http.response.start", "status": record.status, "headers": headers})
    await send({"type": "http.response.body", "body": record.body, "more_body": False})
