"""The texts of the templates an action renders, for the checks that read what a
template uses (``billnotify check``: ``results.<id>`` outside a chain, a digest's names
in a single event's rule and the other way round).

An action renders its inline strings (any string in its config may be a template) and
its template files: an email's ``<template>.subject|txt|html.j2``, a webhook's body
``<body>.j2``, each taken from the first template folder that has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_EMAIL_PARTS = ("subject", "txt", "html")


def action_template_texts(action: Any, folders: Sequence[Path]) -> list[str]:
    """Every string of the action's config and the text of every template file it renders
    that exists (a missing file is the template check's error, not this one's)."""
    texts = strings_in(action.model_dump())
    files: list[str] = []
    if action.type == "email":
        files = [f"{action.template}.{part}.j2" for part in _EMAIL_PARTS]
    elif action.type == "webhook" and action.body:
        files = [action.body if action.body.endswith(".j2") else f"{action.body}.j2"]
    for name in files:
        for folder in folders:
            path = Path(folder) / name
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
                break
    return texts


def strings_in(value: object) -> list[str]:
    """Every string in a config value (nested lists and tables included), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    return []
