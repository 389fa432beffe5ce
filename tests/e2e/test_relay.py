"""The relay (realtime.md) over real SSE and WebSocket connections, against the real stack.

Domain events come either from real requests to the edge or, for producers that do not exist
yet (notifications, imaging, patients…), from well-formed envelopes published on the test vhost's
`events` exchange, exactly as a worker's outbox would. The relay keeps the broker's order in its
stream, so an event published after others is a marker: once a client has it, it has seen (or
been spared) everything published before. Nothing here waits on a clock except for generous
time-outs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aio_pika
import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from contracts.envelope import Actor, encode, make_envelope
from tests.sse import Msg, key, open_sse
from tests.support import EventTap, Stack, eventually, login, make_user, unique

pytestmark = pytest.mark.asyncio

WAIT = 20.0  # generous: only ever a limit for something that should happen
QUEUE_MAX = 50  # RELAY_QUEUE_MAX of the test stack
ALLOWED_ORIGIN = "http://localhost:3000"  # in the default CORS_ORIGINS
NEVER_RELAYED = re.compile(r"^(\w+\.audit\.recorded|users\.session\..+|users\.login\..+|users\.otp\..+|"
                           r"users\.signing_key\..+|users\.signature\..+|users\.user\.password_changed|"
                           r"system\.export\.generated)$")
STREAM_ID = re.compile(r"^\d+-\d+$")


# ---------------------------------------------------------------- the broker


class Broker:
    """Publishes envelopes on the `events` exchange the way a worker's outbox does."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, kind: str, payload: dict[str, Any], actor: Actor | None = None) -> dict[str, Any]:
        envelope = make_envelope(kind, payload, actor or Actor.system_actor("relay-tests"))
        body = encode(envelope)
        await self.exchange.publish(
            aio_pika.Message(body, message_id=str(envelope.message_id), type=kind, content_type="application/json"),
            routing_key=kind,
        )
        return json.loads(body)


@pytest.fixture(scope="session")
async def broker(stack: Stack) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange("events", aio_pika.ExchangeType.TOPIC, durable=True)
    try:
        yield Broker(exchange)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def relay(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=stack.relay_url, timeout=WAIT, limits=limits) as client:
        yield client


def entity(**extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "version": 1, **extra}


def notification(recipient: str) -> dict[str, Any]:
    """A notification as `system.notification.created` carries it (system.md §2, §7)."""
    return {"id": str(uuid.uuid4()), "recipientId": recipient, "senderId": None, "type": "announcement",
            "title": "Relay test", "message": "Nothing to see", "relatedEntityType": None,
            "relatedEntityId": None, "isRead": False, "readAt": None,
            "createdAt": datetime.now(UTC).isoformat()}


async def health(relay: httpx.AsyncClient) -> dict[str, Any]:
    r = await relay.get("/health")
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- WebSocket client


