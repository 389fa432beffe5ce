"""Runs last in e2e: after everything above, no process log holds a password, hash, token or
secret, and no response of the routes that echo accounts carries one."""

from __future__ import annotations

import re

import httpx
import pytest

from contracts.settings import DEV_JWT_SECRET, DEV_SIGNING_KEY_PEPPER
from tests.support import PASSWORD, Stack, make_user

pytestmark = pytest.mark.asyncio
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")


async def test_no_secret_in_any_log(stack: Stack, api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "radiologist")
    await api.post("/auth/refresh", json={"refreshToken": person.refresh})
    logs = stack.all_logs()
    assert logs, "no logs were written"
    for secret in (stack.env["ADMIN_PASSWORD"], PASSWORD, "Initial-Pass-123!", DEV_JWT_SECRET,
                   DEV_SIGNING_KEY_PEPPER, "$argon2", person.refresh.split(".", 1)[1]):
        assert secret not in logs, f"a secret reached the logs: {secret[:6]}…"
    assert not _JWT.search(logs), "an access token reached the logs"
    assert "access_token=" not in logs


async def test_no_secret_in_account_responses(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "physician")
    bodies = [
        (await api.get("/users", params={"limit": 100}, headers=admin)).text,
        (await api.get(f"/users/{person.id}", headers=admin)).text,
        (await api.get("/auth/me", headers=person.headers)).text,
        (await api.get("/users/directory", headers=person.headers)).text,
        (await api.get("/auth/sessions", headers=person.headers)).text,
        (await api.get("/audit-events", params={"limit": 100}, headers=admin)).text,
    ]
    for body in bodies:
        for needle in ("$argon2", "passwordHash", "password_hash", PASSWORD, person.refresh.split(".", 1)[1]):
            assert needle not in body
