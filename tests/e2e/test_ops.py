"""Operations and cross-cutting behaviour of the edge: health, readiness, metrics, API documents,
the role rule of every route, CORS, correlation ids and Idempotency-Key."""

from __future__ import annotations

import hashlib

import httpx
import redis.asyncio as aioredis

from contracts.registry import EVENTS, OPERATIONS, load_all
from edge.access import Access
from edge.app import create_app
from tests.support import Stack, make_user, unique


async def test_health_and_ready(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json() == {"status": "ok"}
    r = await api.get("/ready")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["broker"] == "ok" and checks["redis"] == "ok"
    assert {k for k in checks if k.startswith("worker:")} == {f"worker:{d}" for d in
                                                             ("users", "patients", "imaging", "system")}
    assert all(v["status"] == "ok" for k, v in checks.items() if k.startswith("worker:"))


async def test_metrics_need_an_admin(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await api.get("/metrics", headers=admin)
    assert r.status_code == 200 and "edge_requests_total" in r.text
    assert (await api.get("/metrics")).status_code == 401
    tech = await make_user(api, admin, "imaging_technician")
    assert (await api.get("/metrics", headers=tech.headers)).status_code == 403


def test_every_route_has_an_explicit_rule_and_an_operation_id() -> None:
    app = create_app()
    seen = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if getattr(handler, "http_methods", None) == {"OPTIONS"}:
                continue  # Litestar's generated preflight handlers
            rule = handler.opt.get("access")
            assert isinstance(rule, Access), f"{route.path} has no access rule"
            seen += 1
    assert seen > 30
    schema = app.openapi_schema.to_schema()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()
           if isinstance(op, dict) and "operationId" in op]
    operations = sum(1 for path in schema["paths"].values() for k in path if k in
                     ("get", "post", "put", "patch", "delete"))
    assert len(ids) == operations and len(set(ids)) == len(ids)


async def test_openapi_and_swagger_work_offline(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/departments" in doc["paths"]
    params = {p["name"] for p in doc["paths"]["/users"]["get"]["parameters"]}
    assert {"page", "limit", "sort", "q", "role", "departmentId", "isActive"} <= params
    html = (await api.get("/api/")).text
    assert "/api/static/swagger-ui-bundle.js" in html and "unpkg" not in html and "cdn" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        r = await api.get(f"/api/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 1000


async def test_asyncapi_documents_every_message(api: httpx.AsyncClient) -> None:
    load_all()
    doc = (await api.get("/api/asyncapi.json")).json()
    assert doc["asyncapi"].startswith("2.")
    channels = doc["channels"]
    for name in OPERATIONS:
        if name.startswith("rttest."):
            continue
        assert name in channels and "publish" in channels[name], name
    for name in EVENTS:
        if name.startswith("rttest."):
            continue
        assert name in channels and "subscribe" in channels[name], name
    created = channels["users.department.created"]["subscribe"]["message"]["payload"]
    assert created  # a schema, by reference or inline
    assert "Envelope" in doc["components"]["schemas"]


async def test_cors(api: httpx.AsyncClient) -> None:
    allowed = "http://localhost:5173"
    r = await api.options("/departments", headers={"Origin": allowed, "Access-Control-Request-Method": "POST"})
    assert r.headers.get("access-control-allow-origin") == allowed
    r = await api.options("/departments", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"


async def test_correlation_id_travels(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    cid = "0192f0c4-1111-7222-8333-444455556666"
    r = await api.post("/departments", json={"code": "lower"}, headers={**admin, "X-Correlation-ID": cid})
    assert r.headers["x-correlation-id"] == cid and r.json()["correlationId"] == cid
    r = await api.get("/users")
    assert r.status_code == 401 and r.json()["correlationId"] == r.headers["x-correlation-id"]


async def test_unknown_route_and_method_are_problems(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await api.get("/no-such-thing", headers=admin)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = await api.put("/departments", headers=admin)
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    r = await api.get("/users/not-a-uuid", headers=admin)
    assert r.status_code in (400, 404) and r.headers["content-type"].startswith("application/problem+json")


async def test_idempotency_key(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack) -> None:
    key = unique("idem-")
    body = {"code": unique("I").upper()[:10], "name": "Idempotent"}
    first = await api.post("/departments", json=body, headers={**admin, "Idempotency-Key": key})
    second = await api.post("/departments", json=body, headers={**admin, "Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true" and second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    other = await api.post("/departments", json={**body, "name": "Other"}, headers={**admin, "Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    listed = (await api.get("/departments", params={"q": body["code"], "limit": 100}, headers=admin)).json()
    assert len([d for d in listed["items"] if d["code"] == body["code"]]) == 1

    # A repeat while the first is still running: mark a key as running, as the edge does.
    running_key = unique("idem-")
    me = (await api.get("/auth/token", headers=admin)).json()["sub"]
    digest = hashlib.sha256(f"{me}:/departments:{running_key}".encode()).hexdigest()
    client = aioredis.from_url(stack.env["REDIS_URL"])
    try:
        import hmac

        import msgspec

        from edge.idempotency import _Record

        secret = stack.env.get("JWT_SECRET") or __import__("contracts.settings").settings.DEV_JWT_SECRET
        body_hash = hmac.new(secret.encode(), msgspec.json.encode(body), hashlib.sha256).hexdigest()
        await client.set(f"idem:{digest}", msgspec.msgpack.encode(_Record("running", body_hash)), ex=60)
        r = await api.post("/departments", content=msgspec.json.encode(body),
                           headers={**admin, "Idempotency-Key": running_key, "content-type": "application/json"})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_key_in_use"
    finally:
        await client.aclose()
    too_long = await api.post("/departments", json=body, headers={**admin, "Idempotency-Key": "k" * 129})
    assert too_long.status_code == 400


async def test_timeout_is_504_with_the_command_id_and_the_command_still_completes(
    api: httpx.AsyncClient, admin: dict[str, str], stack: Stack
) -> None:
    """An edge that waits only 1 ms for replies: the client gets 504 `timeout` naming the command,
    and the command, already on the broker, completes anyway."""
    from tests.support import free_port

    port = free_port()
    stack.start("edge-impatient", ["edge"], {"EDGE_PORT": str(port), "COMMAND_TIMEOUT": "1ms"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as impatient:
            async def up() -> bool:
                try:
                    return (await impatient.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            from tests.support import eventually

            await eventually(up, timeout=30)
            code = unique("T").upper()[:10]
            r = await impatient.post("/departments", json={"code": code, "name": "Late"}, headers=admin)
            assert r.status_code == 504, r.text
            problem = r.json()
            assert problem["code"] == "timeout" and problem["commandId"]

        async def created() -> bool:
            return (await api.get(f"/departments/by-code/{code}", headers=admin)).status_code == 200

        await eventually(created)
    finally:
        stack.stop("edge-impatient")


async def test_ready_reports_a_missing_worker(api: httpx.AsyncClient, stack: Stack) -> None:
    stack.stop("imaging")
    try:
        r = await api.get("/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["worker:imaging"]["status"] != "ok"
    finally:
        stack.start("imaging", ["worker", "imaging"])
    from tests.support import eventually

    async def back() -> bool:
        return (await api.get("/ready")).status_code == 200

    await eventually(back, timeout=30)