class WS:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(frame))

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []

        async def run() -> list[dict[str, Any]]:
            while True:
                got.append(await self.recv(timeout))
                if predicate(got[-1]):
                    return got

        return await asyncio.wait_for(run(), timeout)

    async def until_key(self, wanted: str, timeout: float = WAIT) -> list[dict[str, Any]]:
        return await self.until(lambda f: key(f.get("data")) == wanted, timeout)

    async def events(self, n: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        return [await self.recv(timeout) for _ in range(n)]

    async def sync(self) -> list[dict[str, Any]]:
        """Ping; the frames that came before the pong (the relay handles frames in order, so
        whatever was sent before has taken effect)."""
        await self.send({"type": "ping"})
        return (await self.until(lambda f: f == {"type": "pong"}))[:-1]

    async def closed(self, timeout: float = WAIT) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes: (close code, frames received meanwhile)."""
        got: list[dict[str, Any]] = []

        async def run() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    got.append(json.loads(await self.conn.recv()))

        await asyncio.wait_for(run(), timeout)
        return self.conn.close_code, got


def ws_url(stack: Stack, params: dict[str, str] | None = None) -> str:
    base = stack.relay_url.replace("http://", "ws://") + "/events/ws"
    return f"{base}?{urlencode(params)}" if params else base


@contextlib.asynccontextmanager
async def open_ws(stack: Stack, token: str | None, *, in_query: bool = False, params: dict[str, str] | None = None,
                  origin: str | None = None, **options: Any) -> AsyncIterator[WS]:
    params = dict(params or {})
    headers = {}
    if token is not None:
        if in_query:
            params["access_token"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
    async with connect(ws_url(stack, params), additional_headers=headers, origin=origin,  # type: ignore[arg-type]
                       open_timeout=WAIT, close_timeout=2, ping_interval=None, **options) as conn:
        yield WS(conn)


def event_frame(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "event"


# ---------------------------------------------------------------- 1. SSE format


async def test_sse_format_department_event_and_heartbeat(api: httpx.AsyncClient, admin: dict[str, str],
                                                         relay: httpx.AsyncClient, stack: Stack) -> None:
    boss = await make_user(api, admin, "system_admin")
    async with open_sse(relay, boss.token) as sse:
        assert sse.response.headers["cache-control"] == "no-cache"
        code = unique("RL").upper()[:10]
        r = await api.post("/departments", json={"code": code, "name": "Relay"}, headers=boss.headers)
        assert r.status_code == 201, r.text
        department = r.json()
        got = await sse.until(lambda m: m.event == "users.department.created"
                              and m.data["payload"]["departmentId"] == department["id"])
        msg = got[-1]
        assert set(msg.data) == {"messageId", "type", "occurredAt", "actor", "payload"}
        assert msg.data["type"] == "users.department.created"
        # the actor is reduced to who and which role: no session, address or user agent
        assert msg.data["actor"] == {"userId": boss.id, "role": "system_admin"}
        assert msg.data["payload"]["code"] == code and msg.data["payload"]["version"] == 1
        uuid.UUID(msg.data["messageId"])
        datetime.fromisoformat(msg.data["occurredAt"])

        # the `id` is the entry id of that event in the shared Redis stream
        assert msg.id is not None and STREAM_ID.match(msg.id)
        redis = Redis.from_url(stack.env["REDIS_URL"])
        try:
            entries = await redis.xrange("relay:events", min=msg.id, max=msg.id)
        finally:
            await redis.aclose()
        assert len(entries) == 1
        assert entries[0][1][b"type"] == b"users.department.created"
        assert json.loads(entries[0][1][b"data"])["messageId"] == msg.data["messageId"]

        # idle: `: ping` comments (every RELAY_HEARTBEAT, 1 s here)
        await sse.ping()
        await sse.ping()
        assert ": ping" in sse.lines


# ---------------------------------------------------------------- 2. authentication, CORS


@pytest.mark.parametrize(("headers", "params"), [
    ({}, {}),
    ({"Authorization": "Bearer not-a-token"}, {}),
    ({}, {"access_token": "eyJhbGciOiJub25lIn0.e30."}),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, {}),
])
async def test_sse_refuses_a_missing_or_bad_token(relay: httpx.AsyncClient, headers: dict[str, str],
                                                  params: dict[str, str]) -> None:
    r = await relay.get("/events/stream", headers=headers, params=params)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 401 and problem["code"] and problem["type"] == f"/problems/{problem['code']}"
    assert "text/event-stream" not in r.headers["content-type"]


async def test_token_in_header_or_query_and_cors(api: httpx.AsyncClient, admin: dict[str, str],
                                                 relay: httpx.AsyncClient, broker: Broker, stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    async with open_sse(relay, doc.token) as by_header, \
            open_sse(relay, doc.token, in_query=True, headers={"Origin": ALLOWED_ORIGIN}) as by_query, \
            open_ws(stack, doc.token, in_query=True) as ws_query, open_ws(stack, doc.token) as ws_header:
        assert by_query.response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
        await ws_query.sync()
        await ws_header.sync()
        sent = await broker.publish("imaging.study.updated", entity())
        for sse in (by_header, by_query):
            assert [m.data["messageId"] for m in await sse.until_key(sent["messageId"])] == [sent["messageId"]]
        for ws in (ws_query, ws_header):
            frames = await ws.until_key(sent["messageId"])
            assert [f["data"]["messageId"] for f in frames] == [sent["messageId"]]


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_ws_refuses_a_missing_or_bad_token_with_4401(stack: Stack, token: str | None) -> None:
    async with open_ws(stack, token) as ws:
        code, frames = await ws.closed()
    assert code == 4401 and frames == []


async def test_ws_origin_must_be_allowed(api: httpx.AsyncClient, admin: dict[str, str], stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(stack, doc.token, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with open_ws(stack, doc.token, origin=ALLOWED_ORIGIN) as ws:
        assert await ws.sync() == []


# ---------------------------------------------------------------- 3. filters


ROLE_MATRIX = (
    "patients.patient.updated", "patients.encounter.created", "patients.vital_signs.recorded",
    "patients.report.signed", "imaging.order_form.created", "imaging.order.created", "imaging.study.updated",
    "imaging.annotation.created", "imaging.segmentation_layer.created", "imaging.instances.stored",
    "imaging.instance.rejected", "users.room_schedule.updated", "users.assignment.created",
    "users.department.updated", "system.setting.changed", "system.export.generated", "users.otp.sent",
    "users.signing_key.rotated", "users.signature.created", "users.login.failed", "users.user.password_changed",
    "ai:own", "ai:other",
)
ROLE_SEES = {
    "system_admin": {"patients.patient.updated", "patients.encounter.created", "patients.vital_signs.recorded",
                     "patients.report.signed", "imaging.order_form.created", "imaging.order.created",
                     "imaging.study.updated", "imaging.annotation.created", "imaging.segmentation_layer.created",
                     "imaging.instances.stored", "imaging.instance.rejected", "users.room_schedule.updated",
                     "users.assignment.created", "users.department.updated", "system.setting.changed",
                     "ai:own", "ai:other"},
    "reception_staff": {"patients.patient.updated", "patients.encounter.created", "imaging.order.created",
                        "users.room_schedule.updated", "users.assignment.created", "ai:own"},
    "physician": {"patients.encounter.created", "patients.vital_signs.recorded", "patients.report.signed",
                  "imaging.order_form.created", "imaging.order.created", "imaging.study.updated", "ai:own"},
    "radiologist": {"patients.report.signed", "imaging.order.created", "imaging.study.updated",
                    "imaging.annotation.created", "imaging.segmentation_layer.created", "ai:own"},
    "imaging_technician": {"imaging.order.created", "imaging.study.updated", "imaging.instances.stored",
                           "imaging.instance.rejected", "users.assignment.created", "ai:own"},
}


@pytest.mark.parametrize("role", list(ROLE_SEES))
async def test_role_filter(api: httpx.AsyncClient, admin: dict[str, str], relay: httpx.AsyncClient,
                           broker: Broker, stack: Stack, role: str) -> None:
    person = await make_user(api, admin, role)
    someone_else = str(uuid.uuid4())
    async with open_sse(relay, person.token) as sse, open_ws(stack, person.token) as ws:
        await ws.sync()
        labels: dict[str, str] = {}
        for label in ROLE_MATRIX:
            if label.startswith("ai:"):
                requester = person.id if label == "ai:own" else someone_else
                sent = await broker.publish("system.ai_analysis.completed", entity(requestedBy=requester))
            else:
                sent = await broker.publish(label, entity())
            labels[sent["messageId"]] = label
        marker = await broker.publish("system.notification.created", notification(person.id))
        expected = [label for label in ROLE_MATRIX if label in ROLE_SEES[role]]

        got = await sse.until_key(marker["payload"]["id"])
        assert got[-1].event == "new_notification"
        assert [labels.get(key(m.data), m.event) for m in got[:-1]] == expected
        for m in got[:-1]:
            assert m.event == m.data["type"] and m.id is not None

        frames = await ws.until_key(marker["payload"]["id"])
        assert [labels.get(key(f["data"]), f["event"]) for f in frames[:-1]] == expected
        assert [f["id"] for f in frames] == [m.id for m in got]  # same messages, same ids


async def test_physician_does_not_get_department_events(api: httpx.AsyncClient, admin: dict[str, str],
                                                        relay: httpx.AsyncClient, broker: Broker) -> None:
    boss = await make_user(api, admin, "system_admin")
    doc = await make_user(api, admin, "physician")
    async with open_sse(relay, boss.token) as a, open_sse(relay, doc.token) as p:
        r = await api.post("/departments", json={"code": unique("RP").upper()[:10], "name": "Not for PHY"},
                           headers=boss.headers)
        assert r.status_code == 201, r.text
        await a.until(lambda m: m.event == "users.department.created"
                      and m.data["payload"]["departmentId"] == r.json()["id"])
        marker = await broker.publish("imaging.study.updated", entity())
        got = await p.until_key(marker["messageId"])
        assert not [m for m in got if m.event.startswith("users.")], got


async def test_never_relayed_events_do_not_reach_even_an_admin(api: httpx.AsyncClient, admin: dict[str, str],
                                                               relay: httpx.AsyncClient, broker: Broker,
                                                               stack: Stack) -> None:
    """Real sign-ins, a failed one, a password change and a logout: their session, login,
    password and audit events are published on the bus, and none reaches an admin's stream."""
    boss = await make_user(api, admin, "system_admin")
    keys = ("users.session.*", "users.login.*", "users.user.password_changed", "*.audit.recorded")
    async with EventTap(stack.env["AMQP_URL"], *keys) as tap, open_sse(relay, boss.token) as sse, \
            open_ws(stack, boss.token) as ws:
        await ws.sync()
        person = await make_user(api, admin, "radiologist", activate=False)
        r = await login(api, person.email, "Wrong-Password-1!")
        assert r.status_code == 401, r.text
        r = await login(api, person.email, person.password)
        assert r.status_code == 200, r.text
        token = r.json()["accessToken"]
        r = await api.post("/auth/me/password", json={"currentPassword": person.password,
                                                      "newPassword": "Another-Passw0rd-42!"},
                           headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 204, r.text
        r = await login(api, person.email, "Another-Passw0rd-42!")
        assert r.status_code == 200, r.text
        r = await api.post("/auth/logout", headers={"Authorization": f"Bearer {r.json()['accessToken']}"})
        assert r.status_code == 204, r.text
        for kind in ("users.login.failed", "users.session.started", "users.session.revoked",
                     "users.user.password_changed", "users.audit.recorded"):
            await tap.wait_for(lambda e, kind=kind: e["type"] == kind)
        marker = await broker.publish("system.notification.created", notification(boss.id))

        got = await sse.until_key(marker["payload"]["id"])
        frames = await ws.until_key(marker["payload"]["id"])
    assert tap.events, "the actions published nothing"
    leaked = [m.event for m in got if NEVER_RELAYED.match(m.event)]
    leaked += [f["event"] for f in frames if NEVER_RELAYED.match(f.get("event", ""))]
    assert leaked == []
    assert "users.user.created" in [m.event for m in got]  # the same actions' relayable events did come


async def test_topics_and_room_filters(api: httpx.AsyncClient, admin: dict[str, str], relay: httpx.AsyncClient,
                                       broker: Broker) -> None:
    boss = await make_user(api, admin, "system_admin")
    room, other = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_sse(relay, boss.token, params={"topics": "imaging.study.*,patients.encounter.*"}) as topics, \
            open_sse(relay, boss.token, params={"roomId": room}) as in_room, \
            open_sse(relay, boss.token, params={"topics": "imaging.*.*", "roomId": room}) as both:
        published = [
            ("patient", await broker.publish("patients.patient.updated", entity(roomId=room))),
            ("study-room", await broker.publish("imaging.study.updated", entity(roomId=room))),
            ("order-other", await broker.publish("imaging.order.created", entity(roomId=other))),
            ("moved-from", await broker.publish("patients.encounter.transferred",
                                                entity(fromRoomId=room, toRoomId=other))),
            ("moved-to", await broker.publish("patients.encounter.transferred",
                                              entity(fromRoomId=other, toRoomId=room))),
            ("schedule", await broker.publish("users.room_schedule.updated", entity(roomId=room))),
            ("study-none", await broker.publish("imaging.study.updated", entity())),
            ("order-room", await broker.publish("imaging.order.created", entity(roomId=room))),
        ]
        labels = {sent["messageId"]: label for label, sent in published}
        marker = await broker.publish("system.notification.created", notification(boss.id))  # not filtered

        def seen(got: list[Msg]) -> list[str]:
            return [labels[key(m.data)] for m in got[:-1]]

        assert seen(await topics.until_key(marker["payload"]["id"])) == [
            "study-room", "moved-from", "moved-to", "study-none"]
        assert seen(await in_room.until_key(marker["payload"]["id"])) == [
            "patient", "study-room", "moved-from", "moved-to", "schedule", "order-room"]
        assert seen(await both.until_key(marker["payload"]["id"])) == ["study-room", "order-room"]


async def test_a_topic_outside_the_role_is_ignored(api: httpx.AsyncClient, admin: dict[str, str],
                                                   relay: httpx.AsyncClient, broker: Broker, stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    mixed = {"topics": "patients.patient.*,imaging.study.*"}
    async with open_sse(relay, doc.token, params=mixed) as sse, \
            open_sse(relay, doc.token, params={"topics": "patients.patient.*"}) as refused_only, \
            open_ws(stack, doc.token, params=mixed) as ws:
        assert await ws.sync() == [{"type": "error", "code": "topic_not_allowed", "message": "patients.patient.*"}]
        await broker.publish("patients.patient.updated", entity())
        await broker.publish("patients.encounter.created", entity())  # the role's, but not asked for
        study = await broker.publish("imaging.study.updated", entity())
        marker = await broker.publish("system.notification.created", notification(doc.id))

        got = await sse.until_key(marker["payload"]["id"])
        assert [key(m.data) for m in got] == [study["messageId"], marker["payload"]["id"]]
        frames = await ws.until_key(marker["payload"]["id"])
        assert [key(f["data"]) for f in frames] == [study["messageId"], marker["payload"]["id"]]
        # nothing but notifications when every requested topic was outside the role
        assert [m.event for m in await refused_only.until_key(marker["payload"]["id"])] == ["new_notification"]

        await ws.send({"type": "subscribe", "topics": ["users.user.*", "patients.encounter.*"]})
        assert await ws.sync() == [{"type": "error", "code": "topic_not_allowed", "message": "users.user.*"}]
        await broker.publish("imaging.study.updated", entity())
        encounter = await broker.publish("patients.encounter.created", entity())
        frames = await ws.until(event_frame)
        assert key(frames[-1]["data"]) == encounter["messageId"]


# ---------------------------------------------------------------- 4. notifications


async def test_notifications_reach_only_their_recipient(api: httpx.AsyncClient, admin: dict[str, str],
                                                        relay: httpx.AsyncClient, broker: Broker,
                                                        stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    colleague = await make_user(api, admin, "physician")
    boss = await make_user(api, admin, "system_admin")
    async with open_sse(relay, doc.token) as mine, \
            open_sse(relay, doc.token, params={"notifications": "false"}) as muted, \
            open_ws(stack, doc.token) as mine_ws, \
            open_sse(relay, colleague.token) as theirs, open_sse(relay, boss.token) as bosses:
        await mine_ws.sync()
        note = notification(doc.id)
        await broker.publish("system.notification.created", note)
        read = {"recipientId": doc.id, "notificationIds": [note["id"]], "unreadCount": 0}
        await broker.publish("system.notification.read", read)
        marker = await broker.publish("imaging.study.updated", entity())  # for every one of them

        got = await mine.until_key(marker["messageId"])
        assert [(m.event, m.data) for m in got[:-1]] == [
            ("new_notification", note),
            ("notification_read", {"notificationIds": [note["id"]], "unreadCount": 0}),
        ]
        assert all(m.id is not None and STREAM_ID.match(m.id) for m in got)
        frames = await mine_ws.until_key(marker["messageId"])
        assert [(f["type"], f["event"], f["data"], f["id"]) for f in frames] == [
            ("event", m.event, m.data, m.id) for m in got]
        for stream in (muted, theirs, bosses):
            assert [m.data["messageId"] for m in await stream.until_key(marker["messageId"])] == [
                marker["messageId"]]


# ---------------------------------------------------------------- 5. resume


async def test_sse_resume_replays_exactly_what_was_missed(api: httpx.AsyncClient, admin: dict[str, str],
                                                          relay: httpx.AsyncClient, broker: Broker) -> None:
    doc = await make_user(api, admin, "physician")
    boss = await make_user(api, admin, "system_admin")
    params = {"topics": "imaging.study.*"}
    async with open_sse(relay, boss.token) as witness:
        async with open_sse(relay, doc.token, params=params) as first:
            seen = await broker.publish("imaging.study.updated", entity())
            last_id = (await first.until_key(seen["messageId"]))[-1].id
            assert last_id is not None
        # offline: more of the client's events than its queue holds, mixed with others it must not get
        expected: list[str] = []
        for n in range(QUEUE_MAX + 15):
            expected.append((await broker.publish("imaging.study.updated", entity(n=n)))["messageId"])
            if n % 10 == 0:
                await broker.publish("imaging.order.created", entity())  # the role's, another topic
                await broker.publish("patients.patient.updated", entity())  # not the role's
                await broker.publish("system.notification.created", notification(boss.id))  # someone else's
            if n == 30:
                note = notification(doc.id)  # a notification is replayed too, whatever the topics
                await broker.publish("system.notification.created", note)
                expected.append(note["id"])
        offline_end = await broker.publish("imaging.order.created", entity())
        witnessed = {key(m.data): m.id for m in await witness.until_key(offline_end["messageId"])}

        async with open_sse(relay, doc.token, params=params, headers={"Last-Event-ID": last_id}) as resumed:
            # live events while the replay may still be running: each exactly once, after it
            live = [(await broker.publish("imaging.study.updated", entity()))["messageId"] for _ in range(5)]
            got = await resumed.take(len(expected) + len(live))
            assert [key(m.data) for m in got] == expected + live
            assert "resync" not in [m.event for m in got]
            ids = [m.id for m in got]
            assert all(i is not None for i in ids)
            keys_ = [tuple(map(int, i.split("-"))) for i in ids if i is not None]
            assert keys_ == sorted(keys_) and len(set(keys_)) == len(keys_)
            assert keys_[0] > tuple(map(int, last_id.split("-")))
            for m in got[: len(expected)]:
                if m.event != "new_notification":
                    assert witnessed[key(m.data)] == m.id  # the same id every client sees
            after = await broker.publish("imaging.study.updated", entity())
            assert key((await resumed.next()).data) == after["messageId"]

        # the same through the query parameter (EventSource cannot set headers on a first connect)
        async with open_sse(relay, doc.token, params={**params, "lastEventId": last_id}) as again:
            got = await again.take(len(expected))
            assert [key(m.data) for m in got] == expected


@pytest.mark.parametrize(("where", "last_id"), [
    ("header", "1-0"), ("query", "1-0"), ("header", "not-an-id"), ("query", "99999999999999999999999-0"),
    ("header", "18446744073709551616-0"), ("header", "99999999999999-0"),
])
async def test_sse_resume_from_an_unknown_id_says_resync_first(api: httpx.AsyncClient, admin: dict[str, str],
                                                               relay: httpx.AsyncClient, broker: Broker,
                                                               where: str, last_id: str) -> None:
    doc = await make_user(api, admin, "imaging_technician")
    options: dict[str, Any] = ({"headers": {"Last-Event-ID": last_id}} if where == "header"
                               else {"params": {"lastEventId": last_id}})
    async with open_sse(relay, doc.token, **options) as sse:
        first = await sse.next()
        assert (first.event, first.data, first.id) == ("resync", {"reason": "gap"}, None)
        live = await broker.publish("imaging.study.updated", entity())
        assert key((await sse.next()).data) == live["messageId"]  # then live, nothing replayed


async def test_ws_resume(api: httpx.AsyncClient, admin: dict[str, str], relay: httpx.AsyncClient, broker: Broker,
                         stack: Stack) -> None:
    doc = await make_user(api, admin, "radiologist")
    boss = await make_user(api, admin, "system_admin")
    params = {"topics": "imaging.study.*,patients.report.*"}
    async with open_ws(stack, doc.token, params=params) as ws:
        await ws.sync()
        seen = await broker.publish("imaging.study.updated", entity())
        last_id = (await ws.until_key(seen["messageId"]))[-1]["id"]
    expected = []
    async with open_sse(relay, boss.token, params={"topics": "imaging.order.*"}) as witness:
        for n in range(QUEUE_MAX + 5):
            expected.append((await broker.publish("patients.report.signed" if n % 2 else "imaging.study.updated",
                                                  entity(n=n)))["messageId"])
            if n % 7 == 0:
                await broker.publish("imaging.order.created", entity())  # not asked for
        offline_end = await broker.publish("imaging.order.created", entity())
        await witness.until_key(offline_end["messageId"])  # all of it is in the relay's stream
    async with open_ws(stack, doc.token, params=params) as ws:
        await ws.sync()
        await ws.send({"type": "resume", "lastEventId": last_id})
        live = await broker.publish("imaging.study.updated", entity())
        frames = await ws.events(len(expected) + 1)
        assert [key(f["data"]) for f in frames] == [*expected, live["messageId"]]
        assert all(f["type"] == "event" and STREAM_ID.match(f["id"]) for f in frames)
        ids = [tuple(map(int, f["id"].split("-"))) for f in frames]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert ids[0] > tuple(map(int, last_id.split("-")))

        for bad in ("0-0", "garbage", ""):
            await ws.send({"type": "resume", "lastEventId": bad})
            live = await broker.publish("imaging.study.updated", entity())
            frames = [f for f in await ws.until_key(live["messageId"]) if event_frame(f)]
            assert frames[0] == {"type": "event", "event": "resync", "data": {"reason": "gap"}}
            assert [key(f["data"]) for f in frames[1:]] == [live["messageId"]]


# ---------------------------------------------------------------- 6. revocation


async def test_logout_ends_that_sessions_streams(api: httpx.AsyncClient, admin: dict[str, str],
                                                 relay: httpx.AsyncClient, broker: Broker, stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    r = await login(api, doc.email, doc.password)  # a second session of the same user
    assert r.status_code == 200, r.text
    other_session = r.json()["accessToken"]
    async with open_sse(relay, doc.token) as sse, open_ws(stack, doc.token) as ws, \
            open_sse(relay, other_session) as other_sse, open_ws(stack, other_session) as other_ws:
        await ws.sync()
        await other_ws.sync()
        r = await api.post("/auth/logout", headers=doc.headers)
        assert r.status_code == 204, r.text
        await sse.rest()
        assert sse.ended
        code, _ = await ws.closed()
        assert code == 4409
        # the user's other session goes on
        marker = await broker.publish("imaging.study.updated", entity())
        assert [key(m.data) for m in await other_sse.until_key(marker["messageId"])] == [marker["messageId"]]
        assert [key(f["data"]) for f in await other_ws.until_key(marker["messageId"])] == [marker["messageId"]]
    r = await relay.get("/events/stream", headers=doc.headers)
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    async with open_ws(stack, doc.token) as ws:
        assert (await ws.closed())[0] == 4401


async def test_disabling_the_user_ends_every_stream(api: httpx.AsyncClient, admin: dict[str, str],
                                                    relay: httpx.AsyncClient, stack: Stack) -> None:
    tech = await make_user(api, admin, "imaging_technician")
    r = await login(api, tech.email, tech.password)
    assert r.status_code == 200, r.text
    other_session = r.json()["accessToken"]
    async with open_sse(relay, tech.token) as sse, open_sse(relay, other_session) as other_sse, \
            open_ws(stack, tech.token) as ws, open_ws(stack, other_session) as other_ws:
        await ws.sync()
        await other_ws.sync()
        r = await api.post(f"/users/{tech.id}/disable", json={}, headers=admin)
        assert r.status_code == 200, r.text
        for stream in (sse, other_sse):
            await stream.rest()
            assert stream.ended
        for socket_ in (ws, other_ws):
            assert (await socket_.closed())[0] == 4409

    async def refused(token: str) -> bool:  # the sessions' revocation may come just after the user's
        r = await relay.get("/events/stream", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 401), r.text
        return r.status_code == 401

    for token in (tech.token, other_session):
        await eventually(lambda token=token: refused(token), timeout=WAIT)


# ---------------------------------------------------------------- 7. backpressure


SMALL_RCVBUF = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 131_072)]  # no autotuning up to 32 MiB
BULK = "imaging.instances.stored"


def blob() -> str:
    """32 KB that no compression shrinks."""
    return base64.b64encode(os.urandom(24_000)).decode()


TICK = "imaging.study.updated"  # what the other client of the user follows meanwhile


class Flood:
    """Big events for the slow client's topic, with a small one for the other client's every 20."""

    def __init__(self, relay: httpx.AsyncClient, broker: Broker) -> None:
        self.relay, self.broker = relay, broker
        self.bulk: list[str] = []
        self.ticks: list[str] = []

    async def publish(self, n: int) -> None:
        for _ in range(n):
            sent = await self.broker.publish(BULK, entity(n=len(self.bulk), blob=blob()))
            self.bulk.append(sent["messageId"])
            if len(self.bulk) % 20 == 0:
                self.ticks.append((await self.broker.publish(TICK, entity()))["messageId"])

    async def until_dropped(self) -> None:
        """Publish until the relay has closed a connection for overflow, checking on the way that
        no connection's queue ever grows past its bound."""
        before = await health(self.relay)
        while True:
            h = await health(self.relay)
            assert h["maxQueued"] <= QUEUE_MAX + 1, h  # the entries, and the close marker
            if h["overflowing"] + h["dropped"] > before["overflowing"] + before["dropped"]:
                return
            assert len(self.bulk) < 1_500, "no connection was ever dropped"
            await self.publish(20)

    async def after_drop(self) -> None:
        """More than a queue's worth after the drop: none of it is kept for the dropped client."""
        await self.publish(QUEUE_MAX + 10)
        h = await health(self.relay)
        assert h["maxQueued"] <= QUEUE_MAX + 1, h
        self.ticks.append((await self.broker.publish(TICK, entity()))["messageId"])


async def test_sse_slow_client_gets_resync_and_is_dropped(api: httpx.AsyncClient, admin: dict[str, str],
                                                          relay: httpx.AsyncClient, broker: Broker,
                                                          stack: Stack) -> None:
    boss = await make_user(api, admin, "system_admin")
    transport = httpx.AsyncHTTPTransport(socket_options=SMALL_RCVBUF)
    flood = Flood(relay, broker)
    async with httpx.AsyncClient(base_url=stack.relay_url, timeout=WAIT, transport=transport) as slow_client, \
            open_sse(slow_client, boss.token, params={"topics": BULK}) as slow, \
            open_sse(relay, boss.token, params={"topics": TICK}) as other:
        other_got: list[Msg] = []

        async def keep_reading() -> None:  # the other client reads all along; the slow one nothing, for now
            while True:
                other_got.append(await other.next())

        reader = asyncio.create_task(keep_reading())
        try:
            await flood.until_dropped()
            await flood.after_drop()
            # the slow client reads at last: what the relay had written or queued, the resync, the end
            got = await slow.rest()
            await eventually(lambda: last_is([key(m.data) for m in other_got], flood.ticks[-1]), timeout=WAIT)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    assert slow.ended
    assert (got[-1].event, got[-1].data, got[-1].id) == ("resync", {"reason": "overflow"}, None)
    received = [key(m.data) for m in got[:-1]]
    assert 0 < len(received) < len(flood.bulk)
    assert received == flood.bulk[: len(received)]  # a prefix: the client resumes from its last id
    assert [key(m.data) for m in other_got] == flood.ticks  # the other client got everything, in order


async def test_ws_slow_client_is_closed_1013(api: httpx.AsyncClient, admin: dict[str, str],
                                             relay: httpx.AsyncClient, broker: Broker, stack: Stack) -> None:
    boss = await make_user(api, admin, "system_admin")
    sock = socket.socket()
    sock.setsockopt(*SMALL_RCVBUF[0])
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(stack.env["RELAY_PORT"])))
    flood = Flood(relay, broker)
    # the slow client buffers one message, then reads nothing until asked to
    async with open_ws(stack, boss.token, params={"topics": BULK}, sock=sock, max_queue=1, compression=None) as slow, \
            open_ws(stack, boss.token, params={"topics": TICK}) as other:
        await slow.sync()
        await other.sync()
        other_got: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            while True:
                other_got.append(await other.recv())

        reader = asyncio.create_task(keep_reading())
        try:
            await flood.until_dropped()
            await flood.after_drop()
            code, frames = await slow.closed()
            await eventually(lambda: last_is([key(f["data"]) for f in other_got], flood.ticks[-1]), timeout=WAIT)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    assert code == 1013
    assert frames[-1] == {"type": "event", "event": "resync", "data": {"reason": "overflow"}}
    received = [key(f["data"]) for f in frames[:-1]]
    assert 0 < len(received) < len(flood.bulk)
    assert received == flood.bulk[: len(received)]
    assert [key(f["data"]) for f in other_got] == flood.ticks


async def last_is(keys: list[str | None], last: str) -> bool:
    return bool(keys) and keys[-1] == last


# ---------------------------------------------------------------- 8. connections per user


async def test_at_most_five_connections_per_user(api: httpx.AsyncClient, admin: dict[str, str],
                                                 relay: httpx.AsyncClient, stack: Stack) -> None:
    rad = await make_user(api, admin, "radiologist")
    async with contextlib.AsyncExitStack() as keep:
        for _ in range(2):
            await keep.enter_async_context(open_sse(relay, rad.token))
        for _ in range(2):
            await (await keep.enter_async_context(open_ws(stack, rad.token))).sync()
        async with open_sse(relay, rad.token, in_query=True):
            r = await relay.get("/events/stream", headers=rad.headers)
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) > 0
            async with open_ws(stack, rad.token) as ws:
                assert (await ws.closed())[0] == 4429
        # one closed: a sixth may come (once the relay has seen the first one go)

        async def sixth() -> bool:
            async with relay.stream("GET", "/events/stream", headers=rad.headers) as response:
                if response.status_code == 429:
                    return False
                assert response.status_code == 200
                return True

        await eventually(sixth, timeout=WAIT, interval=0.1)

        async def another_by_websocket() -> bool:  # once the relay has seen that sixth one go too
            async with open_ws(stack, rad.token) as ws:
                await ws.send({"type": "ping"})
                with contextlib.suppress(ConnectionClosed):
                    return await ws.recv() == {"type": "pong"}
                assert ws.conn.close_code == 4429
                return False

        await eventually(another_by_websocket, timeout=WAIT, interval=0.1)


