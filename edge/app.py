"""The edge application factory: Litestar on :5000, thin by design.

It authenticates (JWT), applies each route's role rule, validates the body into a contract
struct, sends it over the bus, and maps the reply. It never touches a database table.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram
from swagger_ui_bundle import swagger_ui_path

from contracts.blobstore import make_blob_store
from contracts.observability import correlation_id, setup_logging
from contracts.registry import load_all
from contracts.settings import Settings, get_settings
from edge.access import Access
from edge.auth import AuthMiddleware, RateWindow, close_auth, open_auth
from edge.bus import RefusalAuditor
from edge.dicomweb import frames as dicomweb_frames
from edge.dicomweb import qido as dicomweb_qido
from edge.dicomweb import rendered as dicomweb_rendered
from edge.dicomweb import stow as dicomweb_stow
from edge.dicomweb import wado as dicomweb_wado
from edge.dicomweb.cache import DicomWebCache
from edge.idempotency import IdempotencyMiddleware
from edge.problems import EXCEPTION_HANDLERS
from edge.routes import (
    admin,
    audit,
    auth,
    departments,
    encounters,
    notifications,
    ops,
    organisation,
    patients,
    scheduling,
    signing,
    studies,
    users,
)

log = logging.getLogger("edge")

REQUESTS = Counter("edge_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("edge_request_seconds", "HTTP request latency", ["route"],
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


_latency: dict[str, Any] = {}
_requests: dict[tuple[str, int], Any] = {}


def _observe(route: str, status: int, seconds: float) -> None:
    latency = _latency.get(route)
    if latency is None:
        latency = _latency[route] = LATENCY.labels(route)
    latency.observe(seconds)
    counter = _requests.get((route, status))
    if counter is None:
        counter = _requests[(route, status)] = REQUESTS.labels(route, str(status))
    counter.inc()


class CorrelationMiddleware:
    """Correlation id in (`X-Correlation-ID`, or a new one) and out; request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid: uuid.UUID | None = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                with contextlib.suppress(ValueError):
                    cid = uuid.UUID(value.decode("latin-1"))
                break
        if cid is None:
            from contracts.ids import uuid7

            cid = uuid7()
        scope["correlation_id"] = cid
        token = correlation_id.set(str(cid))
        header = (b"x-correlation-id", str(cid).encode())
        status = 500

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        started = time.perf_counter()
        route = next(iter(scope["route_handler"].paths))
        try:
            await self.app(scope, receive, tagged)
        finally:
            _observe(route, status, time.perf_counter() - started)
            correlation_id.reset(token)


class DicomWebHeaders:
    """`Cross-Origin-Resource-Policy: cross-origin` on every DICOMweb answer, errors included, so a
    viewer served from another origin (OHIF) may use the images (imaging.md §7)."""

    HEADER = (b"cross-origin-resource-policy", b"cross-origin")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/dicom-web/"):
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.HEADER]
            await send(message)

        await self.app(scope, receive, tagged)


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    state = app.state
    await open_auth(state, settings, "edge")
    state.auditor = RefusalAuditor(state.bus)
    state.rate_window = RateWindow(settings.api_rate_limit_per_minute)
    state.dicomweb_rate_window = RateWindow(settings.dicomweb_rate_limit_per_minute)
    state.blobs = make_blob_store(settings)
    state.dicomweb = DicomWebCache(state.redis, state.bus)
    await state.bus.start()
    state.dicomweb.auditor.start()
    log.info("edge ready", extra={"fields": {"port": settings.edge_port}})
    try:
        yield
    finally:
        await state.dicomweb.auditor.stop()
        await state.blobs.close()
        await close_auth(state)


def _swagger_router() -> Router:
    return create_static_files_router(path="/api/static", directories=[Path(str(swagger_ui_path))],
                                      opt={"access": Access(public=True)}, include_in_schema=False)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    load_all()
    openapi = OpenAPIConfig(
        title="Imaging backend API",
        version="0.1.0",
        description="RIS + PACS behind one API. Errors are RFC 9457 problem+json; lists are paged; "
        "every change is also published as an event (see /api/asyncapi.json).",
        path="/api",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url="/api/static/swagger-ui-bundle.js",
                css_url="/api/static/swagger-ui.css",
                standalone_preset_js_url="/api/static/swagger-ui-standalone-preset.js",
                favicon='<link rel="icon" href="/api/static/favicon-32x32.png">',
            ),
            JsonRenderPlugin(path="/openapi.json"),
        ],
        openapi_router=Router(path="/api", route_handlers=[], opt={"access": Access(public=True)}),
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
        }),
        security=[{"bearer": []}],
        tags=[Tag(name=n) for n in ("auth", "users", "departments", "rooms", "services", "scheduling", "signatures",
                                    "patients", "encounters", "studies", "dicomweb", "notifications", "audit", "admin",
                                    "operations")],
        use_handler_docstrings=False,
    )
    cors = CORSConfig(allow_origins=list(settings.cors_origins), allow_credentials=True,
                      allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                      allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match",
                                     "X-Correlation-ID", "Accept", "If-None-Match"],
                      expose_headers=["Location", "ETag", "Retry-After", "X-Correlation-ID",
                                      "Idempotent-Replayed", "Warning", "Content-Location", "Content-Encoding"])
    groups = (ops, auth, users, departments, organisation, scheduling, signing, patients, encounters, notifications,
              audit, admin, studies, dicomweb_stow, dicomweb_qido, dicomweb_wado, dicomweb_frames, dicomweb_rendered)
    routes: list[Any] = [*(route for group in groups for route in group.ROUTES), _swagger_router()]
    app = Litestar(
        route_handlers=routes,
        middleware=[CorrelationMiddleware, DicomWebHeaders, AuthMiddleware, IdempotencyMiddleware],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi,
        cors_config=cors,
        lifespan=[lifespan],
        state=State({"settings": settings}),
        request_max_body_size=1024 * 1024,
        debug=False,
        logging_config=None,
    )
    return app


def main() -> None:
    """Serve the edge with uvicorn (uvloop + httptools)."""
    import uvicorn

    settings = get_settings()
    setup_logging("edge", settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.edge_host, port=settings.edge_port, loop="uvloop",
                http="httptools", access_log=False, log_config=None, server_header=False,
                proxy_headers=True)
