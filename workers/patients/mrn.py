"""Medical record numbers (patients.md §6): 8 symbols of Crockford base 32 — digits and capitals
without I, L, O and U, easy to read aloud — drawn with a CSPRNG. Unique in the database; a
collision retries. Typed input is normalised the Crockford way before lookup."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 8
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_mrn() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(text: str) -> str:
    """`ab-1o2 3iL4` → `AB102314`: upper-cased, separators dropped, I/L → 1, O → 0."""
    return "".join(ch for ch in text.upper().translate(_READ_AS) if ch not in " -_.")


def is_mrn(text: str) -> bool:
    value = normalise(text)
    return len(value) == LENGTH and all(ch in ALPHABET for ch in value)
