"""Handlers of the patients worker, by area. Importing this package registers them all."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("patients")

from workers.patients.handlers import (  # noqa: E402, F401
    conditions,
    encounter_reads,
    encounters,
    patients,
    vital_signs,
)
