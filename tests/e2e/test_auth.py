"""`/auth` over HTTP against the real stack: sign-in, tokens, refresh rotation, logout, sessions,
rate limits and the pending password change (users.md §3–§4).

Sign-ins come from random loopback source addresses (127.x.y.z, as `tests.support.login` does), so
the per-address limit (100 per 15 min) is only ever reached by the test that means to reach it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from redis.asyncio import Redis

from contracts.settings import Settings
from tests.support import (
    PASSWORD,
    EventTap,
    Person,
    Stack,
    assert_clean,
    eventually,
    loopback_address,
    make_user,
    unique,
)

pytestmark = pytest.mark.asyncio

OTHER_ROLES = ("physician", "radiologist", "imaging_technician", "reception_staff")


# ---------------------------------------------------------------- helpers


def client_ip() -> str:
    """A fresh loopback source address for one test's sign-ins."""
    return loopback_address()


def client_at(api: httpx.AsyncClient, ip: str, user_agent: str = "pytest-auth") -> httpx.AsyncClient:
    """A client whose requests come from source address `ip` (every address of 127/8 reaches the edge)."""
    return httpx.AsyncClient(base_url=api.base_url, transport=httpx.AsyncHTTPTransport(local_address=ip),
                             timeout=30, headers={"User-Agent": user_agent})


