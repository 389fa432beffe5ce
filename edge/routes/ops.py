"""Operations: liveness, readiness, metrics, the caller's verified claims, the AsyncAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import MediaType, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.asyncapi import asyncapi_document
from contracts.common import PingResult
from contracts.envelope import Actor
from contracts.imaging import PingImaging
from contracts.patients import PingPatients
from contracts.system import PingSystem
from contracts.users import PingUsers
from edge.access import ADM, public, roles, staff

_PINGS = (PingUsers(), PingPatients(), PingImaging(), PingSystem())


@get("/health", operation_id="Health", opt=public(), tags=["operations"], summary="The process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", operation_id="Ready", opt=public(), tags=["operations"],
     summary="Postgres (through every worker), RabbitMQ and Redis are reachable")
async def ready(request: Request) -> Response[dict[str, Any]]:
    state = request.app.state
    checks: dict[str, Any] = {}

    async def redis_ok() -> None:
        try:
            await asyncio.wait_for(state.redis.ping(), 2.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"

    async def worker_ok(payload: Any) -> None:
        name = type(payload).OPERATION.split(".")[0]
        try:
            result = await state.bus.call(type(payload).OPERATION, payload, Actor(system="edge-ready"),
                                          result=PingResult, timeout=3.0)
            checks[f"worker:{name}"] = {"status": "ok", "uptimeSeconds": result.uptime_seconds}
        except Exception as exc:
            checks[f"worker:{name}"] = {"status": f"unavailable: {getattr(exc, 'code', type(exc).__name__)}"}

    checks["broker"] = "ok" if state.bus.is_ready else "unavailable"
    await asyncio.gather(redis_ok(), *(worker_ok(p) for p in _PINGS))
    ok = checks["broker"] == "ok" and checks["redis"] == "ok" and all(
        v["status"] == "ok" for k, v in checks.items() if k.startswith("worker:")
    )
    return Response({"status": "ready" if ok else "unavailable", "checks": checks},
                    status_code=200 if ok else 503)


@get("/metrics", operation_id="Metrics", opt=roles(ADM), tags=["operations"], media_type=MediaType.TEXT,
     summary="Prometheus metrics of this edge process")
async def metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@get("/auth/token", operation_id="GetTokenClaims", opt=staff(), tags=["auth"],
     summary="The caller's verified token claims, answered without the broker (benchmark baseline)")
async def token_claims(request: Request) -> dict[str, Any]:
    claims = request.scope["user"].claims
    return {"sub": claims.sub, "role": claims.role, "sid": claims.sid, "jti": claims.jti, "iat": claims.iat,
            "exp": claims.exp, "mcp": claims.mcp}


@get("/api/asyncapi.json", operation_id="AsyncApiDocument", opt=public(), tags=["operations"],
     summary="Every command, query and event as an AsyncAPI 2.6 document")
async def asyncapi() -> dict[str, Any]:
    return asyncapi_document()


ROUTES = [health, ready, metrics, token_claims, asyncapi]
