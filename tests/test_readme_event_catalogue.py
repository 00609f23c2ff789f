"""The README's event catalogue names every event type billnotify emits
(``config.types.EVENT_TYPES``) and gives each one an example ``data`` that is valid JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from billnotify.config.types import EVENT_TYPES

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES_START = "<!-- event-examples:start -->"
EXAMPLES_END = "<!-- event-examples:end -->"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _catalogued(section: str) -> set[str]:
    """Types named in the first cell of the catalogue's rows; ``a.x`` / ``.y`` / ``.z``
    shorthand is spelled out."""
    found: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        entity = ""
        for name in re.findall(r"`([a-z_.]+)`", cell):
            if name.startswith("."):
                found.add(entity + name)
            else:
                entity = name.split(".")[0]
                found.add(name)
    return found


def _examples(text: str) -> dict[str, object]:
    block = text[text.index(EXAMPLES_START) : text.index(EXAMPLES_END)]
    examples: dict[str, object] = {}
    for line in block.splitlines():
        match = re.fullmatch(r"\| `([a-z_.]+)` \| `(.+)` \|", line)
        if match:
            assert match.group(1) not in examples, f"two examples of {match.group(1)}"
            examples[match.group(1)] = json.loads(match.group(2))
    return examples


def test_the_catalogue_names_every_event_type() -> None:
    section = _section(README.read_text(), "## Events")
    examples = section[section.index(EXAMPLES_START) : section.index(EXAMPLES_END)]
    catalogued = _catalogued(section.replace(examples, ""))
    assert sorted(set(EVENT_TYPES) - catalogued) == []


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_every_event_type_has_an_example(type_: str) -> None:
    examples = _examples(README.read_text())
    assert type_ in examples, f"no example data for {type_} in the README"
    data = examples[type_]
    assert isinstance(data, dict) and isinstance(data.get("object"), dict)
    action = type_.split(".")[1]
    if action in ("created", "published", "deleted", "restored", "stalled", "overdue"):
        assert "previous" not in data
    else:
        assert set(data["previous"]) <= set(data["changed"]) <= set(data["object"]) | {"..."}
