"""Mute windows as instants: whether one covers a moment, and when it ends (SPEC §7.2).

Pure functions of the configured ``[[mute_windows]]`` and a UTC instant. Weekdays and
times are read on the window's own wall clock (``zoneinfo``), so a window follows its
zone's daylight-saving changes: the Europe/London weekend ends at Monday 00:00 BST
(Sunday 23:00 UTC) in summer and at Monday 00:00 GMT in winter, and a night range on
the day the clocks change is an hour shorter or longer in real time.

A delivery muted by several windows, or by windows that follow each other (Saturday
all day, then Sunday all day), waits until the last of them ends: :func:`muted_until`
follows the chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from billnotify.config.mute import WEEKDAYS, MuteWindow, parse_times

SENT_ANYWAY = "operator retry (was muted)"
"""How the note of a ``muted`` delivery an operator retried begins (``billnotify
deliveries retry``): it is sent now, its retries too, whatever window covers it."""

_DAY = 24 * 60
_MAX_CHAIN = 400
"""Windows followed at most in one chain (a window that never ends — every day, all day —
is followed for a year of days and then looked at again)."""


@dataclass(frozen=True, slots=True)
class Mute:
    """One ``[[mute_windows]]`` entry, ready to test instants against.

    Attributes:
        name: the window's name.
        zone: its time zone.
        weekdays: the days it applies (``date.weekday()`` numbers).
        ranges: its ranges of a day in minutes, ``[start, end)``.
    """

    name: str
    zone: ZoneInfo
    weekdays: frozenset[int]
    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, window: MuteWindow) -> Mute:
        """The window of a config table."""
        days = window.weekdays or WEEKDAYS
        ranges = tuple(parse_times(t) for t in window.times) if window.times else ((0, _DAY),)
        return cls(
            window.name,
            ZoneInfo(window.timezone),
            frozenset(WEEKDAYS.index(d) for d in days),
            ranges,
        )

    def end_of(self, at: datetime) -> datetime | None:
        """When the range of this window that covers ``at`` ends (UTC), or None when
        none covers it."""
        local = at.astimezone(self.zone)
        if local.weekday() not in self.weekdays:
            return None
        minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
        ends = [end for start, end in self.ranges if start <= minute < end]
        if not ends:
            return None
        return _instant_after(local.date(), max(ends), self.zone, at)


def _instant_after(day: date, minute: int, zone: ZoneInfo, at: datetime) -> datetime:
    """The UTC instant of a wall-clock minute of ``day`` in ``zone`` that follows ``at``
    (``24:00`` is the next day's midnight). A time the clocks repeat is its first
    occurrence, or its second when ``at`` is past the first (inside the repeated hour);
    a time they skip is read with the offset before the change."""
    if minute >= _DAY:
        day, minute = day + timedelta(days=1), minute - _DAY
    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    first, second = wall.astimezone(UTC), wall.replace(fold=1).astimezone(UTC)
    return first if first > at else second


def muted_until(mutes: Iterable[Mute], now: datetime) -> tuple[datetime, list[str]] | None:
    """When the mute covering ``now`` ends, and the windows it was made of; None when
    no window covers ``now``."""
    windows = list(mutes)
    until, names = now, []
    for _ in range(_MAX_CHAIN):
        ends = [(end, m.name) for m in windows if (end := m.end_of(until)) is not None]
        later = [(end, name) for end, name in ends if end > until]
        if not later:
            break
        until = max(end for end, _ in later)
        names += [name for _, name in later if name not in names]
    return (until, names) if until > now else None
