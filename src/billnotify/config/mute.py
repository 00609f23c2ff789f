"""``[[mute_windows]]``: times when a rule's deliveries wait (SPEC §7.2).

A window is a set of weekdays and times of day in a time zone, read with ``zoneinfo``:
``times = ["00:00-24:00"]`` on ``["saturday", "sunday"]`` in ``Europe/London`` is the
British weekend, whatever the offset from UTC that weekend.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import field_validator

from billnotify.config.base import StrictModel, check_name

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""Weekday names in ``datetime.weekday()`` order."""

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

_RANGE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


def parse_times(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as minutes of the day (start, end), end after start; ``24:00``
    ends at midnight.

    Raises:
        ValueError: it is not such a range.
    """
    match = _RANGE.match(text.strip())
    if match is None:
        raise ValueError(f"must be 'HH:MM-HH:MM' (e.g. '09:00-17:30'), got {text!r}")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise ValueError(f"not a time of day in {text!r} (00:00 to 24:00)")
    if end <= start:
        raise ValueError(
            f"must end after it starts, got {text!r} (a night is two ranges: "
            "'22:00-24:00' and '00:00-06:00')"
        )
    return start, end


class MuteWindow(StrictModel):
    """``[[mute_windows]]``: when the deliveries of rules that name it wait."""

    name: str
    """Window name, referred to by rules' ``mute``."""
    timezone: str
    """IANA time zone the weekdays and times are read in, e.g. ``Europe/London``."""
    weekdays: list[Weekday] | None = None
    """Days it applies (``monday`` … ``sunday``); every day when absent."""
    times: list[str] | None = None
    """Times of day ``"HH:MM-HH:MM"`` (``"00:00-24:00"`` allowed); all day when absent."""

    _name_ok = field_validator("name")(check_name)

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. 'Europe/London')") from None
        return value

    @field_validator("weekdays")
    @classmethod
    def _check_days(cls, value: list[Weekday] | None) -> list[Weekday] | None:
        if value is not None and not value:
            raise ValueError("must list at least one day (leave it out for every day)")
        return value

    @field_validator("times")
    @classmethod
    def _check_times(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one range (leave it out for all day)")
        for text in value:
            parse_times(text)
        return [text.strip() for text in value]
