"""``rate_limit = "N/s|m|h"``: how many deliveries an endpoint takes per second, minute
or hour (``[[webhooks]]``, ``[smtp]``; SPEC §7.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_PERIODS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` deliveries in any ``period``.

    Attributes:
        limit: deliveries per period (at least 1).
        period: one second, minute or hour.
    """

    limit: int
    period: timedelta

    def __str__(self) -> str:
        unit = next(u for u, p in _PERIODS.items() if p == self.period)
        return f"{self.limit}/{unit}"


def parse_rate(text: str) -> Rate:
    """The rate ``text`` denotes (``"10/s"``, ``"100/m"``, ``"1000/h"``).

    Raises:
        ValueError: it is not one.
    """
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"must be 'N/s', 'N/m' or 'N/h' (e.g. '10/s'), got {text!r}")
    limit = int(match.group(1))
    if limit < 1:
        raise ValueError(f"must allow at least 1 delivery per period, got {text!r}")
    return Rate(limit, _PERIODS[match.group(2)])


def check_rate(value: str | None) -> str | None:
    """A field validator: the rate in its canonical spelling (``" 10 / s"`` -> ``"10/s"``)."""
    return None if value is None else str(parse_rate(value))
