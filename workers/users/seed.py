"""`imagingctl seed-admin`: the first system administrator, from ADMIN_EMAIL / ADMIN_PASSWORD.

Idempotent: when a live account has that e-mail, nothing changes. Without ADMIN_PASSWORD a random
password is generated, printed once, and must be changed at first sign-in. The `users.user.created`
event goes through the outbox like any other (the users worker publishes it on NOTIFY).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, text

from contracts.common import Role
from contracts.envelope import Actor, encode, make_envelope, now_utc
from contracts.settings import Settings
from contracts.users import UserCreated
from workers.runtime.db import make_engine
from workers.runtime.outbox import notify_channel
from workers.runtime.tables import outbox_table
from workers.users.handlers.accounts import user_event
from workers.users.passwords import Hasher, check_policy
from workers.users.queries import USER_COLUMNS
from workers.users.tables import metadata, users

_outbox = outbox_table(metadata, "users")


@dataclass
class SeedResult:
    created: bool
    email: str
    generated_password: str | None = None


async def seed_admin(settings: Settings, email: str, password: str | None, username: str = "admin") -> SeedResult:
    email = email.strip().lower()
    generated = None
    if password:
        check_policy(password, username=username, email=email)
    else:
        generated = password = secrets.token_urlsafe(15)
    engine = make_engine(settings, pool_size=1)
    hasher = Hasher(settings)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('seed-admin'))"))
            existing = (
                await conn.execute(select(users.c.id).where(users.c.email == email, users.c.deleted_at.is_(None)))
            ).first()
            if existing is not None:
                return SeedResult(False, email)
            taken = (
                await conn.execute(select(users.c.id).where(users.c.username == username,
                                                            users.c.deleted_at.is_(None)))
            ).first()
            if taken is not None:
                username = f"{username}-{secrets.token_hex(3)}"
            now = now_utc()
            row = (
                await conn.execute(
                    users.insert().values(
                        username=username, email=email, password_hash=await hasher.hash(password),
                        first_name="System", last_name="Administrator", role=Role.SYSTEM_ADMIN.value,
                        must_change_password=generated is not None, created_at=now, updated_at=now,
                    ).returning(*USER_COLUMNS)
                )
            ).one()
            envelope = make_envelope(UserCreated.TYPE, user_event(UserCreated, row), Actor(system="seed-admin"))
            await conn.execute(_outbox.insert().values(
                message_id=envelope.message_id, routing_key=UserCreated.TYPE, body=encode(envelope),
                available_at=now - timedelta(seconds=1),
            ))
            await conn.execute(text(f"NOTIFY {notify_channel('users')}"))
        return SeedResult(True, email, generated)
    finally:
        hasher.close()
        await engine.dispose()
