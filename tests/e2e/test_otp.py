"""The e-mail second factor (users.md §3 step 2), with the users worker speaking SMTP to a real
SMTP server on loopback that stands in for the hospital's mail service."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support import EventTap, Mailbox, Person, Stack, eventually, login, make_user

CODE = re.compile(r"\b(\d{6})\b")


async def _enable(api: httpx.AsyncClient, person: Person) -> None:
    r = await api.put("/auth/me/email-otp", json={"enabled": True, "password": person.password},
                      headers=person.headers)
    assert r.status_code == 200, r.text
    assert r.json()["emailOtpEnabled"] is True


async def _code(mailbox: Mailbox, address: str, after: int) -> str:
    async def arrived() -> str | None:
        mails = mailbox.to(address)
        return CODE.search(mails[-1].text).group(1) if len(mails) > after else None

    return await eventually(arrived)


async def _age_sends(stack: Stack, user_id: str) -> None:
    """Pretend the last code went out over a minute ago (test setup against the real Redis)."""
    client = aioredis.from_url(stack.env["REDIS_URL"])
    try:
        key = f"otp:sends:{user_id}"
        old = time.time() - 120
        members = await client.zrange(key, 0, -1)
        if members:
            await client.zadd(key, {m: old - i for i, m in enumerate(members)})
    finally:
        await client.aclose()


async def test_enabling_needs_the_password(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack) -> None:
    person = await make_user(api, admin, "physician")
    r = await api.put("/auth/me/email-otp", json={"enabled": True, "password": "not-my-password"},
                      headers=person.headers)
    assert r.status_code == 422 and r.json()["field"] == "password"
    async with EventTap(stack.env["AMQP_URL"], "users.user.updated") as tap:
        await _enable(api, person)
        event = await tap.wait_for(lambda e: e["payload"]["userId"] == person.id)
        assert event["payload"]["changedFields"] == ["emailOtpEnabled"]
    assert (await api.put("/auth/me/email-otp", json={"enabled": True})).status_code == 401


async def test_sign_in_with_a_mailed_code(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                          mailbox: Mailbox) -> None:
    person = await make_user(api, admin, "radiologist")
    await _enable(api, person)
    before = len(mailbox.to(person.email))
    async with EventTap(stack.env["AMQP_URL"], "users.otp.sent", "users.session.started",
                        "users.login.failed") as tap:
        r = await login(api, person.email, person.password)
        assert r.status_code == 200, r.text
        challenge = r.json()
        assert challenge["otpRequired"] is True and challenge["challengeId"]
        assert challenge["sentTo"].endswith("@test.local") and person.email.split("@")[0] not in challenge["sentTo"]
        assert "refresh_token" not in r.headers.get("set-cookie", "") and "accessToken" not in challenge
        code = await _code(mailbox, person.email, before)
        await tap.wait_for(lambda e: e["type"] == "users.otp.sent" and e["payload"]["userId"] == person.id)

        wrong = "000000" if code != "000000" else "111111"
        r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": wrong})
        assert r.status_code == 401 and r.json()["code"] == "otp_invalid" and r.json()["attemptsLeft"] == 4
        await tap.wait_for(lambda e: e["type"] == "users.login.failed" and e["payload"]["reason"] == "otp_invalid")

        r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": code})
        assert r.status_code == 200, r.text
        pair = r.json()
        assert pair["accessToken"] and "refresh_token=" in r.headers["set-cookie"]
        started = await tap.wait_for(lambda e: e["type"] == "users.session.started"
                                     and e["payload"]["userId"] == person.id and e["payload"]["mfa"])
        assert started["payload"]["mfa"] is True
    sessions = (await api.get("/auth/sessions", headers={"Authorization": f"Bearer {pair['accessToken']}"})).json()
    assert any(s["mfa"] and s["current"] for s in sessions)
    # The code is single-use.
    r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": code})
    assert r.status_code == 401 and r.json()["code"] == "otp_expired"


async def test_five_wrong_codes_kill_the_challenge(api: httpx.AsyncClient, admin: dict[str, str],
                                                    mailbox: Mailbox) -> None:
    person = await make_user(api, admin, "imaging_technician")
    await _enable(api, person)
    before = len(mailbox.to(person.email))
    challenge = (await login(api, person.email, person.password)).json()
    code = await _code(mailbox, person.email, before)
    wrong = "000000" if code != "000000" else "111111"
    for left in (4, 3, 2, 1):
        r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": wrong})
        assert r.json()["attemptsLeft"] == left
    r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": wrong})
    assert r.status_code == 401 and r.json()["code"] == "otp_expired"
    r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": code})
    assert r.status_code == 401 and r.json()["code"] == "otp_expired"


async def test_resend_is_paced_and_replaces_the_code(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                                      mailbox: Mailbox) -> None:
    person = await make_user(api, admin, "reception_staff")
    await _enable(api, person)
    before = len(mailbox.to(person.email))
    challenge = (await login(api, person.email, person.password)).json()
    first = await _code(mailbox, person.email, before)
    r = await api.post("/auth/otp/resend", json={"challengeId": challenge["challengeId"]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    await _age_sends(stack, person.id)
    r = await api.post("/auth/otp/resend", json={"challengeId": challenge["challengeId"]})
    assert r.status_code == 202, r.text
    second = await _code(mailbox, person.email, before + 1)
    if second != first:
        r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": first})
        assert r.status_code == 401 and r.json()["code"] == "otp_invalid"
    r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": second})
    assert r.status_code == 200
    r = await api.post("/auth/otp/resend", json={"challengeId": "no-such-challenge"})
    assert r.status_code == 401 and r.json()["code"] == "otp_expired"


async def test_wrong_codes_per_account_are_limited(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack,
                                                    mailbox: Mailbox) -> None:
    person = await make_user(api, admin, "physician")
    await _enable(api, person)
    for round_ in range(2):
        await _age_sends(stack, person.id)
        challenge = (await login(api, person.email, person.password)).json()
        await _code(mailbox, person.email, round_)
        for _ in range(5):
            await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": "999999"})
    await _age_sends(stack, person.id)
    challenge = (await login(api, person.email, person.password)).json()
    r = await api.post("/auth/otp/verify", json={"challengeId": challenge["challengeId"], "code": "999999"})
    assert r.status_code == 429 and r.headers["retry-after"]


async def test_mail_failure_is_503_and_no_challenge_survives(api: httpx.AsyncClient, admin: dict[str, str]) -> None:
    person = await make_user(api, admin, "physician", email=f"bounce-{int(time.time() * 1000)}@test.local")
    await _enable(api, person)
    r = await login(api, person.email, person.password)
    assert r.status_code == 503 and r.json()["code"] == "otp_delivery_unavailable"


@pytest.mark.parametrize("body", [{"challengeId": "x", "code": "12345"}, {"challengeId": "x", "code": "abcdef"},
                                  {"code": "123456"}])
async def test_verify_validates_its_input(api: httpx.AsyncClient, body: dict) -> None:
    r = await api.post("/auth/otp/verify", json=body)
    assert r.status_code == 422
