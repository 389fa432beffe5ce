"""`/admin` (spec README §10): demo data over HTTP, for administrators, never in production.

`POST /admin/seed-demo` sends each domain's seed command in order (contracts.demo.SEED_DEMO_COMMANDS)
and answers their counts. The demo users' password is `DEMO_PASSWORD` of this edge, or, when that
is empty, a random one the worker makes and nobody learns (an administrator then sets a demo user's
password with `POST /users/{id}/reset-password`). It is never part of the answer.
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response, post

from contracts.demo import SeedDemoReport, refuse_in_production, send_seed_commands
from contracts.settings import Settings
from edge.access import ADM, roles
from edge.auth import actor_of

TAGS = ["admin"]


def seed_password(settings: Settings) -> tuple[str | None, bool, str]:
    """(password to send, must it be changed at first sign-in, where it came from)."""
    if settings.demo_password:
        return settings.demo_password, False, "DEMO_PASSWORD"
    return None, True, "generated"


@post("/admin/seed-demo", operation_id="SeedDemo", opt=roles(ADM), tags=TAGS, status_code=200,
      summary="Create the demo data of every domain (idempotent); refused with 403 not_in_production in "
              "production; the demo password is never returned")
async def seed_demo(request: Request) -> SeedDemoReport:
    settings: Settings = request.app.state.settings
    refuse_in_production(settings)
    password, must_change, source = seed_password(settings)
    scope = request.scope
    results = await send_seed_commands(
        request.app.state.bus, actor_of(scope), password=password, must_change_password=must_change,
        correlation_id=scope.get("correlation_id"), message_id=scope.get("command_id"),
    )
    report = SeedDemoReport(results=results, password_source=source)
    return Response(msgspec.json.encode(report), media_type="application/json")  # type: ignore[return-value]


ROUTES = [seed_demo]
