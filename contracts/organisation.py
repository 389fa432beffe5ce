"""Users domain (spec users.md), rooms, services and which service is offered in which room."""

from __future__ import annotations