async def login_from(api: httpx.AsyncClient, email: str, password: str, ip: str,
                     user_agent: str = "pytest-auth") -> httpx.Response:
    async with client_at(api, ip, user_agent) as client:
        return await client.post("/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def jwt_settings(stack: Stack) -> Settings:
    """The JWT settings every process of the stack uses (DEV_JWT_SECRET unless JWT_SECRET is set)."""
    return Settings.from_env(stack.env)


def set_cookies(r: httpx.Response) -> dict[str, dict[str, str]]:
    """Set-Cookie headers by cookie name: {"value": ..., attribute (lower-case): value or ""}."""
    found: dict[str, dict[str, str]] = {}
    for header in r.headers.get_list("set-cookie"):
        first, *attrs = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        cookie = {"value": value.strip('"')}
        for attr in attrs:
            key, _, val = attr.partition("=")
            cookie[key.strip().lower()] = val.strip()
        found[name] = cookie
    return found


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    assert body["type"] == f"/problems/{code}" and body["status"] == status and body["correlationId"]
    return body


async def is_rejected(api: httpx.AsyncClient, token: str) -> bool:
    r = await api.get("/auth/me", headers=bearer(token))
    if r.status_code == 200:
        return False
    assert_problem(r, 401, "unauthenticated")
    return True


async def wait_rejected(api: httpx.AsyncClient, *tokens: str) -> None:
    """The edge learns revocations from `users.session.revoked`: asynchronous by design."""
    for token in tokens:
        await eventually(lambda t=token: is_rejected(api, t), timeout=15)


async def refresh(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.post("/auth/refresh", json={"refreshToken": token})


def redis_client(stack: Stack) -> Redis:
    return Redis.from_url(stack.env["REDIS_URL"])


# ---------------------------------------------------------------- sign-in


async def test_session_records_the_client_address_and_agent(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """Also the precondition of the rate-limit tests: each source address counts on its own."""
    person = await make_user(api, admin, "physician")
    ip = client_ip()
    r = await login_from(api, person.email, person.password, ip, user_agent="pytest-second-device")
    assert r.status_code == 200, r.text
    sid = claims_of(r.json()["accessToken"])["sid"]
    r = await api.get("/auth/sessions", headers=person.headers)
    assert r.status_code == 200, r.text
    mine = {s["id"]: s for s in r.json()}
    assert mine[sid]["ip"] == ip and mine[sid]["userAgent"] == "pytest-second-device"


async def test_login_returns_token_pair_and_refresh_cookie(api: httpx.AsyncClient, admin: dict[str, str],
                                                           stack: Stack) -> None:
    person = await make_user(api, admin, "radiologist", phone="+84 90 123 4567")
    async with EventTap(stack.env["AMQP_URL"], "users.session.started") as tap:
        r = await login_from(api, person.email.upper(), person.password, client_ip())  # e-mail: any case
        assert r.status_code == 200, r.text
        assert_clean(r, person.password)
        pair = r.json()
        assert set(pair) == {"tokenType", "accessToken", "accessTokenExpiresAt", "refreshToken",
                             "refreshTokenExpiresAt", "user"}
        assert pair["tokenType"] == "Bearer"
        user = pair["user"]
        assert user["id"] == person.id and user["email"] == person.email and user["role"] == "radiologist"
        assert user["mustChangePassword"] is False and user["phone"] == "+84 90 123 4567"
        assert user["lastLoginAt"] is not None
        assert "password" not in user and "passwordHash" not in user

        settings = jwt_settings(stack)
        claims = jwt.decode(pair["accessToken"], settings.jwt_secret, algorithms=["HS256"],
                            audience=settings.jwt_audience, issuer=settings.jwt_issuer)
        assert {"iss", "aud", "sub", "role", "sid", "jti", "iat", "exp"} <= set(claims)
        assert claims["sub"] == person.id and claims["role"] == "radiologist" and "mcp" not in claims
        assert claims["exp"] - claims["iat"] == int(settings.access_token_ttl)
        assert jwt.get_unverified_header(pair["accessToken"])["alg"] == "HS256"
        assert pair["refreshToken"].startswith(claims["sid"] + ".")

        cookie = set_cookies(r)["refresh_token"]
        assert cookie["value"] == pair["refreshToken"]
        assert "httponly" in cookie and "secure" in cookie
        assert cookie["samesite"].lower() == "strict" and cookie["path"] == "/auth"
        assert int(cookie["max-age"]) > 0

        event = await tap.wait_for(lambda e: e["payload"]["sessionId"] == claims["sid"])
        assert event["payload"]["userId"] == person.id and event["payload"]["mfa"] is False
        assert event["actor"].get("ip") is None  # events name who acted, not the client's address

    r = await api.get("/auth/me", headers=bearer(pair["accessToken"]))
    assert r.status_code == 200 and r.json()["id"] == person.id
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    assert r.json()["signingKey"]["hasKey"] is False


async def test_wrong_password_and_unknown_email_look_the_same(api: httpx.AsyncClient, admin: dict[str, str],
                                                              stack: Stack) -> None:
    person = await make_user(api, admin, "reception_staff")
    ip = client_ip()
    async with EventTap(stack.env["AMQP_URL"], "users.login.failed") as tap:
        wrong = await login_from(api, person.email, "Not-The-Password-42", ip)
        unknown = await login_from(api, f"{unique('nobody')}@test.local", "Not-The-Password-42", ip)
        for r in (wrong, unknown):
            body = assert_problem(r, 401, "invalid_credentials")
            assert_clean(r, "Not-The-Password-42")
        a, b = wrong.json(), unknown.json()
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if k not in ("correlationId",)} == \
               {k: v for k, v in b.items() if k not in ("correlationId",)}
        assert "user" not in body and "attemptsLeft" not in body
        await tap.wait_for(lambda e: e["payload"].get("userId") == person.id
                           and e["payload"]["reason"] == "invalid_credentials")
        await tap.wait_for(lambda e: e["payload"].get("userId") is None
                           and e["payload"]["reason"] == "invalid_credentials")

    async with client_at(api, ip) as client:
        r = await client.post("/auth/login", json={"email": person.email})
        body = assert_problem(r, 422, "validation_failed")
        assert body["field"] == "password" and body["errors"][0]["code"] == "required"
        r = await client.post("/auth/login", json={"email": person.email, "password": "x", "remember": True})
        assert assert_problem(r, 422, "validation_failed")["field"] == "remember"


async def test_disabled_or_deleted_user_with_right_password_is_refused(api: httpx.AsyncClient,
                                                                       admin: dict[str, str],
                                                                       stack: Stack) -> None:
    disabled = await make_user(api, admin, "physician")
    deleted = await make_user(api, admin, "imaging_technician")
    assert (await api.post(f"/users/{disabled.id}/disable", json={"reason": "on leave"},
                           headers=admin)).status_code == 200
    assert (await api.delete(f"/users/{deleted.id}", headers=admin)).status_code == 204
    ip = client_ip()
    async with EventTap(stack.env["AMQP_URL"], "users.login.failed") as tap:
        for person in (disabled, deleted):
            r = await login_from(api, person.email, person.password, ip)
            assert_problem(r, 403, "account_disabled")
            assert "set-cookie" not in r.headers
            await tap.wait_for(lambda e, p=person: e["payload"].get("userId") == p.id
                               and e["payload"]["reason"] == "account_disabled")
            # the wrong password still says only "wrong credentials"
            assert_problem(await login_from(api, person.email, "Wrong-Password-999", ip), 401,
                           "invalid_credentials")


# ---------------------------------------------------------------- access tokens


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forge(settings: Settings, person: Person, sid: str, *, drop: str | None = None, key: str | None = None,
           algorithm: str = "HS256", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": person.id, "role": person.role,
        "sid": sid, "jti": str(uuid.uuid4()), "iat": now - 5, "exp": now + 120,
    }
    claims.update(overrides)
    if drop:
        del claims[drop]
    return jwt.encode(claims, key or settings.jwt_secret, algorithm=algorithm)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 with the HS256 key
async def test_forged_and_broken_access_tokens_are_refused(api: httpx.AsyncClient, admin: dict[str, str],
                                                           stack: Stack) -> None:
    settings = jwt_settings(stack)
    person = await make_user(api, admin, "physician")
    sid = claims_of(person.token)["sid"]
    now = int(time.time())

    # control: a token built here with the stack's own key and a live session is accepted, so every
    # refusal below is about the one thing that differs
    good = _forge(settings, person, sid)
    assert (await api.get("/auth/me", headers=bearer(good))).status_code == 200

    header_none = _b64({"alg": "none", "typ": "JWT"})
    payload = _b64(claims_of(good))
    bad: dict[str, str] = {
        "alg_none": f"{header_none}.{payload}.",
        "alg_none_with_signature": f"{header_none}.{payload}.{good.split('.')[2]}",
        "wrong_key": _forge(settings, person, sid, key="another-secret-that-is-long-enough-0123456789"),
        "hs512_right_key": _forge(settings, person, sid, algorithm="HS512"),
        "expired": _forge(settings, person, sid, iat=now - 1000, exp=now - 10),
        "wrong_audience": _forge(settings, person, sid, aud="someone-else"),
        "wrong_issuer": _forge(settings, person, sid, iss="https://evil.example"),
        "not_yet_valid": _forge(settings, person, sid, nbf=now + 3600),
        "sub_not_uuid": _forge(settings, person, sid, sub="admin"),
        "unknown_role": _forge(settings, person, sid, role="superuser"),
        "tampered_role": ".".join([good.split(".")[0], _b64({**claims_of(good), "role": "system_admin"}),
                                   good.split(".")[2]]),
        "garbage": "garbage",
        "three_dots": "a.b.c",
        "empty_segments": "..",
    }
    for claim in ("iss", "aud", "sub", "role", "sid", "jti", "iat", "exp"):
        bad[f"missing_{claim}"] = _forge(settings, person, sid, drop=claim)

    for name, token in bad.items():
        r = await api.get("/auth/me", headers=bearer(token))
        expected = "token_expired" if name == "expired" else "unauthenticated"
        assert r.status_code == 401, (name, r.text)
        assert r.json()["code"] == expected, (name, r.json())
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), name
        # an ADM-only route too: a forged admin claim must never get in
        r = await api.get("/users", headers=bearer(token))
        assert r.status_code == 401, (name, r.text)

    forged_admin = _forge(settings, person, sid, role="system_admin", key="another-secret-that-is-long-enough-01")
    assert (await api.get("/users/stats", headers=bearer(forged_admin))).status_code == 401
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {good}"},
                    {"Authorization": good}):
        r = await api.get("/auth/me", headers=headers)
        assert_problem(r, 401, "unauthenticated")


