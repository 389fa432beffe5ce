"""Handlers of the imaging worker, by area. Importing this package registers them all
(`imaging.ping` is answered by the runtime)."""

from workers.runtime.registry import HandlerRegistry

registry = HandlerRegistry("imaging")

from workers.imaging.handlers import dicomweb, ingest, jobs, studies  # noqa: E402, F401
