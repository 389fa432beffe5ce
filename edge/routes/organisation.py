"""Routes of the users domain: rooms, services and which service is offered in which room."""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