async def test_token_of_an_unknown_or_ended_session_is_refused(api: httpx.AsyncClient, admin: dict[str, str],
                                                               stack: Stack) -> None:
    """A right-key token naming a session that ended is refused (the revoked-session mirror)."""
    settings = jwt_settings(stack)
    person = await make_user(api, admin, "radiologist")
    sid = claims_of(person.token)["sid"]
    forged = _forge(settings, person, sid)
    assert (await api.get("/auth/me", headers=bearer(forged))).status_code == 200
    assert (await api.post("/auth/logout", headers=person.headers)).status_code == 204
    await wait_rejected(api, person.token, forged)


# ---------------------------------------------------------------- refresh


async def test_refresh_rotates_with_a_grace_window_returning_the_same_pair(api: httpx.AsyncClient,
                                                                           admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "imaging_technician")
    r = await login_from(api, person.email, person.password, client_ip())
    pair0 = r.json()

    r = await refresh(api, pair0["refreshToken"])
    assert r.status_code == 200, r.text
    pair1 = r.json()
    assert pair1["refreshToken"] != pair0["refreshToken"]
    assert pair1["accessToken"] != pair0["accessToken"]
    assert claims_of(pair1["accessToken"])["sid"] == claims_of(pair0["accessToken"])["sid"]
    assert pair1["user"]["id"] == person.id
    assert set_cookies(r)["refresh_token"]["value"] == pair1["refreshToken"]

    # two tabs: the token just rotated away still answers, within the grace, with the SAME new pair
    r = await refresh(api, pair0["refreshToken"])
    assert r.status_code == 200, r.text
    assert r.json() == pair1
    assert set_cookies(r)["refresh_token"]["value"] == pair1["refreshToken"]
    assert (await api.get("/auth/me", headers=bearer(pair1["accessToken"]))).status_code == 200

    r = await refresh(api, pair1["refreshToken"])
    assert r.status_code == 200, r.text
    pair2 = r.json()
    assert pair2["refreshToken"] not in (pair0["refreshToken"], pair1["refreshToken"])
    assert (await api.get("/auth/me", headers=bearer(pair2["accessToken"]))).status_code == 200


