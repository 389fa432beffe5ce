"""A small Server-Sent Events client for the tests: the real relay, read line by line."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

WAIT = 20.0  # generous: only ever a limit for something that should happen


def key(data: Any) -> str | None:
    """What identifies a message's data: the envelope id of a domain event, a notification's id."""
    if not isinstance(data, dict):
        return None
    return data.get("messageId") or data.get("id")


# ---------------------------------------------------------------- SSE client


@dataclass
class Msg:
    event: str
    data: Any
    id: str | None = None


class SSE:
    """One live SSE response, parsed line by line; comments (`: ping`) and every line are kept."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.lines: list[str] = []
        self.comments = 0
        self.ended = False
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    async def _pump(self) -> Msg | None:
        """Read one line; the message it completes, if any. EOFError once the server ended the stream."""
        try:
            line = await anext(self._lines)
        except StopAsyncIteration:
            self.ended = True
            raise EOFError("the stream ended") from None
        self.lines.append(line)
        if line.startswith(":"):
            self.comments += 1
            return None
        if line == "":
            fields, data = self._fields, self._data
            self._fields, self._data = {}, []
            if "event" not in fields and not data:
                return None  # e.g. the `retry:` block
            return Msg(fields.get("event", "message"), json.loads("\n".join(data)) if data else None, fields.get("id"))
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        else:
            self._fields[name] = value
        return None

    async def next(self, timeout: float = WAIT) -> Msg:
        async def one() -> Msg:
            while True:
                msg = await self._pump()
                if msg is not None:
                    return msg

        return await asyncio.wait_for(one(), timeout)

    async def until(self, predicate: Callable[[Msg], bool], timeout: float = WAIT) -> list[Msg]:
        """Every message up to and including the first one matching `predicate`."""
        got: list[Msg] = []

        async def run() -> list[Msg]:
            while True:
                try:
                    msg = await self.next(timeout)
                except EOFError:
                    raise AssertionError(f"the stream ended first; got {[(m.event, m.data) for m in got]}") from None
                got.append(msg)
                if predicate(msg):
                    return got

        return await asyncio.wait_for(run(), timeout)

    async def until_key(self, wanted: str, timeout: float = WAIT) -> list[Msg]:
        return await self.until(lambda m: key(m.data) == wanted, timeout)

    async def take(self, n: int, timeout: float = WAIT) -> list[Msg]:
        return [await self.next(timeout) for _ in range(n)]

    async def rest(self, timeout: float = WAIT) -> list[Msg]:
        """Every message until the server ends the stream."""
        got: list[Msg] = []

        async def run() -> list[Msg]:
            with contextlib.suppress(EOFError):
                while True:
                    msg = await self._pump()
                    if msg is not None:
                        got.append(msg)
            return got

        return await asyncio.wait_for(run(), timeout)

    async def ping(self, timeout: float = WAIT) -> None:
        """Wait for a heartbeat comment."""
        async def run() -> None:
            seen = self.comments
            while self.comments == seen:
                await self._pump()

        await asyncio.wait_for(run(), timeout)


@contextlib.asynccontextmanager
async def open_sse(client: httpx.AsyncClient, token: str | None, *, in_query: bool = False,
                   params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> AsyncIterator[SSE]:
    """An SSE stream, once the relay has registered it (it has sent `retry:`, its first line)."""
    params, headers = dict(params or {}), dict(headers or {})
    if token is not None:
        if in_query:
            params["access_token"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
    async with client.stream("GET", "/events/stream", params=params, headers=headers) as response:
        if response.status_code != 200:
            raise AssertionError(f"SSE refused: {response.status_code} {(await response.aread()).decode()}")
        assert response.headers["content-type"].startswith("text/event-stream")
        sse = SSE(response)
        assert await asyncio.wait_for(sse._pump(), WAIT) is None
        assert sse.lines == ["retry: 3000"]
        yield sse
