"""Clocks for the simulator: the real UTC clock and a manual one for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class SimClock:
    """The simulator's source of time; injectable so tests can control it."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(UTC)


class ManualClock(SimClock):
    """A clock that only moves when told to.

    Args:
        start: The initial time (aware or naive-as-UTC); defaults to the current time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime.now(UTC).replace(microsecond=0)
        elif start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        """Return the frozen current time."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` and return the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (naive datetimes are taken as UTC)."""
        self._now = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
