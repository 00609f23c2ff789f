"""Parse and format human durations like ``"30s"``, ``"5m"``, ``"2h"``, ``"1h30m"``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Return the duration ``text`` denotes.

    Accepts a string of one or more ``<number><unit>`` parts (units ``ms s m h d``),
    a bare number of seconds, or a ``timedelta``.

    Raises:
        ValueError: the text is not a duration.
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return timedelta(seconds=text)
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (use e.g. '30s', '5m', '2h', '1h30m')")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """Format ``value`` the way config files write it (``"90s"`` -> ``"1m30s"``)."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            n = int(seconds // size)
            parts.append(f"{n}{unit}")
            seconds -= n * size
    if seconds:
        parts.append(f"{seconds:g}s")
    return "".join(parts)