async def test_reuse_after_grace_revokes_the_whole_session(api: httpx.AsyncClient, admin: dict[str, str],
                                                           stack: Stack) -> None:
    person = await make_user(api, admin, "physician")
    pair0 = (await login_from(api, person.email, person.password, client_ip())).json()
    sid = claims_of(pair0["accessToken"])["sid"]
    pair1 = (await refresh(api, pair0["refreshToken"])).json()
    pair2 = (await refresh(api, pair1["refreshToken"])).json()

    # "after the grace" without sleeping: age the rotation in the session's Redis hash
    async with redis_client(stack) as red:
        assert await red.exists(f"sess:{sid}")
        await red.hset(f"sess:{sid}", "prevAt", str(time.time() - 11))

    async with EventTap(stack.env["AMQP_URL"], "users.session.revoked") as tap:
        r = await refresh(api, pair1["refreshToken"])
        assert_problem(r, 401, "refresh_token_reused")
        assert "set-cookie" not in r.headers or set_cookies(r)["refresh_token"]["value"] == ""
        event = await tap.wait_for(lambda e: sid in e["payload"]["sessionIds"])
        assert event["payload"]["reason"] == "reuse_detected" and event["payload"]["userId"] == person.id

    # the whole session ended: its newest access and refresh tokens too
    await wait_rejected(api, pair2["accessToken"], pair1["accessToken"])
    assert_problem(await refresh(api, pair2["refreshToken"]), 401, "invalid_refresh_token")
    # the user's first session is untouched
    assert (await api.get("/auth/me", headers=person.headers)).status_code == 200


async def test_an_older_rotated_token_is_a_reuse_even_within_the_grace(api: httpx.AsyncClient,
                                                                       admin: dict[str, str]) -> None:
    """Two rotations later the first token is no longer "the one just rotated away"."""
    person = await make_user(api, admin, "reception_staff")
    pair0 = (await login_from(api, person.email, person.password, client_ip())).json()
    pair1 = (await refresh(api, pair0["refreshToken"])).json()
    pair2 = (await refresh(api, pair1["refreshToken"])).json()
    assert_problem(await refresh(api, pair0["refreshToken"]), 401, "refresh_token_reused")
    await wait_rejected(api, pair2["accessToken"])
    assert_problem(await refresh(api, pair2["refreshToken"]), 401, "invalid_refresh_token")


async def test_two_tabs_refreshing_at_once_get_the_same_pair(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "physician")
    pair0 = (await login_from(api, person.email, person.password, client_ip())).json()
    first, second = await asyncio.gather(refresh(api, pair0["refreshToken"]), refresh(api, pair0["refreshToken"]))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json() == second.json()
    assert first.json()["refreshToken"] != pair0["refreshToken"]
    assert (await refresh(api, first.json()["refreshToken"])).status_code == 200


async def test_token_responses_are_not_cached(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "radiologist")
    r = await login_from(api, person.email, person.password, client_ip())
    assert r.headers["cache-control"] == "no-store"
    r = await refresh(api, r.json()["refreshToken"])
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


