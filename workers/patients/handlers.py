"""Handlers of the patients worker (`patients.ping` is answered by the runtime)."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("patients")