# ---------------------------------------------------------------- 9. WebSocket frames


async def test_ws_ping_subscribe_and_event_frames(api: httpx.AsyncClient, admin: dict[str, str], broker: Broker,
                                                  stack: Stack) -> None:
    rcp = await make_user(api, admin, "reception_staff")
    room = str(uuid.uuid4())
    async with open_ws(stack, rcp.token, params={"topics": "patients.patient.*"}) as ws:
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
        actor = Actor(user_id=uuid.UUID(rcp.id), role="reception_staff", session_id="s1", ip="10.0.0.1",
                      user_agent="tests")
        patient = await broker.publish("patients.patient.updated", entity(), actor=actor)
        frame = (await ws.until(event_frame))[-1]
        assert set(frame) == {"type", "id", "event", "data"}
        assert frame["type"] == "event" and frame["event"] == "patients.patient.updated"
        assert STREAM_ID.match(frame["id"])
        assert frame["data"] == {"messageId": patient["messageId"], "type": "patients.patient.updated",
                                 "occurredAt": patient["occurredAt"],
                                 "actor": {"userId": rcp.id, "role": "reception_staff"},
                                 "payload": patient["payload"]}

        # subscribe replaces the filter: topics and room
        await ws.send({"type": "subscribe", "topics": ["patients.encounter.*"], "roomId": room})
        assert await ws.sync() == []
        await broker.publish("patients.patient.updated", entity(roomId=room))
        await broker.publish("patients.encounter.created", entity(roomId=str(uuid.uuid4())))
        in_room = await broker.publish("patients.encounter.created", entity(roomId=room))
        frames = [f for f in await ws.until_key(in_room["messageId"]) if event_frame(f)]
        assert [key(f["data"]) for f in frames] == [in_room["messageId"]]

        # …entirely: without a roomId, no room filter any more; without topics, all the role may see
        await ws.send({"type": "subscribe"})
        assert await ws.sync() == []
        anywhere = await broker.publish("patients.encounter.created", entity())
        order = await broker.publish("imaging.order.created", entity())
        frames = [f for f in await ws.until_key(order["messageId"]) if event_frame(f)]
        assert [key(f["data"]) for f in frames] == [anywhere["messageId"], order["messageId"]]

        # frames the relay does not know
        await ws.conn.send("not json")
        await ws.send({"type": "dance"})
        assert [f["code"] for f in await ws.sync()] == ["bad_frame", "bad_frame"]


async def test_query_strings_are_never_logged(api: httpx.AsyncClient, admin: dict[str, str],
                                              relay: httpx.AsyncClient, stack: Stack) -> None:
    doc = await make_user(api, admin, "physician")
    room = unique("room-")
    before = len(stack.log_of("relay"))
    async with open_ws(stack, doc.token, in_query=True, params={"roomId": room}) as ws:
        assert await ws.sync() == []
    with pytest.raises(InvalidStatus):
        async with open_ws(stack, doc.token, in_query=True, params={"roomId": room}, origin="https://evil.example"):
            pass
    async with open_sse(relay, doc.token, in_query=True, params={"roomId": room}):
        pass

    async def logged() -> str:
        text = stack.log_of("relay")[before:]
        return text if text.count("WebSocket /events/ws") >= 2 else ""

    text = await eventually(logged, timeout=WAIT)
    assert '"WebSocket /events/ws\\" [accepted]' in text and '"WebSocket /events/ws\\" 403' in text
    assert room not in stack.log_of("relay") and doc.token not in stack.log_of("relay")
