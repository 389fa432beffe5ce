"""Turn msgspec's validation messages into the problem+json field errors of spec README §5."""

from __future__ import annotations

import re

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_FIELD_IN_MSG = re.compile(r"field `([^`]+)`")
_INDEX = re.compile(r"\[(\d+)\]")


def json_pointer(path: str | None) -> str:
    """`$.items[2].value` → `items/2/value`; `$` → ``."""
    if not path:
        return ""
    path = path[1:] if path.startswith("$") else path
    path = _INDEX.sub(r".\1", path)
    return "/".join(part for part in path.split(".") if part)


def classify(message: str) -> str:
    if "unknown field" in message:
        return "unknown_field"
    if "missing required field" in message:
        return "required"
    if "Invalid enum value" in message:
        return "invalid_enum"
    if "of length >=" in message:
        return "too_short"
    if "of length <=" in message:
        return "too_long"
    if re.search(r"Expected `(int|float|decimal)` (>=|<=|>|<)", message):
        return "out_of_range"
    return "invalid_format"


def describe_validation_error(text: str, path_prefix: str = "") -> tuple[str, str, str]:
    """(field, code, detail) for one msgspec validation message."""
    match = _AT.match(text.strip())
    message = match.group("msg") if match else text
    field = json_pointer(match.group("path") if match else None)
    named = _FIELD_IN_MSG.search(message)
    if named and ("unknown field" in message or "missing required field" in message):
        field = f"{field}/{named.group(1)}" if field else named.group(1)
    if path_prefix:
        field = f"{path_prefix}/{field}" if field else path_prefix
    return field, classify(message), message
