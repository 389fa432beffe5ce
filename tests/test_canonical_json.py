"""The RFC 8785 canonicaliser against the RFC's own examples and rules."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from workers.users.canonical_json import CanonicalizationError, canonicalize, serialize_number


def _double(bits: int) -> float:
    return struct.unpack(">d", bits.to_bytes(8, "big"))[0]


# RFC 8785 Appendix B: IEEE-754 bit patterns and their ECMAScript serialisation.
APPENDIX_B = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
    (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
    (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"),
    (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
    (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"),
    (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"),
    (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"),
    (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B, ids=[f"{b:016x}" for b, _ in APPENDIX_B])
def test_numbers_of_appendix_b(bits: int, expected: str) -> None:
    assert serialize_number(_double(bits)) == expected


@pytest.mark.parametrize("bits", [0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 0xFFF0000000000000])
def test_nan_and_infinities_are_refused(bits: int) -> None:
    with pytest.raises(CanonicalizationError):
        serialize_number(_double(bits))


def test_the_example_of_section_3_2_2() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonicalize(json.loads(text)) == expected.encode("utf-8")


def test_members_sorted_by_utf16_code_units_section_3_2_3() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonicalize(value).decode("utf-8")
    names = [name for name, _ in json.loads(out, object_pairs_hook=lambda pairs: pairs)]
    assert names == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    # code-point order would put the emoji last: the sort really is by UTF-16 code units
    assert sorted(value) != names


def test_nested_objects_are_sorted_and_there_is_no_whitespace() -> None:
    value = {"b": [1, {"z": None, "a": "x"}], "a": {"d": 2.0, "c": True}}
    assert canonicalize(value) == b'{"a":{"c":true,"d":2},"b":[1,{"a":"x","z":null}]}'


def test_minimal_string_escaping() -> None:
    controls = "".join(chr(c) for c in range(0x20))
    out = canonicalize(controls + '"\\/\u007f\u2028\u00e9\U0001d11e').decode("utf-8")
    assert out == (
        '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f'
        '\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d'
        '\\u001e\\u001f\\"\\\\/\u007f\u2028\u00e9\U0001d11e"'
    )
    assert canonicalize("é") == "\"é\"".encode()  # UTF-8 out, not \u escapes


def test_integers_are_numbers_and_must_fit_a_double() -> None:
    assert canonicalize([0, -1, 10**21, 2**53]) == b"[0,-1,1e+21,9007199254740992]"
    with pytest.raises(CanonicalizationError):
        canonicalize(2**53 + 1)
    with pytest.raises(CanonicalizationError):
        canonicalize(10**400)


def test_refusals() -> None:
    for bad in ("\ud800", {"\udc00": 1}, {1: "x"}, math.nan, {"a": {1, 2}}, b"bytes"):
        with pytest.raises(CanonicalizationError):
            canonicalize(bad)


def test_numbers_round_trip_and_match_shortest_repr() -> None:
    rng = random.Random(8785)
    for _ in range(20_000):
        value = _double(rng.getrandbits(64))
        if math.isnan(value) or math.isinf(value):
            continue
        text = serialize_number(value)
        assert float(text) == value or (value == 0 and text == "0")
        # ECMAScript and Python agree on the digits; only the layout differs
        digits = repr(abs(value)).split("e")[0].replace(".", "").strip("0")
        assert text.lstrip("-").split("e")[0].replace(".", "").strip("0") == digits


def test_canonical_form_is_idempotent() -> None:
    value = {"purpose": "report_submit", "entityId": "0190c0de-0000-7000-8000-000000000000",
             "n": [1.5, -0.0, 1e-7], "s": "a\u0000b"}
    once = canonicalize(value)
    assert canonicalize(json.loads(once)) == once
