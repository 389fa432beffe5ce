"""Patients worker contracts (spec patients.md). The domain arrives with its own issue; today the
worker answers its ping so the spine can prove it is alive."""

from __future__ import annotations

from contracts.common import Empty, PingResult
from contracts.registry import query


@query("patients.ping", result=PingResult)
class PingPatients(Empty):
    pass
