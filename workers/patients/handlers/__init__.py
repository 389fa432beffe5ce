"""Handlers of the patients worker, by area. Importing this package registers them all."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("patients")

from workers.patients.handlers import conditions, patients, vital_signs  # noqa: E402, F401
