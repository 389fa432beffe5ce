"""Role rules. Every route declares exactly one, in its `opt`; the auth middleware enforces it
and a test fails if any route lacks one (spec README §1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.common import Role

ADM = Role.SYSTEM_ADMIN
PHY = Role.PHYSICIAN
RAD = Role.RADIOLOGIST
TECH = Role.IMAGING_TECHNICIAN
RCP = Role.RECEPTION_STAFF


@dataclass(frozen=True, slots=True)
class Access:
    public: bool = False  # no token needed (a token, if sent and valid, is still used)
    roles: frozenset[Role] | None = None  # None = any signed-in active user (Staff)
    allow_password_change_pending: bool = False  # reachable while mustChangePassword (/auth/me*)
    rate: str = "api"  # which per-user budget a request counts against: api, or dicomweb (viewers fetch many frames)

    def describe(self) -> str:
        if self.public:
            return "Public"
        if self.roles is None:
            return "Staff"
        return ", ".join(sorted(r.value for r in self.roles))


def public() -> dict[str, Any]:
    return {"access": Access(public=True)}


def staff(*, password_change_pending: bool = False) -> dict[str, Any]:
    return {"access": Access(allow_password_change_pending=password_change_pending)}


def roles(*allowed: Role) -> dict[str, Any]:
    return {"access": Access(roles=frozenset(allowed))}


def dicomweb_roles(*allowed: Role) -> dict[str, Any]:
    """A DICOMweb route: a role rule, counted against the DICOMweb budget (DICOMWEB_RATE_LIMIT_PER_MINUTE)."""
    return {"access": Access(roles=frozenset(allowed), rate="dicomweb")}


CLINICAL = (RCP, PHY, RAD, TECH, ADM)  # "Clinical+": who may read patient data (patients.md §3)
