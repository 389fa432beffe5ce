"""Demo data (spec README §10): `POST /admin/seed-demo` and `imagingctl seed-demo` create one demo
user per role, departments, rooms, services, shift templates and this week's schedules through the
real handlers (with their events), twice without duplicating anything; someone is on duty now;
the demo users sign in with DEMO_PASSWORD; the password is never answered, published or logged;
production refuses, over HTTP and on the command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from contracts.demo import refuse_in_production
from contracts.envelope import Actor
from contracts.errors import Forbidden
from contracts.rpc import RpcClient
from contracts.scheduling import AdvanceResult, AdvanceRoomSchedules
from contracts.settings import Settings
from contracts.tokens import issue_access_token
from edge.routes.admin import seed_password
from tests.support import EventTap, Stack, assert_clean, eventually, free_port, login, make_user

DEMO_EMAILS = {
    "system_admin": "demo.admin@hospital.local",
    "physician": "demo.physician@hospital.local",
    "radiologist": "demo.radiologist@hospital.local",
    "imaging_technician": "demo.technician@hospital.local",
    "reception_staff": "demo.reception@hospital.local",
}
# what a first run makes, whatever day of the week it is
FIXED = {"users": 5, "departments": 3, "rooms": 7, "services": 6, "serviceRooms": 7, "shiftTemplates": 4}
# 7 days: CT-01 morning + afternoon + night (+ the night of the Sunday before), OPD-02 morning + afternoon,
# OPD-01 full day, MRI-01 XR-01 US-01 ER-01 full day
SCHEDULES = 7 * 3 + 1 + 7 * 2 + 7 + 7 * 4
ASSIGNMENTS = 7 * 2 + 8 + 7 * 2 + 7  # radiologist, technician, receptionist, physician
PROD_SECRETS = {"JWT_SECRET": "production-like-jwt-secret-for-tests-0123456789",
                "SIGNING_KEY_PEPPER": "production-like-signing-pepper-for-tests-0123456789"}


def _totals(result: dict[str, Any]) -> dict[str, int]:
    return {k: result["created"][k] + result["existed"][k] for k in result["created"]}


async def _seed(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.post("/admin/seed-demo", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_route_seeds_everything_once_with_its_events(stack: Stack, api: httpx.AsyncClient,
                                                           admin: dict[str, str]) -> None:
    password = stack.env["DEMO_PASSWORD"]
    async with EventTap(stack.env["AMQP_URL"], "users.#") as tap:
        r = await api.post("/admin/seed-demo", headers=admin)
        assert r.status_code == 200, r.text
        assert_clean(r, password)
        report = r.json()
        assert report["passwordSource"] == "DEMO_PASSWORD"
        assert [x["command"] for x in report["results"]] == ["users.seed_demo"]  # the domains that exist today
        first = report["results"][0]
        totals = _totals(first)
        assert {k: totals[k] for k in FIXED} == FIXED, first
        assert totals["roomSchedules"] == SCHEDULES and totals["assignments"] == ASSIGNMENTS, first
        assert first.get("skipped", {}) == {}, first
        assert {a["role"]: a["email"] for a in first["accounts"]} == DEMO_EMAILS

        # every record came through its handler, with its normal event
        created = first["created"]
        expected = {"users.user.created": created["users"], "users.department.created": created["departments"],
                    "users.room.created": created["rooms"], "users.service.created": created["services"],
                    "users.service_room.created": created["serviceRooms"],
                    "users.shift_template.created": created["shiftTemplates"],
                    "users.room_schedule.created": created["roomSchedules"],
                    "users.assignment.created": created["assignments"]}

        def distinct(kind: str) -> dict[str, dict[str, Any]]:
            # delivery is at least once: a consumer counts message ids, not deliveries
            return {e["messageId"]: e for e in tap.of_type(kind)}

        async def all_published() -> bool:
            return all(len(distinct(kind)) >= n for kind, n in expected.items()) and bool(
                [e for e in distinct("users.audit.recorded").values() if e["payload"]["action"] == "users.seed_demo"])

        await eventually(all_published, timeout=20)
        await tap.settle()
        for kind, n in expected.items():
            assert len(distinct(kind)) == n, kind
        [audit] = [e for e in distinct("users.audit.recorded").values()
                   if e["payload"]["action"] == "users.seed_demo"]
        assert audit["payload"]["targetType"] == "demo_data" and audit["payload"]["outcome"] == "success"
        assert audit["actor"]["role"] == "system_admin"
        assert password not in json.dumps(tap.events) and "$argon2" not in json.dumps(tap.events)

    # the timer moves this week's past shifts along (completed shifts take no new assignments);
    # a second run still duplicates nothing and says exactly what was already there
    bus = RpcClient(stack.env["AMQP_URL"], name="seed-demo-test")
    await bus.start()
    try:
        advanced = await bus.call("users.advance_room_schedules", AdvanceRoomSchedules(),
                                  Actor(system="seed-demo-test"), result=AdvanceResult)
    finally:
        await bus.close()
    assert advanced.started >= 0
    again = (await _seed(api, admin))["results"][0]
    assert set(again["created"].values()) == {0}, again
    assert again["existed"] == totals, again
    assert not any(a["created"] for a in again["accounts"])
    rooms = (await api.get("/rooms", params={"q": "CT-01", "limit": 100}, headers=admin)).json()["items"]
    assert [x["code"] for x in rooms].count("CT-01") == 1
    templates = (await api.get("/shift-templates", params={"limit": 100}, headers=admin)).json()["items"]
    assert [t["name"] for t in templates].count("Night") == 1


async def test_non_admins_are_refused(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert (await api.post("/admin/seed-demo")).status_code == 401
    for role in ("physician", "reception_staff"):
        person = await make_user(api, admin, role)
        r = await api.post("/admin/seed-demo", headers=person.headers)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text


async def test_someone_is_on_duty_now_in_a_demo_room(stack: Stack, api: httpx.AsyncClient,
                                                     admin: dict[str, str]) -> None:
    await _seed(api, admin)
    [room] = [x for x in (await api.get("/rooms", params={"q": "CT-01", "limit": 100}, headers=admin)).json()["items"]
              if x["code"] == "CT-01"]
    page = (await api.get(f"/rooms/{room['id']}/on-duty", headers=admin)).json()
    assert page["total"] >= 1, page
    on_duty = page["items"][0]
    assert on_duty["username"] in ("demo.radiologist", "demo.technician"), on_duty
    # the person on duty sees it as their current duty
    email = DEMO_EMAILS["radiologist" if on_duty["username"] == "demo.radiologist" else "imaging_technician"]
    r = await login(api, email, stack.env["DEMO_PASSWORD"])
    assert r.status_code == 200, r.text
    me = (await api.get("/auth/me", headers={"Authorization": f"Bearer {r.json()['accessToken']}"})).json()
    assert [d["roomId"] for d in me["currentDuty"]] == [room["id"]], me["currentDuty"]


async def test_demo_users_sign_in_with_the_demo_password(stack: Stack, api: httpx.AsyncClient,
                                                         admin: dict[str, str]) -> None:
    await _seed(api, admin)
    for role, email in DEMO_EMAILS.items():
        r = await login(api, email, stack.env["DEMO_PASSWORD"])
        assert r.status_code == 200, (email, r.text)
        user = r.json()["user"]
        assert user["role"] == role and user["mustChangePassword"] is False  # the operator chose it
        assert (await login(api, email, "Not-The-Demo-Passw0rd")).status_code == 401


def _cli(stack: Stack, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers.cli", "seed-demo"], cwd=stack.root,
                          env={**stack.env, **env}, capture_output=True, text=True, timeout=180)


async def test_cli_seeds_through_the_workers(stack: Stack, api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await _seed(api, admin)
    # with DEMO_PASSWORD: the accounts are listed, the password is never printed
    done = _cli(stack)
    assert done.returncode == 0, done.stderr
    for email in DEMO_EMAILS.values():
        assert email in done.stdout
    assert stack.env["DEMO_PASSWORD"] not in done.stdout + done.stderr
    assert "users.seed_demo: created users 0" in done.stdout  # the route made them
    assert "existing demo accounts keep their passwords" in done.stdout

    # without it, a demo account made now gets a generated password, printed once, to be changed
    reception = (await api.get("/users", params={"q": "demo.reception", "limit": 100}, headers=admin)).json()
    [uid] = [u["id"] for u in reception["items"] if u["email"] == DEMO_EMAILS["reception_staff"]]
    assert (await api.delete(f"/users/{uid}", headers=admin)).status_code == 204
    async with EventTap(stack.env["AMQP_URL"], "users.user.created") as tap:
        done = _cli(stack, DEMO_PASSWORD="")
        assert done.returncode == 0, done.stderr
        assert "users.seed_demo: created users 1" in done.stdout
        [line] = [x for x in done.stdout.splitlines() if "one-time password" in x]
        generated = line.rsplit(": ", 1)[1].strip()
        event = await tap.wait_for(lambda e: e["payload"]["username"] == "demo.reception", timeout=15)
        assert event["actor"]["system"] == "seed-demo"
        assert generated not in json.dumps(tap.events)
    r = await login(api, DEMO_EMAILS["reception_staff"], generated)
    assert r.status_code == 200 and r.json()["user"]["mustChangePassword"] is True, r.text
    assert generated not in stack.all_logs() and stack.env["DEMO_PASSWORD"] not in stack.all_logs()

    # nothing was created this time: no password is printed at all
    done = _cli(stack, DEMO_PASSWORD="")
    assert done.returncode == 0 and "one-time password" not in done.stdout, done.stdout


def test_cli_refuses_in_production(stack: Stack) -> None:
    done = _cli(stack, ENVIRONMENT="production", **PROD_SECRETS)
    assert done.returncode != 0 and "refused when ENVIRONMENT=production" in done.stderr, done.stderr


async def test_route_refuses_in_production(stack: Stack, api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """A second edge of the same stack runs with ENVIRONMENT=production (its own JWT secret, so the
    administrator's token is minted with that secret): the role rule still applies, and an
    administrator is refused with 403 not_in_production before anything is sent."""
    me = (await api.get("/auth/me", headers=admin)).json()
    port = free_port()
    stack.start("edge-production", ["edge"], {"ENVIRONMENT": "production", "EDGE_PORT": str(port), **PROD_SECRETS})
    try:
        settings = Settings.from_env({**stack.env, "ENVIRONMENT": "production", **PROD_SECRETS})
        token, _ = issue_access_token(settings, user_id=uuid.UUID(me["id"]), role="system_admin",
                                      session_id=str(uuid.uuid4()), must_change_password=False)
        physician, _ = issue_access_token(settings, user_id=uuid.uuid4(), role="physician",
                                          session_id=str(uuid.uuid4()), must_change_password=False)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as prod:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await prod.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, stack.log_of("edge-production")[-2000:]
                await asyncio.sleep(0.2)
            r = await prod.post("/admin/seed-demo", headers={"Authorization": f"Bearer {physician}"})
            assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
            r = await prod.post("/admin/seed-demo", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 403 and r.json()["code"] == "not_in_production", r.text
    finally:
        stack.stop("edge-production")


@pytest.mark.parametrize("environment", ["development", "test", "staging"])
def test_only_production_is_refused(environment: str) -> None:
    refuse_in_production(Settings(environment=environment, **_secrets()))
    with pytest.raises(Forbidden) as refused:
        refuse_in_production(Settings(environment="production", **_secrets()))
    assert refused.value.code == "not_in_production"


def test_the_route_sends_demo_password_or_none() -> None:
    assert seed_password(Settings(demo_password="Chosen-Demo-Passw0rd")) == ("Chosen-Demo-Passw0rd", False,
                                                                             "DEMO_PASSWORD")
    assert seed_password(Settings()) == (None, True, "generated")  # the worker makes one nobody learns


def _secrets() -> dict[str, str]:
    return {"jwt_secret": PROD_SECRETS["JWT_SECRET"], "signing_key_pepper": PROD_SECRETS["SIGNING_KEY_PEPPER"]}
