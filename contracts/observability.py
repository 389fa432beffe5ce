"""Structured logs with the correlation id, shared by every process.

A context variable carries the correlation id from the edge request (or the consumed message)
into every log line. Secrets never reach a log: fields named like passwords, PINs, codes, tokens
and secrets are masked wherever a mapping is logged, and query strings are never logged.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgspec

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_SECRET_KEY = re.compile(r"(password|pin|token|secret|apikey|api_key|authorization|cookie|^code$|otp)", re.I)
# A secret in a URL's query string (e.g. a WebSocket handshake line logged by the server).
_SECRET_IN_TEXT = re.compile(r"((?:access_token|refresh_token|token|password|pin|code|api_key)=)[^&\s\"']+", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)


def scrub(text: str) -> str:
    """Mask secrets inside free text: query-string values and bearer tokens."""
    if "=" not in text and "earer" not in text:
        return text
    return _BEARER.sub(r"\1***", _SECRET_IN_TEXT.sub(r"\1***", text))
_json = msgspec.json.Encoder()


def mask(value: Any) -> Any:
    """Replace the values of secret-looking keys, recursively."""
    if isinstance(value, Mapping):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else mask(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "proc": self.process_name,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlationId"] = cid
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(mask(fields))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + process_name + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = scrub(super().format(record))
        cid = correlation_id.get()
        fields = getattr(record, "fields", None)
        extra = {**({"correlationId": cid} if cid else {}), **(mask(fields) if fields else {})}
        return f"{text} {_json.encode(extra).decode()}" if extra else text


def setup_logging(process_name: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else TextFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "httpx", "uvicorn.access", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_fields(**fields: Any) -> dict[str, Any]:
    """`logger.info("...", extra=log_fields(a=1))` attaches structured, masked fields."""
    return {"fields": fields}
