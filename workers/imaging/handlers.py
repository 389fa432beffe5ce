"""Handlers of the imaging worker (`imaging.ping` is answered by the runtime)."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("imaging")
