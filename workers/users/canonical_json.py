"""RFC 8785 JSON Canonicalization Scheme (JCS): the exact bytes a signature covers.

The statement of a signature is serialised so that anyone holding the same data produces the same
bytes, in any language: object members sorted by the UTF-16 code units of their names, no
whitespace, strings with the minimal escaping of ECMAScript's `JSON.stringify`, numbers as
ECMAScript's `Number.prototype.toString` writes an IEEE-754 double, UTF-8 out. The input must be
I-JSON (RFC 7493): no lone surrogates, no NaN or infinities, integers a double represents exactly.
"""

from __future__ import annotations

import math
from typing import Any

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
MAX_DEPTH = 64


class CanonicalizationError(ValueError):
    """The value is not I-JSON, so it has no canonical form."""


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dict, list, str, int, float, bool, None)."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out).encode("utf-8")


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalizationError("nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(serialize_string(value))
    elif isinstance(value, int | float):
        out.append(serialize_number(value))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalizationError(f"object member names must be strings, not {type(key).__name__}")
        out.append("{")
        for i, key in enumerate(sorted(value, key=utf16_key)):
            if i:
                out.append(",")
            out.append(serialize_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON value")


def utf16_key(name: str) -> bytes:
    """Sort key: big-endian UTF-16 bytes compare exactly as the UTF-16 code units do (RFC 8785
    §3.2.3), which differs from code-point order above the BMP (U+1F600 sorts before U+FB33)."""
    _check_scalar_values(name)
    return name.encode("utf-16-be")


def _check_scalar_values(text: str) -> None:
    for ch in text:
        if "\ud800" <= ch <= "\udfff":
            raise CanonicalizationError("lone surrogate in a string (not I-JSON)")


def serialize_string(text: str) -> str:
    """A JSON string as ECMAScript writes it: `"` and `\\` escaped, the control characters below
    U+0020 as their short escape or `\\u00xx` (lower-case hex), everything else as is."""
    _check_scalar_values(text)
    parts = ['"']
    for ch in text:
        short = _SHORT_ESCAPES.get(ch)
        if short is not None:
            parts.append(short)
        elif ch < " ":
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def serialize_number(number: int | float) -> str:
    """ECMAScript Number::toString of the IEEE-754 double (ECMA-262 §6.1.6.1.20)."""
    if isinstance(number, int):
        try:
            as_float = float(number)
        except OverflowError:
            as_float = math.inf
        if math.isinf(as_float) or int(as_float) != number:
            raise CanonicalizationError("integer not exactly representable as an IEEE-754 double")
        number = as_float
    if math.isnan(number) or math.isinf(number):
        raise CanonicalizationError("NaN and infinities are not JSON")
    if number == 0:
        return "0"  # minus zero too
    sign = "-" if number < 0 else ""
    digits, exponent = _shortest_digits(abs(number))
    k, n = len(digits), exponent  # value = 0.digits × 10^n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        body = f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"
    return sign + body


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest decimal digits that round-trip to `value` (Python's repr is the correctly
    rounded shortest form, as ECMAScript requires) and n with value = 0.d1d2… × 10^n."""
    text = repr(value)
    mantissa, _, exp_text = text.partition("e")
    exp = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = whole + frac
    point = len(whole) + exp  # digits[:point] are before the decimal point
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point
