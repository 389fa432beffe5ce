"""Users domain (spec users.md), signing keys and signatures."""

from __future__ import annotations
