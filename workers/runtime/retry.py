"""Retry with backoff for unexpected exceptions (spec README §8: 1 s, 4 s, 16 s by default)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from contracts.errors import DomainError
from contracts.observability import log_fields

log = logging.getLogger("runtime.retry")
T = TypeVar("T")


async def with_retries(backoff: tuple[float, ...], fn: Callable[..., Awaitable[T]], *args: Any,
                       what: str, stopping: Callable[[], bool] = lambda: False) -> T:
    """Run `fn`; after an unexpected exception wait `backoff[i]` and run it again, until the
    backoffs are used up or the worker is stopping, then raise. Domain errors are answers."""
    attempt = 0
    while True:
        try:
            return await fn(*args)
        except (DomainError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if attempt >= len(backoff) or stopping():
                raise
            log.warning("handler raised; retrying after backoff",
                        extra=log_fields(what=what, attempt=attempt + 1, delay=backoff[attempt], error=repr(exc)))
            await asyncio.sleep(backoff[attempt])
            attempt += 1
