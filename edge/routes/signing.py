"""Routes of the users domain: signing keys and signatures."""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
