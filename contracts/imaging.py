"""Imaging worker contracts (spec imaging.md). The domain arrives with its own issue; today the
worker answers its ping so the spine can prove it is alive."""

from __future__ import annotations

from contracts.common import Empty, PingResult
from contracts.registry import query


@query("imaging.ping", result=PingResult)
class PingImaging(Empty):
    pass
