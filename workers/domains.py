"""The four worker kinds and how to build each one."""

from __future__ import annotations

from collections.abc import Callable

from contracts.registry import load_all
from contracts.settings import Settings
from workers.runtime.consumer import Worker

DOMAINS = ("users", "patients", "imaging", "system")


def build_worker(domain: str, settings: Settings) -> Worker:
    load_all()
    builders: dict[str, Callable[[Settings], Worker]] = {
        "users": _users,
        "patients": _patients,
        "imaging": _imaging,
        "system": _system,
    }
    if domain not in builders:
        raise ValueError(f"unknown worker {domain!r}; one of {', '.join(DOMAINS)}")
    return builders[domain](settings)


def _users(settings: Settings) -> Worker:
    from workers.users.handlers import registry
    from workers.users.services import make_services

    return Worker(registry, settings, services=make_services)


def _patients(settings: Settings) -> Worker:
    from workers.patients.handlers import registry

    return Worker(registry, settings)


def _imaging(settings: Settings) -> Worker:
    from workers.imaging.handlers import registry
    from workers.imaging.services import make_services

    return Worker(registry, settings, services=make_services)


def _system(settings: Settings) -> Worker:
    from workers.system.handlers import registry

    return Worker(registry, settings)