async def test_refreshes_per_session_are_limited(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """30 refreshes per session per minute; the session itself survives the refusal."""
    person = await make_user(api, admin, "reception_staff")
    token = (await login_from(api, person.email, person.password, client_ip())).json()["refreshToken"]
    for _ in range(30):
        r = await refresh(api, token)
        assert r.status_code == 200, r.text
        token = r.json()["refreshToken"]
    r = await refresh(api, token)
    assert_problem(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert (await api.get("/auth/me", headers=person.headers)).status_code == 200  # other sessions: unaffected
    assert (await refresh(api, person.refresh)).status_code == 200


async def test_refresh_by_cookie_and_invalid_refresh_tokens(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "radiologist")
    pair0 = (await login_from(api, person.email, person.password, client_ip())).json()

    r = await api.post("/auth/refresh", headers={"Cookie": f"refresh_token={pair0['refreshToken']}"})
    assert r.status_code == 200, r.text
    pair1 = r.json()
    assert pair1["refreshToken"] != pair0["refreshToken"]
    assert set_cookies(r)["refresh_token"]["value"] == pair1["refreshToken"]

    r = await api.post("/auth/refresh", json={}, headers={"Cookie": f"refresh_token={pair1['refreshToken']}"})
    assert r.status_code == 200, r.text
    pair2 = r.json()
    # the body wins over the cookie
    r = await api.post("/auth/refresh", json={"refreshToken": pair2["refreshToken"]},
                       headers={"Cookie": "refresh_token=garbage"})
    assert r.status_code == 200, r.text
    sid = claims_of(pair2["accessToken"])["sid"]

    for token in ("garbage", f"{sid}.{secrets.token_urlsafe(32)}", f"{uuid.uuid4()}.{secrets.token_urlsafe(32)}",
                  f"{sid}.", f".{secrets.token_urlsafe(32)}"):
        assert_problem(await refresh(api, token), 401, "invalid_refresh_token")
    assert_problem(await api.post("/auth/refresh"), 401, "invalid_refresh_token")
    assert_problem(await api.post("/auth/refresh", json={}), 401, "invalid_refresh_token")
    r = await api.post("/auth/refresh", json={"refreshToken": "x", "userId": person.id})
    assert assert_problem(r, 422, "validation_failed")["field"] == "userId"
    # an access token is not a refresh token
    assert_problem(await refresh(api, person.token), 401, "invalid_refresh_token")


# ---------------------------------------------------------------- logout and sessions


def assert_cookie_cleared(r: httpx.Response) -> None:
    cookie = set_cookies(r)["refresh_token"]
    assert cookie["value"] == "" and cookie["path"] == "/auth" and int(cookie["max-age"]) == 0
    assert "httponly" in cookie and "secure" in cookie


async def test_logout_by_access_token_refresh_body_or_cookie(api: httpx.AsyncClient, admin: dict[str, str],
                                                             stack: Stack) -> None:
    person = await make_user(api, admin, "physician")
    ip = client_ip()
    pairs = [(await login_from(api, person.email, person.password, ip)).json() for _ in range(3)]
    sids = [claims_of(p["accessToken"])["sid"] for p in pairs]
    async with EventTap(stack.env["AMQP_URL"], "users.session.revoked") as tap:
        by_access = await api.post("/auth/logout", headers=bearer(pairs[0]["accessToken"]))
        by_body = await api.post("/auth/logout", json={"refreshToken": pairs[1]["refreshToken"]})
        by_cookie = await api.post("/auth/logout", headers={"Cookie": f"refresh_token={pairs[2]['refreshToken']}"})
        for r in (by_access, by_body, by_cookie):
            assert r.status_code == 204, r.text
            assert r.content == b""
            assert_cookie_cleared(r)
        for sid in sids:
            event = await tap.wait_for(lambda e, s=sid: e["payload"]["sessionIds"] == [s])
            assert event["payload"]["reason"] == "logout" and event["payload"]["userId"] == person.id
    await wait_rejected(api, *(p["accessToken"] for p in pairs))
    for p in pairs:
        assert_problem(await refresh(api, p["refreshToken"]), 401, "invalid_refresh_token")
    # the first session is still alive
    assert (await api.get("/auth/me", headers=person.headers)).status_code == 200

    # nothing to end, or a token that names nothing: still 204 and the cookie is cleared
    for r in (await api.post("/auth/logout"),
              await api.post("/auth/logout", json={"refreshToken": "garbage"}),
              await api.post("/auth/logout", json={"refreshToken": pairs[0]["refreshToken"]}),
              await api.post("/auth/logout", headers=bearer("garbage"))):
        assert r.status_code == 204, r.text
        assert_cookie_cleared(r)


async def test_logout_all_ends_every_session_of_the_user(api: httpx.AsyncClient, admin: dict[str, str],
                                                         stack: Stack) -> None:
    person = await make_user(api, admin, "imaging_technician")
    bystander = await make_user(api, admin, "imaging_technician")
    ip = client_ip()
    pairs = [(await login_from(api, person.email, person.password, ip)).json() for _ in range(2)]
    tokens = [person.token, *(p["accessToken"] for p in pairs)]
    refreshes = [person.refresh, *(p["refreshToken"] for p in pairs)]
    sids = {claims_of(t)["sid"] for t in tokens}
    async with EventTap(stack.env["AMQP_URL"], "users.session.revoked") as tap:
        r = await api.post("/auth/logout-all", headers=person.headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"revoked": 3}
        assert_cookie_cleared(r)
        event = await tap.wait_for(lambda e: e["payload"]["userId"] == person.id)
        assert set(event["payload"]["sessionIds"]) == sids and event["payload"]["reason"] == "logout_all"
    await wait_rejected(api, *tokens)
    for token in refreshes:
        assert_problem(await refresh(api, token), 401, "invalid_refresh_token")
    assert (await api.get("/auth/me", headers=bystander.headers)).status_code == 200
    assert_problem(await api.post("/auth/logout-all", headers=person.headers), 401, "unauthenticated")
    # the password still works: logging out everywhere is not a lock-out
    assert (await login_from(api, person.email, person.password, ip)).status_code == 200


async def test_own_sessions_listed_without_tokens_and_ended_one_by_one(api: httpx.AsyncClient,
                                                                       admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "reception_staff")
    ip = client_ip()
    other = (await login_from(api, person.email, person.password, ip, user_agent="pytest-second-tab")).json()
    mine, theirs = claims_of(person.token)["sid"], claims_of(other["accessToken"])["sid"]

    r = await api.get("/auth/sessions", headers=person.headers)
    assert r.status_code == 200, r.text
    assert_clean(r, person.password, person.refresh.split(".", 1)[1], other["refreshToken"].split(".", 1)[1],
                 person.token, other["accessToken"])
    sessions = {s["id"]: s for s in r.json()}
    assert set(sessions) == {mine, theirs}
    for s in sessions.values():
        assert set(s) == {"id", "createdAt", "lastUsedAt", "expiresAt", "ip", "userAgent", "mfa", "current"}
    assert sessions[mine]["current"] is True and sessions[theirs]["current"] is False
    assert sessions[theirs]["ip"] == ip and sessions[theirs]["userAgent"] == "pytest-second-tab"

    # another user's session, an unknown one, an absurd one: all 404, and nothing ends
    admin_sid = claims_of(admin["Authorization"].split()[1])["sid"]
    for sid in (admin_sid, str(uuid.uuid4()), "x" * 65):
        assert_problem(await api.delete(f"/auth/sessions/{sid}", headers=person.headers), 404, "not_found")
    assert (await api.get("/users/stats", headers=admin)).status_code == 200

    r = await api.delete(f"/auth/sessions/{theirs}", headers=person.headers)
    assert r.status_code == 204, r.text
    await wait_rejected(api, other["accessToken"])
    assert_problem(await refresh(api, other["refreshToken"]), 401, "invalid_refresh_token")
    assert_problem(await api.delete(f"/auth/sessions/{theirs}", headers=person.headers), 404, "not_found")
    r = await api.get("/auth/sessions", headers=person.headers)
    assert [s["id"] for s in r.json()] == [mine]


# ---------------------------------------------------------------- disabled accounts


async def test_disabling_ends_live_tokens_and_enabling_allows_sign_in(api: httpx.AsyncClient,
                                                                      admin: dict[str, str], stack: Stack) -> None:
    person = await make_user(api, admin, "radiologist")
    ip = client_ip()
    second = (await login_from(api, person.email, person.password, ip)).json()
    async with EventTap(stack.env["AMQP_URL"], "users.session.revoked", "users.user.*") as tap:
        r = await api.post(f"/users/{person.id}/disable", json={"reason": "left the hospital"}, headers=admin)
        assert r.status_code == 200 and r.json()["isActive"] is False
        revoked = await tap.wait_for(lambda e: e["type"] == "users.session.revoked"
                                     and e["payload"]["userId"] == person.id)
        assert revoked["payload"]["reason"] == "user_disabled"
        assert set(revoked["payload"]["sessionIds"]) == {claims_of(person.token)["sid"],
                                                         claims_of(second["accessToken"])["sid"]}
        disabled = await tap.wait_for(lambda e: e["type"] == "users.user.disabled")
        assert disabled["payload"]["userId"] == person.id and disabled["payload"]["isActive"] is False
    await wait_rejected(api, person.token, second["accessToken"])
    for token in (person.refresh, second["refreshToken"]):
        assert_problem(await refresh(api, token), 401, "invalid_refresh_token")
    assert_problem(await login_from(api, person.email, person.password, ip), 403, "account_disabled")

    r = await api.post(f"/users/{person.id}/enable", headers=admin)
    assert r.status_code == 200 and r.json()["isActive"] is True
    r = await login_from(api, person.email, person.password, ip)
    assert r.status_code == 200, r.text
    assert (await api.get("/auth/me", headers=bearer(r.json()["accessToken"]))).status_code == 200
    # old tokens stay dead after the enable
    assert await is_rejected(api, person.token)
    assert_problem(await refresh(api, person.refresh), 401, "invalid_refresh_token")


# ---------------------------------------------------------------- rate limits


async def test_brute_force_on_one_account_is_slowed_down(api: httpx.AsyncClient, admin: dict[str, str],
                                                         stack: Stack) -> None:
    person = await make_user(api, admin, "physician")
    bystander = await make_user(api, admin, "physician")
    ip = client_ip()
    # a success resets the account's count: 4 failures, a success, 4 failures is still no lock
    for _ in range(4):
        assert_problem(await login_from(api, person.email, "Wrong-Password-000", ip), 401, "invalid_credentials")
    assert (await login_from(api, person.email, person.password, ip)).status_code == 200
    async with EventTap(stack.env["AMQP_URL"], "users.login.failed") as tap:
        for _ in range(5):
            assert_problem(await login_from(api, person.email, "Wrong-Password-000", ip), 401,
                           "invalid_credentials")
        # the 6th attempt is refused before the password is even looked at, right or wrong
        for password in ("Wrong-Password-000", person.password):
            r = await login_from(api, person.email, password, client_ip())
            body = assert_problem(r, 429, "rate_limited")
            retry = int(r.headers["retry-after"])
            assert 1 <= retry <= 31 and body["retryAfter"] == retry  # the first delay is 30 s
        await tap.wait_for(lambda e: e["payload"]["reason"] == "rate_limited")
    # other accounts from the same address are not affected; the locked account's sessions live on
    assert (await login_from(api, bystander.email, bystander.password, ip)).status_code == 200
    assert (await api.get("/auth/me", headers=person.headers)).status_code == 200
    # the limit keys on the account, not on how the e-mail is spelt
    assert_problem(await login_from(api, person.email.upper(), person.password, ip), 429, "rate_limited")
    # an administrator's password reset lifts the lock
    r = await api.post(f"/users/{person.id}/reset-password", json={"newPassword": "Unlocked-By-Admin-7"},
                       headers=admin)
    assert r.status_code == 204, r.text
    r = await login_from(api, person.email, "Unlocked-By-Admin-7", ip)
    assert r.status_code == 200 and r.json()["user"]["mustChangePassword"] is True


async def test_per_address_limit(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """100 attempts per address in 15 minutes; the 101st is refused, other addresses are not."""
    person = await make_user(api, admin, "reception_staff")
    ip = client_ip()

    async with client_at(api, ip) as client:

        async def attempt(i: int) -> int:
            r = await client.post("/auth/login", json={"email": f"{unique('flood')}-{i}@test.local",
                                                       "password": "Whatever-Password-1"})
            return r.status_code

        statuses: list[int] = []
        for start in range(0, 100, 20):
            statuses += await asyncio.gather(*(attempt(i) for i in range(start, start + 20)))
    assert statuses == [401] * 100
    r = await login_from(api, person.email, person.password, ip)  # right password, but too many tries
    assert_problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert (await login_from(api, person.email, person.password, client_ip())).status_code == 200


# ---------------------------------------------------------------- pending password change


async def test_pending_password_change_limits_the_token(api: httpx.AsyncClient, admin: dict[str, str],
                                                        stack: Stack) -> None:
    person = await make_user(api, admin, "physician", activate=False, email=f"{unique('box')}@test.local")
    username = person.body["username"]
    claims = claims_of(person.token)
    assert claims["mcp"] is True
    h = person.headers

    r = await api.get("/auth/me", headers=h)
    assert r.status_code == 200 and r.json()["mustChangePassword"] is True
    r = await api.patch("/auth/me", json={"phone": "0901 234 567"}, headers=h)
    assert r.status_code == 200 and r.json()["phone"] == "0901 234 567"
    for method, path in (("GET", "/auth/sessions"), ("GET", "/users/directory"), ("GET", f"/users/{person.id}"),
                         ("GET", "/departments"), ("DELETE", f"/auth/sessions/{claims['sid']}")):
        r = await api.request(method, path, headers=h)
        assert_problem(r, 403, "password_change_required")

    cases = [
        ("short-1A", "too_short"),
        (f"My-{username}-Pass1", "contains_username"),
        (f"X{person.email.split('@')[0].upper()}x9!", "contains_email"),
        ("iloveyou123", "too_common"),
        ("ILoveYou123", "too_common"),
    ]
    for new, code in cases:
        r = await api.post("/auth/me/password", json={"currentPassword": person.password, "newPassword": new},
                           headers=h)
        body = assert_problem(r, 422, "weak_password")
        assert body["field"] == "newPassword"
        assert code in [e["code"] for e in body["errors"]], (new, body)
        assert all(e["field"] == "newPassword" for e in body["errors"])
        assert_clean(r, new, person.password)
    r = await api.post("/auth/me/password", json={"currentPassword": "Not-Current-1", "newPassword": PASSWORD},
                       headers=h)
    body = assert_problem(r, 422, "validation_failed")
    assert body["field"] == "currentPassword"
    r = await api.post("/auth/me/password", json={"currentPassword": person.password,
                                                  "newPassword": person.password}, headers=h)
    assert assert_problem(r, 422, "validation_failed")["field"] == "newPassword"
    r = await api.post("/auth/me/password", json={"newPassword": PASSWORD}, headers=h)
    assert assert_problem(r, 422, "validation_failed")["field"] == "currentPassword"

    other_tab = (await login_from(api, person.email, person.password, client_ip())).json()
    async with EventTap(stack.env["AMQP_URL"], "users.user.password_changed", "users.session.revoked") as tap:
        r = await api.post("/auth/me/password", json={"currentPassword": person.password, "newPassword": PASSWORD},
                           headers=h)
        assert r.status_code == 204, r.text
        changed = await tap.wait_for(lambda e: e["type"] == "users.user.password_changed")
        assert changed["payload"]["userId"] == person.id and changed["payload"]["by"] == "self"
        assert isinstance(changed["payload"]["version"], int) and changed["payload"]["version"] >= 2
        revoked = await tap.wait_for(lambda e: e["type"] == "users.session.revoked")
        assert revoked["payload"]["sessionIds"] == [claims_of(other_tab["accessToken"])["sid"]]
        assert revoked["payload"]["reason"] == "password_changed"
    # other sessions end; this one goes on, but its current token still carries the claim
    await wait_rejected(api, other_tab["accessToken"])
    assert_problem(await refresh(api, other_tab["refreshToken"]), 401, "invalid_refresh_token")
    assert_problem(await api.get("/users/directory", headers=h), 403, "password_change_required")

    r = await refresh(api, person.refresh)
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert "mcp" not in claims_of(fresh["accessToken"]) and fresh["user"]["mustChangePassword"] is False
    fh = bearer(fresh["accessToken"])
    assert (await api.get("/users/directory", headers=fh)).status_code == 200
    assert (await api.get("/auth/sessions", headers=fh)).status_code == 200
    assert_problem(await login_from(api, person.email, "Initial-Pass-123!", client_ip()), 401,
                   "invalid_credentials")
    r = await api.post("/auth/logout", headers=fh)
    assert r.status_code == 204


async def test_logout_is_allowed_while_a_password_change_is_pending(api: httpx.AsyncClient,
                                                                    admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "radiologist", activate=False)
    assert (await api.post("/auth/logout", headers=person.headers)).status_code == 204
    await wait_rejected(api, person.token)


async def test_update_own_profile_is_a_merge_patch(api: httpx.AsyncClient, admin: dict[str, str],
                                                   stack: Stack) -> None:
    person = await make_user(api, admin, "imaging_technician", phone="+1 (555) 010-0000")
    me = (await api.get("/auth/me", headers=person.headers)).json()
    async with EventTap(stack.env["AMQP_URL"], "users.user.updated") as tap:
        r = await api.patch("/auth/me", json={"firstName": "Renamed"}, headers=person.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["firstName"] == "Renamed" and body["phone"] == "+1 (555) 010-0000"
        assert body["displayName"] == f"Renamed {me['lastName']}" and body["version"] == me["version"] + 1
        assert r.headers["etag"] == f'"{body["version"]}"'
        event = await tap.wait_for(lambda e: e["payload"]["userId"] == person.id)
        assert event["payload"]["changedFields"] == ["firstName"]
        assert event["payload"]["version"] == body["version"]
    r = await api.patch("/auth/me", json={"phone": None}, headers=person.headers)
    assert r.status_code == 200 and r.json()["phone"] is None and r.json()["firstName"] == "Renamed"
    r = await api.patch("/auth/me", json={}, headers=person.headers)
    assert r.status_code == 200 and r.json()["version"] == body["version"] + 1
    for patch, field in (({"email": "x@y.z"}, "email"), ({"role": "system_admin"}, "role"),
                         ({"firstName": None}, "firstName"), ({"firstName": ""}, "firstName"),
                         ({"phone": "call me"}, "phone"), ({"mustChangePassword": False}, "mustChangePassword")):
        r = await api.patch("/auth/me", json=patch, headers=person.headers)
        assert assert_problem(r, 422, "validation_failed")["field"] == field, patch
    assert (await api.get("/auth/me", headers=person.headers)).json()["role"] == "imaging_technician"


# ---------------------------------------------------------------- who may call


AUTH_ROUTES_NEEDING_A_TOKEN = [
    ("POST", "/auth/logout-all"),
    ("GET", "/auth/me"),
    ("PATCH", "/auth/me"),
    ("POST", "/auth/me/password"),
    ("GET", "/auth/sessions"),
    ("DELETE", f"/auth/sessions/{uuid.uuid4()}"),
]


@pytest.mark.parametrize(("method", "path"), AUTH_ROUTES_NEEDING_A_TOKEN)
async def test_auth_routes_need_a_token(api: httpx.AsyncClient, method: str, path: str) -> None:
    r = await api.request(method, path, json={} if method in ("POST", "PATCH") else None)
    assert_problem(r, 401, "unauthenticated")


async def test_every_role_may_use_its_own_account_routes(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """Staff routes refuse no role; /auth/me is the caller's own account whoever they are."""
    for role in ("system_admin", *OTHER_ROLES):
        person = await make_user(api, admin, role)
        r = await api.get("/auth/me", headers=person.headers)
        assert r.status_code == 200 and r.json()["id"] == person.id and r.json()["role"] == role
        assert (await api.get("/auth/sessions", headers=person.headers)).status_code == 200
        if role == "system_admin":  # leave no extra active administrator behind
            assert (await api.delete(f"/users/{person.id}", headers=admin)).status_code == 204
