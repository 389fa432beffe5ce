"""Passwords: argon2id hashing off the event loop, and the policy of users.md §6."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from contracts.errors import FieldError, Invalid
from contracts.settings import Settings

MIN_LENGTH = 10
MAX_LENGTH = 128


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("workers.users").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def check_policy(password: str, *, username: str, email: str, field: str = "password") -> None:
    """Raise 422 naming `field` when the password breaks the policy."""
    problems: list[tuple[str, str]] = []
    if len(password) < MIN_LENGTH:
        problems.append(("too_short", f"at least {MIN_LENGTH} characters"))
    elif len(password) > MAX_LENGTH:
        problems.append(("too_long", f"at most {MAX_LENGTH} characters"))
    lowered = password.lower()
    local = email.split("@", 1)[0].lower()
    if username and username.lower() in lowered:
        problems.append(("contains_username", "must not contain the username"))
    if len(local) >= 3 and local in lowered:
        problems.append(("contains_email", "must not contain the e-mail address"))
    if lowered in common_passwords():
        problems.append(("too_common", "is on the list of common passwords"))
    if problems:
        _, detail = problems[0]
        raise Invalid(
            f"password {detail}",
            code="weak_password",
            field=field,
            errors=[FieldError(field=field, code=c, detail=f"password {d}") for c, d in problems],
        )


class Hasher:
    """argon2id with settings-driven cost; hashing and verifying run in a thread pool."""

    def __init__(self, settings: Settings) -> None:
        self._ph = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._ph.hash, password)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """True if it matches. With no hash (unknown account) a dummy is checked: same timing."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy-password-for-timing")
            hashed = self._dummy
            password = password + "\x00"  # never matches
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify, hashed, password)

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._ph.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        return self._ph.check_needs_rehash(hashed)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
