"""The README stays true: every event, every setting and every route group is documented."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from contracts.registry import EVENTS, load_all
from contracts.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _documented_events() -> set[str]:
    names: set[str] = set()
    for line in README.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        base = ""
        for token in re.findall(r"`([^`]+)`", cell):
            if token.startswith(".") and base:
                names.add(base.rsplit(".", 1)[0] + token)
            else:
                base = token
                names.add(token)
    return names


def test_every_event_is_in_the_catalogue() -> None:
    load_all()
    missing = {name for name in EVENTS if not name.startswith("rttest.")} - _documented_events()
    assert not missing, f"README's event table lacks {sorted(missing)}"


def test_every_setting_is_documented() -> None:
    missing = [f.name.upper() for f in msgspec.structs.fields(Settings) if f"`{f.name.upper()}`" not in README]
    assert not missing, f"README's settings table lacks {missing}"


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```", 2)[1]
    assert [line.strip() for line in block.strip().splitlines()] == ["make run", "make test"]
