"""Handlers of the system worker, by area. Importing this package registers them all."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("system")

from workers.system.handlers import audit, notifications  # noqa: E402, F401
