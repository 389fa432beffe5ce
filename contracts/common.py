"""Types shared by every domain: roles, references, pages, list parameters, ping."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Generic, TypeVar
from uuid import UUID

import msgspec
from msgspec import Meta

from contracts.errors import BadRequest

T = TypeVar("T")

MAX_WINDOW = 10_000  # page × limit beyond this → 400 page_out_of_range (spec README §4)

Text = Annotated[str, Meta(max_length=10_000)]
PageNumber = Annotated[int, Meta(ge=1)]
Limit = Annotated[int, Meta(ge=1, le=100)]


class Role(enum.StrEnum):
    SYSTEM_ADMIN = "system_admin"
    PHYSICIAN = "physician"
    RADIOLOGIST = "radiologist"
    IMAGING_TECHNICIAN = "imaging_technician"
    RECEPTION_STAFF = "reception_staff"


ALL_ROLES = frozenset(Role)
CLINICAL_SIGNERS = frozenset({Role.PHYSICIAN, Role.RADIOLOGIST, Role.IMAGING_TECHNICIAN})


class Struct(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of every input struct: camelCase, unknown fields refused."""


class View(msgspec.Struct, rename="camel", kw_only=True):
    """Base of every output struct: camelCase."""


class Empty(Struct):
    """No payload."""


class UserRef(View):
    id: UUID
    display_name: str
    role: Role


class Page(View, Generic[T]):
    items: list[T]
    total: int
    page: int
    limit: int
    total_is_lower_bound: bool = False


class Ping(Struct):
    """Liveness of a worker kind."""


class PingResult(View):
    worker: str
    version: str
    uptime_seconds: float


class ListParams(Struct):
    """Paging and sort shared by every list query (spec README §4)."""

    page: PageNumber = 1
    limit: Limit = 20
    sort: list[str] = msgspec.field(default_factory=list)

    def window_check(self) -> None:
        if self.page * self.limit > MAX_WINDOW:
            raise BadRequest(
                f"page × limit must not exceed {MAX_WINDOW}; narrow the filter",
                code="page_out_of_range", field="page",
            )


def parse_sort(raw: str | None, allowed: tuple[str, ...], default: str) -> list[str]:
    """`"-createdAt,name"` → `["-createdAt", "name"]`, every field on the route's whitelist."""
    items = [part.strip() for part in (raw or default).split(",") if part.strip()]
    for item in items:
        if item.lstrip("-") not in allowed:
            raise BadRequest(
                f"cannot sort by {item.lstrip('-')!r}; allowed: {', '.join(allowed)}",
                code="invalid_sort", field="sort", allowed=list(allowed),
            )
    return items


class Timestamps(View):
    created_at: datetime
    updated_at: datetime
    version: int
