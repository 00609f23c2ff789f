"""The one digest billnotify's deterministic ids are made of (events, deliveries).

A leaf module: the store's child process imports it without the event model (pydantic).
"""

from __future__ import annotations

import hashlib


def digest(*parts: str) -> str:
    """A hex SHA-256 over ``parts`` joined unambiguously."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part.encode())
    return h.hexdigest()
