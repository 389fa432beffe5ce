"""Per-process read caches of another domain's facts, dropped when an event says they changed.

A worker asks other domains over the bus for facts that rarely change (a service-room link, a
room's code). Each process keeps what it was told for at most `ttl` seconds, and forgets it all as
soon as a watched event arrives on the process's own exclusive queue (every replica hears every
event) or the link to the broker drops (events may have been missed meanwhile). A value fetched
before a clear is never stored after it: `generation` guards the race.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LocalCache(Generic[K, V]):
    def __init__(self, ttl: float, max_items: int = 10_000) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.generation = 0
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return hit[1]

    def put(self, key: K, value: V, generation: int) -> None:
        """Keep `value` unless the cache was cleared since `generation` was read."""
        if generation != self.generation:
            return
        if len(self._items) >= self.max_items:
            self._items.clear()
        self._items[key] = (time.monotonic() + self.ttl, value)

    def clear(self, *_: object) -> None:
        self.generation += 1
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
